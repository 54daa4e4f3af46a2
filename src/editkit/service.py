"""A thread-safe edit service: one base model, one editor, and the edits applied through them.

What a front end (``editkit edit``, the HTTP server) needs, for weight editors and memory editors alike:

* :meth:`EditService.apply` applies requests and keeps the handle under an id of this service (``"h1"``,
  ``"h2"``, ... in apply order);
* :meth:`EditService.list` lists the active edits, one per request: for a memory editor every active record of
  its memory (its journal id, and the handle that stored it when this service did), for a weight editor every
  request of every handle still applied (with the parameters the handle changed);
* :meth:`EditService.explain` says what answers an input: for a memory editor the edit it routes to (if any) and
  the scope score, for a weight editor the handles applied (all of them act on every input);
* :meth:`EditService.rollback` takes a handle id (the whole apply) or, for a memory editor, a journal id (one
  edit). Weight edits roll back last-in first-out where they share parameters: a handle whose parameters a
  later handle changed too is refused with a :class:`~editkit.errors.ValidationError` naming those handles;
* :meth:`EditService.generate` answers prompts with the edited model.

Locking: one lock around everything that touches the model (apply, rollback, generate, explain), not a
readers-writer lock. Two reads of one :class:`~editkit.models.lm.LanguageModel` are not safe side by side:
``logits_at`` puts a pre-hook on the shared head for the length of a pass (another thread's pass would gather
at its positions), and the memory's scope model and answerer share their models the same way; torch already
spreads one pass over every core, so reads side by side would gain little. :meth:`EditService.list` takes no
lock: it returns a snapshot (a tuple replaced whole, under the lock, at the end of each apply and rollback), so
it never waits for a pass and never sees half of an apply.

The service owns its editor: edits applied to the same model around it are not listed until its next write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from editkit.editors.base import EditHandle, Editor
from editkit.editors.memory import MemoryEditHandle, MemoryEditor, RoutedModel
from editkit.edits import EditRequest
from editkit.errors import ValidationError
from editkit.models.lm import LanguageModel

log = logging.getLogger(__name__)


class Guard(Protocol):
    """Checks a weight edit before it is kept (:class:`~editkit.evaluation.guard.EditGuard`): applies it, and
    rolls it back and raises when a check fails."""

    def apply(self, editor: Editor, lm: LanguageModel, requests: Sequence[EditRequest]) -> EditHandle: ...


@dataclass(frozen=True)
class ServiceEdit:
    """One active edit as :meth:`EditService.list` shows it."""

    request: EditRequest
    handle_id: str | None  # the apply of this service that made it; None for a memory record made elsewhere
    edit_id: int | None = None  # memory editors: the record's id in the journal
    parameters: tuple[str, ...] = ()  # weight editors: the parameters its handle changed
    author: str = ""  # who made it (the journal's author; for weight edits, the apply's)
    created: float | None = None  # unix time it was stored (memory) or applied (weights)

    def to_dict(self) -> dict[str, Any]:
        return {
            "request": self.request.to_dict(),
            "handle_id": self.handle_id,
            "edit_id": self.edit_id,
            "parameters": list(self.parameters),
            "author": self.author,
            "created": self.created,
        }


@dataclass(frozen=True)
class Applied:
    """What one :meth:`EditService.apply` did."""

    handle_id: str
    handle: EditHandle = field(repr=False)
    edits: tuple[ServiceEdit, ...]  # as :meth:`EditService.list` shows them (a memory duplicate: the existing edit)
    seconds: float


class EditService:
    """Edits of one base model through one editor, safe to call from several threads (module docstring)."""

    def __init__(self, lm: LanguageModel, editor: Editor, *, guard: Guard | None = None) -> None:
        if isinstance(lm, RoutedModel):
            raise ValidationError(f"{lm!r} is an edited model; give the service its base model")
        if guard is not None and isinstance(editor, MemoryEditor):
            raise ValidationError(f"the guard checks weight edits; {editor.name} keeps its edits outside the weights")
        self.base = lm
        self.editor = editor
        self.guard = guard
        self._lock = threading.Lock()
        self._handles: dict[str, EditHandle] = {}  # applied handles in apply order
        self._made: dict[str, tuple[str, float]] = {}  # handle id -> (author, unix time) of its apply
        self._count = 0
        self._routed = editor.routed(lm) if isinstance(editor, MemoryEditor) else None
        self._edits: tuple[ServiceEdit, ...] = self._snapshot()

    def __repr__(self) -> str:
        return f"EditService({self.base.name}, {self.editor.name}, edits={len(self._edits)})"

    @property
    def model(self) -> LanguageModel:
        """The edited model surface (a memory editor's routed model, else the base model holding the edits).
        Reading it directly bypasses the service's lock."""
        return self._routed if self._routed is not None else self.base

    # ------------------------------------------------------------------ writes
    def apply(self, requests: Sequence[EditRequest], *, author: str | None = None) -> Applied:
        """Apply ``requests`` together (one handle), through the guard when the service has one. A failure (a
        rejection included) leaves the model and the list as they were. ``author`` is recorded with the edits (a
        memory editor's journal; default: its ``author`` setting)."""
        requests = list(requests)
        with self._lock:
            t0 = time.perf_counter()
            if isinstance(self.editor, MemoryEditor):
                handle = self.editor.apply(self.base, requests, author=author)
            elif self.guard is not None:
                handle = self.guard.apply(self.editor, self.base, requests)
            else:
                handle = self.editor.apply(self.base, requests)
            seconds = time.perf_counter() - t0
            self._count += 1
            handle_id = f"h{self._count}"
            self._handles[handle_id] = handle
            self._made[handle_id] = (author or "", time.time())
            self._edits = self._snapshot()
            if isinstance(handle, MemoryEditHandle):
                by_id = {e.edit_id: e for e in self._edits}
                edits = tuple(by_id[i] for i in dict.fromkeys(handle.record_ids) if i in by_id)
            else:
                edits = tuple(e for e in self._edits if e.handle_id == handle_id)
        log.info("%s applied %d edit(s) as %s in %.3f s", self.editor.name, len(requests), handle_id, seconds)
        return Applied(handle_id, handle, edits, seconds)

    def adopt(self, handle: EditHandle, *, author: str = "", created: float | None = None) -> Applied:
        """Take over a weight edit already applied to the base model (a saved edit loaded again with
        :meth:`EditHandle.load`, as a server re-applies its journal), listed as if :meth:`apply` had made it."""
        if isinstance(handle, MemoryEditHandle) or handle.model is not self.base or not handle.applied:
            raise ValidationError("adopt takes a weight edit applied to this service's base model")
        with self._lock:
            self._count += 1
            handle_id = f"h{self._count}"
            self._handles[handle_id] = handle
            self._made[handle_id] = (author, time.time() if created is None else created)
            self._edits = self._snapshot()
            edits = tuple(e for e in self._edits if e.handle_id == handle_id)
        return Applied(handle_id, handle, edits, 0.0)

    def rollback(self, edit_id: str | int) -> list[ServiceEdit]:
        """Roll back a handle (its id, ``"h3"``) or, for a memory editor, one edit (its journal id, an int).
        Returns the edits that are no longer listed. A memory edit that had replaced an older one of the same
        input brings the older back (listed again, under a new journal id)."""
        with self._lock:
            before = self._edits
            if isinstance(edit_id, str):
                self._rollback_handle(edit_id)
            else:
                self._rollback_record(edit_id)
            self._edits = self._snapshot()
            gone = [e for e in before if e not in self._edits]
        log.info("rolled back %s (%d edit(s))", edit_id, len(gone))
        return gone

    def _rollback_handle(self, handle_id: str) -> None:
        handle = self._handles.get(handle_id)
        if handle is None:
            known = ", ".join(self._handles) or "none"
            raise ValidationError(f"no applied edit {handle_id!r} (applied: {known})")
        ids = list(self._handles)
        later = [h for h in ids[ids.index(handle_id) + 1 :] if set(self._handles[h].changes) & set(handle.changes)]
        if later:
            shared = sorted(set(handle.changes).intersection(set().union(*(self._handles[h].changes for h in later))))
            raise ValidationError(
                f"edit {handle_id} cannot be rolled back before {', '.join(later)}, which changed the same "
                f"parameters ({', '.join(shared)}); roll those back first"
            )
        handle.rollback()
        del self._handles[handle_id]
        self._made.pop(handle_id, None)

    def _rollback_record(self, edit_id: int) -> None:
        if self._routed is None:
            raise ValidationError(
                f"{self.editor.name} edits the weights: roll back a handle id ('h1', ...), not edit {edit_id!r}"
            )
        memory = self._routed.memory
        if edit_id not in {r.id for r in memory.records()}:
            raise ValidationError(f"edit {edit_id!r} is not an active edit of {memory.location}")
        owner = next((h for h, handle in self._handles.items() if edit_id in self._owned(handle)), None)
        if owner is None:
            memory.remove([edit_id])
            return
        handle = self._handles[owner]
        assert isinstance(handle, MemoryEditHandle)
        handle.rollback_record(edit_id)
        if not handle.applied:
            del self._handles[owner]

    @staticmethod
    def _owned(handle: EditHandle) -> list[int]:
        """The journal ids a memory handle stored (not those it found already there)."""
        if not isinstance(handle, MemoryEditHandle):
            return []
        return [i for i, s in zip(handle.record_ids, handle.outcomes, strict=True) if s != "duplicate"]

    def _snapshot(self) -> tuple[ServiceEdit, ...]:
        """The active edits (call with the lock held, or before the service is shared)."""
        if self._routed is not None:
            owners = {i: h for h, handle in self._handles.items() for i in self._owned(handle)}
            return tuple(
                ServiceEdit(r.request, owners.get(r.id), r.id, author=r.author, created=r.created)
                for r in self._routed.memory.records()
            )
        return tuple(
            ServiceEdit(request, h, parameters=tuple(handle.changes), author=self._made[h][0], created=self._made[h][1])
            for h, handle in self._handles.items()
            for request in handle.requests
        )

    # ------------------------------------------------------------------ reads
    def explain(self, text: str) -> dict[str, Any]:
        """What answers ``text``: the edit it routes to (memory editors, with its handle id when this service
        made it) or the applied handles (weight editors)."""
        with self._lock:
            if self._routed is None:
                return {"answered_by": "weights", "handles": list(self._handles)}
            explained = self._routed.explain(text)
        if explained["answered_by"] == "edit":
            owner = next((e.handle_id for e in self._edits if e.edit_id == explained["edit_id"]), None)
            explained["handle_id"] = owner
        return explained

    def answer(
        self, prompts: Sequence[str], max_new_tokens: int = 16, **kwargs: Any
    ) -> list[tuple[str, dict[str, Any]]]:
        """Each prompt's continuation (as :meth:`generate`) with what answered it (as :meth:`explain`), both under
        one hold of the lock: no edit or rollback comes between the explanation and the answer."""
        with self._lock:
            texts = self.model.generate(prompts, max_new_tokens, **kwargs)
            if self._routed is None:
                return [(t, {"answered_by": "weights", "handles": list(self._handles)}) for t in texts]
            explained = [self._routed.explain(p) for p in prompts]
            owners = {e.edit_id: e.handle_id for e in self._edits}
        for e in explained:
            if e["answered_by"] == "edit":
                e["handle_id"] = owners.get(e["edit_id"])
        return list(zip(texts, explained, strict=True))

    def refresh(self) -> int:
        """Read edits other processes added to or rolled back from a shared store (a memory editor's
        :meth:`~editkit.editors.memory.EditMemory.refresh`); returns how many active edits changed (0 for a
        weight editor, whose edits live in this process)."""
        if self._routed is None or not self._routed.memory.stale():  # the common case reads without the lock
            return 0
        with self._lock:
            changed = self._routed.memory.refresh()
            if changed:
                self._edits = self._snapshot()
        return changed

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 16, **kwargs: Any) -> list[str]:
        """The edited model's continuations (:meth:`~editkit.models.lm.LanguageModel.generate`)."""
        with self._lock:
            return self.model.generate(prompts, max_new_tokens, **kwargs)

    def list(self) -> list[ServiceEdit]:  # last: in the class body below it, `list` would be this method
        """The active edits (a snapshot; no lock is taken)."""
        return list(self._edits)
