"""The server's journal of weight edits: every edit a weight editor (ROME, MEMIT, AlphaEdit, FT, ...) applied
through the server, durable, and re-applied in order when the server starts again.

A folder holds ``journal.jsonl`` and ``handles/N/`` (each edit's :meth:`~editkit.editors.handle.EditHandle.save`:
the edited tensors and the sha256 of the originals they were made from). An edit is committed in this order:
the handle is saved into ``handles/.tmp-N``, its files are synced, the folder is renamed to ``handles/N``, and
then one line ``{"op": "apply", "id": N, ...}`` is appended to the journal and synced: the line is the commit. A
crash before it leaves an unreferenced folder (ignored, replaced by the next edit N); a crash while writing it
leaves a partial last line (ignored). A rollback appends ``{"op": "rollback", "id": N}``.

On start, :meth:`WeightJournal.restore` loads each edit that was not rolled back, in order, through
:meth:`~editkit.editors.handle.EditHandle.load` (which refuses an edit whose parameters do not hold the values it
was made from) and then checks every edited parameter against the sha256 recorded at commit; any mismatch stops
the server with a one-line error rather than serving a model nobody made.

Ids are journal ids (1, 2, ...), stable across restarts; the service's handle ids (``h1``, ...) are not.

What the editor remembers of its applied edits (:meth:`~editkit.editors.base.Editor.export_state`: AlphaEdit's
keys) is saved whole as ``editor_state.safetensors`` after every commit and rollback, and handed to
:meth:`~editkit.editors.base.Editor.import_state` once the edits are re-applied, so the next edit after a
restart is computed as it would have been without one.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from editkit.editors.handle import EditHandle
from editkit.errors import ValidationError
from editkit.files import atomic_save_tensors, tensor_sha256
from editkit.service import EditService


@dataclass(frozen=True)
class JournalEntry:
    id: int
    author: str
    created: float
    requests: list[dict[str, Any]]
    edited_sha256: dict[str, str]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WeightJournal:
    """The journal of one server's weight edits (module docstring). Calls must hold the caller's writer lock."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.handles = self.folder / "handles"
        self.handles.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "journal.jsonl"
        self.state_path = self.folder / "editor_state.safetensors"
        self._lock = threading.Lock()
        self.active: dict[int, JournalEntry] = {}
        self.handle_ids: dict[int, str] = {}  # journal id -> the service's handle id in this process
        self.next_id = 1
        self._read()

    def _read(self) -> None:
        if not self.path.exists():
            return
        lines = self.path.read_bytes().split(b"\n")
        for n, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                if n == len(lines) or all(not r.strip() for r in lines[n:]):
                    break  # a line cut short by a crash: never committed
                raise ValidationError(f"{self.path}, line {n}: not JSON; the journal is damaged") from None
            if obj["op"] == "apply":
                entry = JournalEntry(obj["id"], obj["author"], obj["created"], obj["requests"], obj["edited_sha256"])
                self.active[entry.id] = entry
            elif obj["op"] == "rollback":
                self.active.pop(obj["id"], None)
            self.next_id = max(self.next_id, int(obj["id"]) + 1)

    def _append(self, obj: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(obj) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def restore(self, service: EditService) -> list[EditHandle]:
        """Re-apply every active edit, in order, to the service's base model (module docstring); returns their
        handles."""
        handles = []
        for entry in self.active.values():
            folder = self.handles / str(entry.id)
            handle = EditHandle.load(folder, service.base)
            params = dict(service.base.model.named_parameters())
            for name, sha in entry.edited_sha256.items():
                if tensor_sha256(params[name].detach().cpu()) != sha:
                    handle.rollback(force=True)
                    raise ValidationError(
                        f"journal edit {entry.id} in {self.folder}: {name} after re-applying differs from what was "
                        "recorded; the journal does not match this model"
                    )
            applied = service.adopt(handle, author=entry.author, created=entry.created)
            self.handle_ids[entry.id] = applied.handle_id
            handles.append(handle)
        if self.active and self.state_path.exists():
            service.editor.import_state(service.base, load_file(str(self.state_path)))
        return handles

    def save_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Keep the editor's :meth:`~editkit.editors.base.Editor.export_state` (written whole; none: removed)."""
        if tensors:
            atomic_save_tensors(tensors, self.state_path)
        else:
            self.state_path.unlink(missing_ok=True)

    def commit(self, handle_id: str, handle: EditHandle, author: str) -> JournalEntry:
        """Make an applied edit durable (module docstring) and return its entry."""
        with self._lock:
            n = self.next_id
            tmp = self.handles / f".tmp-{n}"
            final = self.handles / str(n)
            for stale in (tmp, final):  # left by a crash before an earlier commit's line
                shutil.rmtree(stale, ignore_errors=True)
            handle.save(tmp)
            for f in tmp.iterdir():
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())
            os.rename(tmp, final)
            _fsync_dir(self.handles)
            params = dict(handle.model.model.named_parameters())
            entry = JournalEntry(
                n,
                author,
                time.time(),
                [r.to_dict() for r in handle.requests],
                {name: tensor_sha256(params[name].detach().cpu()) for name in handle.changes},
            )
            self._append({"op": "apply", **entry.__dict__})
            self.active[n] = entry
            self.handle_ids[n] = handle_id
            self.next_id = n + 1
            return entry

    def rolled_back(self, edit_id: int) -> None:
        """Record that edit ``edit_id`` was rolled back (after the service did it)."""
        with self._lock:
            self._append({"op": "rollback", "id": edit_id, "at": time.time()})
            self.active.pop(edit_id, None)
            self.handle_ids.pop(edit_id, None)
