"""What evaluation may know of an edited model that routes inputs through a memory of edits (SERAC eq. 1): the
interface, not the classes. :class:`~editkit.editors.memory.RoutedModel` and
:class:`~editkit.editors.memory.MemoryEditHandle` satisfy these protocols structurally; code that reads routing
(the scope breakdown of :mod:`editkit.evaluation.scope`) checks ``isinstance`` against them and imports no
memory-editor class.

* :class:`RoutingModel`: a model with a scope ``threshold``, a ``memory`` that finds each input's best edit and
  its scope probability (:meth:`EditLookup.lookup`, no threshold applied) and reads an edit's record by id
  (``memory.store.get``), and an ``answerer`` (:class:`~editkit.editors.answerers.Answerer`, the abstract h)
  that scores inputs given the edit to read;
* :class:`RecordedEditHandle`: an edit handle that names the records its edits were stored as.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from editkit.editors.answerers import Answerer
from editkit.memory.store import EditRecord


class ScopeRoute(Protocol):
    """Where one input goes: the best edit (``None``: none in memory) and its scope probability."""

    @property
    def record(self) -> EditRecord | None: ...

    @property
    def score(self) -> float: ...


class RecordSource(Protocol):
    """Reads an edit's record by its id."""

    def get(self, edit_id: int) -> EditRecord: ...


class EditLookup(Protocol):
    """A memory of edits: the best edit of each input, and the records by id."""

    @property
    def store(self) -> RecordSource: ...

    def lookup(self, texts: Sequence[str]) -> Sequence[ScopeRoute]: ...


@runtime_checkable
class RoutingModel(Protocol):
    """An edited model that routes each input to an edit whose scope probability reaches ``threshold``, else to
    the base model."""

    @property
    def threshold(self) -> float: ...

    @property
    def memory(self) -> EditLookup: ...

    @property
    def answerer(self) -> Answerer: ...


@runtime_checkable
class RecordedEditHandle(Protocol):
    """An edit handle whose edits are records of a memory (``record_ids``, in the order of its requests)."""

    @property
    def record_ids(self) -> Sequence[int]: ...
