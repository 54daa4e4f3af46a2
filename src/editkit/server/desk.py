"""The edits side of the server, without HTTP: add, list (paged, filtered), get, roll back and explain edits
through the :class:`~editkit.service.EditService`, with one writer lock and the weight journal.

Edit ids are the journal's: a memory editor's store ids, or a weight editor's :class:`WeightJournal` ids. Every
write holds the desk's writer lock for the whole of apply + commit (or rollback + record), so two writers never
interleave and an edit is acknowledged only once it is durable.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from editkit.editors.handle import EditHandle
from editkit.editors.memory import MemoryEditor
from editkit.edits import EditRequest
from editkit.errors import EditkitError
from editkit.server.journal import WeightJournal
from editkit.service import EditService, ServiceEdit


class NotFound(EditkitError, LookupError):
    """An edit id that names no active edit."""


class Conflict(EditkitError, RuntimeError):
    """A write refused because of other edits (a rollback that later edits overlap)."""


@dataclass(frozen=True)
class EditFilter:
    author: str | None = None
    since: float | None = None
    until: float | None = None
    text: str | None = None  # case-insensitive substring of the prompt, subject, target or descriptor

    def matches(self, view: dict[str, Any]) -> bool:
        if self.author is not None and view["author"] != self.author:
            return False
        created = view["created"] or 0.0
        if (self.since is not None and created < self.since) or (self.until is not None and created > self.until):
            return False
        if self.text:
            hay = " ".join(str(view[k] or "") for k in ("text", "subject", "target_new", "descriptor")).casefold()
            return self.text.casefold() in hay
        return True


class EditDesk:
    """Edits of one service (module docstring); ``journal`` is required for weight editors."""

    def __init__(self, service: EditService, journal: WeightJournal | None = None) -> None:
        self.service = service
        self.memory = isinstance(service.editor, MemoryEditor)
        if not self.memory and journal is None:
            raise ValueError("a weight editor's desk needs a WeightJournal")
        self.journal = None if self.memory else journal
        self._write = threading.Lock()

    def restore(self) -> list[EditHandle]:
        """Re-apply the weight journal (nothing to do for a memory editor, whose store is its journal); returns the
        handles re-applied."""
        if self.journal is None:
            return []
        with self._write:
            return self.journal.restore(self.service)

    def _id_of(self, edit: ServiceEdit) -> int:
        if self.journal is None:
            assert edit.edit_id is not None
            return edit.edit_id
        return next(i for i, h in self.journal.handle_ids.items() if h == edit.handle_id)

    def view(self, edit: ServiceEdit) -> dict[str, Any]:
        r = edit.request
        return {
            "id": self._id_of(edit),
            "text": r.text,
            "prompt": r.prompt,
            "subject": r.subject,
            "target_new": r.target_new,
            "target_true": r.target_true,
            "descriptor": r.descriptor,
            "author": edit.author,
            "created": edit.created,
            "handle_id": edit.handle_id,
            "parameters": list(edit.parameters),
        }

    def add(self, request: EditRequest, author: str) -> tuple[dict[str, Any], bool]:
        """Apply one edit; returns its view and whether it is new (a memory duplicate of an active edit is not)."""
        if self.service.editor.capabilities.needs_subject:
            request.require_subject(self.service.editor.name)
        self.service.base.check_fits(request.text + request.target_new)
        with self._write:
            applied = self.service.apply([request], author=author)
            if self.journal is not None:
                try:
                    self.journal.commit(applied.handle_id, applied.handle, author)
                except BaseException:
                    self.service.rollback(applied.handle_id)
                    raise
                self.journal.save_state(self.service.editor.export_state(self.service.base))
            new = not (self.memory and applied.handle.info.get("duplicates"))
            return self.view(applied.edits[0]), new

    def list(self, where: EditFilter, *, after: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]], int, bool]:
        """Active edits with an id above ``after`` matching ``where``, in id order: at most ``limit`` of them, how
        many match in all, and whether more follow the page."""
        views = sorted((self.view(e) for e in self.service.list()), key=lambda v: v["id"])
        matching = [v for v in views if where.matches(v)]
        rest = [v for v in matching if v["id"] > after]
        return rest[:limit], len(matching), len(rest) > limit

    def get(self, edit_id: int) -> dict[str, Any]:
        for e in self.service.list():
            view = self.view(e)
            if view["id"] == edit_id:
                return view
        raise NotFound(f"no active edit {edit_id}")

    def rollback(self, edit_id: int) -> dict[str, Any]:
        """Roll an edit back; its view (as it was) is returned."""
        with self._write:
            view = self.get(edit_id)
            if self.journal is None:
                self.service.rollback(edit_id)
                return view
            handle_id = self.journal.handle_ids[edit_id]
            later = [
                i
                for i, h in self.journal.handle_ids.items()
                if i > edit_id and set(self._params(h)) & set(view["parameters"])
            ]
            if later:
                raise Conflict(
                    f"edit {edit_id} cannot be rolled back while later edits {', '.join(map(str, later))} changed the "
                    "same parameters; roll those back first"
                )
            self.service.rollback(handle_id)
            self.journal.rolled_back(edit_id)
            self.journal.save_state(self.service.editor.export_state(self.service.base))
            return view

    def _params(self, handle_id: str) -> tuple[str, ...]:
        return next((e.parameters for e in self.service.list() if e.handle_id == handle_id), ())

    def explain(self, text: str) -> dict[str, Any]:
        explained = self.service.explain(text)
        if self.journal is not None:
            ids = {h: i for i, h in self.journal.handle_ids.items()}
            explained["edits"] = [ids[h] for h in explained.get("handles", []) if h in ids]
        return explained
