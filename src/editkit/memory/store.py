"""The edit journal's contract: records, the rules every store follows, and export / import.

A memory-based editor (SERAC, LU, RP) is only as trustworthy as its memory: an edit a user was told about must
survive a crash, and an edit that was rolled back or replaced must still be explainable later. So the journal
is append-only and every write is on disk before it returns.

:class:`EditStore` is the interface; :mod:`editkit.memory.sqlite` implements it in one SQLite file (the
default), and :func:`editkit.memory.urls.open_store` opens a store from a URL (a PostgreSQL store shared by several
server replicas can plug in there). Export and import are written once, here, over the abstract methods.

Rules (the same for every store):

* Records are never removed. Deleting an edit (rolling it back) stamps ``deleted``.
* Two edits conflict when they are about the same input: the request's text (the prompt with the subject
  filled in), or for descriptor-only edits the descriptor, stripped and case-folded (:func:`conflict_key`).
* Adding an edit equal to an active one (same key, same stripped ``target_new``, same stripped descriptor) is a
  duplicate: nothing is written and the existing record is returned.
* Adding an edit whose key has an active edit that differs (another answer, or another descriptor) adds the
  new one and stamps the older ``superseded_by`` the new id: the newer wins, the older stays in the journal.
* The store also caches vectors of edits per named vector space (an encoder and a hash of its weights), so an
  index can be rebuilt on open without encoding every edit again.

A store that is not an editkit memory (not SQLite, damaged, of an unknown schema version) is refused with
:class:`MemoryCorruptError` and never modified: it may be the only copy of someone's edits.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import numpy as np

from editkit.edits import MAX_STATEMENT_CHARS, EditRequest
from editkit.errors import EditkitError, ValidationError, did_you_mean
from editkit.files import atomic_open

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_DESCRIPTOR_CHARS = MAX_STATEMENT_CHARS  # the limit a statement is checked against when made
MAX_AUTHOR_CHARS = 200

VECTOR_DTYPE = np.dtype("<f4")  # vectors are stored as little-endian float32 bytes, whatever the machine
RECORD_FIELDS = ("id", "request", "descriptor", "author", "created", "deleted", "superseded_by")


class MemoryCorruptError(EditkitError, RuntimeError):
    """An edit memory file cannot be read (not an editkit memory, damaged, or of an unknown schema version)."""


class StoreUnavailableError(EditkitError, RuntimeError):
    """A store on another machine (a database server) cannot be reached now; nothing was written."""


@dataclass(frozen=True)
class EditRecord:
    """One edit in the journal."""

    id: int  # assigned by the store, increasing, never reused
    request: EditRequest
    descriptor: str  # the text the scope classifier and counterfactual model read
    author: str
    created: float  # unix time
    deleted: float | None = None  # when the edit was rolled back
    superseded_by: int | None = None  # the newer edit of the same input that replaced it

    @property
    def active(self) -> bool:
        return self.deleted is None and self.superseded_by is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "request": self.request.to_dict(),
            "descriptor": self.descriptor,
            "author": self.author,
            "created": self.created,
            "deleted": self.deleted,
            "superseded_by": self.superseded_by,
        }


@dataclass(frozen=True)
class AddOutcome:
    record: EditRecord  # the new record, or for a duplicate the existing one
    status: Literal["added", "duplicate", "replaced"]
    replaced: tuple[int, ...] = ()  # ids of the edits the new one superseded


def conflict_key(request: EditRequest, descriptor: str) -> str:
    """Two edits conflict when they are about the same input (or, without a prompt, the same descriptor)."""
    return (request.text or descriptor).strip().casefold()


def check_edit(request: EditRequest, descriptor: str, author: str) -> None:
    """Raise :class:`ValidationError` unless the edit can be stored."""
    if not isinstance(request, EditRequest):
        raise ValidationError(f"an edit must be an EditRequest, got {type(request).__name__}")
    if not isinstance(descriptor, str):
        raise ValidationError(f"edit descriptor must be a string, got {type(descriptor).__name__}")
    if not descriptor.strip():
        raise ValidationError(f"edit descriptor is empty (edit of {request.text or request.descriptor!r})")
    if len(descriptor) > MAX_DESCRIPTOR_CHARS:
        raise ValidationError(
            f"edit descriptor is {len(descriptor)} characters long; the limit is {MAX_DESCRIPTOR_CHARS}"
        )
    check_author(author)


def check_author(author: str) -> None:
    if not isinstance(author, str):
        raise ValidationError(f"author must be a string, got {type(author).__name__}")
    if len(author) > MAX_AUTHOR_CHARS:
        raise ValidationError(f"author is {len(author)} characters long; the limit is {MAX_AUTHOR_CHARS}")


def is_duplicate(record: EditRecord, request: EditRequest, descriptor: str) -> bool:
    return (
        record.request.target_new.strip() == request.target_new.strip()
        and record.descriptor.strip() == descriptor.strip()
    )


def vector_blob(space: str, edit_id: Any, vector: np.ndarray) -> tuple[int, bytes]:
    """Check one edit's vector of a space; returns its length and its stored bytes."""
    if not isinstance(space, str) or not space.strip():
        raise ValidationError(f"a vector space needs a non-empty name, got {space!r}")
    arr = np.asarray(vector)
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "fiu":
        raise ValidationError(
            f"the vector of edit {edit_id} in space {space!r} must be a non-empty 1-D array of numbers, "
            f"got shape {list(arr.shape)} of {arr.dtype}"
        )
    if not np.isfinite(arr).all():
        raise ValidationError(f"the vector of edit {edit_id} in space {space!r} is not finite")
    return int(arr.shape[0]), arr.astype(VECTOR_DTYPE).tobytes()


class EditStore(ABC):
    """Where edits are kept. Implementations make every write durable before returning and follow the rules in
    the module docstring; export and import are written once, here, over the abstract methods."""

    @abstractmethod
    def add(
        self,
        request: EditRequest,
        descriptor: str,
        *,
        author: str = "",
        vectors: Mapping[str, np.ndarray] | None = None,
    ) -> AddOutcome:
        """Store an edit, with its ``vectors`` (space -> vector) in the same durable write. A duplicate stores
        nothing, its vectors included."""

    @abstractmethod
    def get(self, edit_id: int) -> EditRecord:
        """The record with this id, active or not; an unknown id is a :class:`ValidationError`."""

    @abstractmethod
    def delete(self, edit_id: int) -> EditRecord:
        """Mark an edit deleted (the record stays in the journal); returns the updated record."""

    @abstractmethod
    def journal(self) -> list[EditRecord]:
        """Every record ever added, in id order."""

    @abstractmethod
    def put_vectors(self, space: str, vectors: Mapping[int, np.ndarray]) -> None:
        """Cache one 1-D float32 vector per edit id in a named vector space (replacing earlier ones)."""

    @abstractmethod
    def get_vectors(self, space: str) -> dict[int, np.ndarray]:
        """Every cached vector of a space by edit id (deleted edits included; callers pick the active ones)."""

    @abstractmethod
    def close(self) -> None: ...

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the edits are kept, for messages and summaries (SQLite: the file's path)."""

    def active(self) -> list[EditRecord]:
        """The records that are neither deleted nor superseded, in id order."""
        return [r for r in self.journal() if r.active]

    def __len__(self) -> int:
        return len(self.active())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def add_many(self, items: Sequence[tuple[EditRequest, str, str]]) -> list[AddOutcome]:
        """Add ``(request, descriptor, author)`` items in order. Stores that can make this one transaction do."""
        return [self.add(request, descriptor, author=author) for request, descriptor, author in items]

    def export_jsonl(self, path: str | Path) -> int:
        """Write the whole journal (history included), one JSON object per line; returns the number of records.

        The file is written beside its destination and renamed into place, so a crash never leaves half an
        export where a good one was."""
        records = self.journal()
        target = Path(path)
        with atomic_open(target) as f:
            for r in records:
                f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        log.info("exported %d edit records to %s", len(records), target)
        return len(records)

    def import_jsonl(self, path: str | Path, *, author: str | None = None) -> int:
        """Add the active records of an exported journal, in file order, under the duplicate and conflict rules;
        returns how many were added (a record that replaces an active edit counts as added).

        Deleted and superseded records of the export are history and are not re-added; imported records get new
        ids and creation times in this store. ``author`` replaces the exported authors. The whole file is read
        and checked before anything is added, so a malformed line adds nothing."""
        if author is not None:
            check_author(author)
        items = read_export(path, author=author)
        outcomes = self.add_many(items)
        added = sum(o.status != "duplicate" for o in outcomes)
        log.info("imported %d of %d active edit records from %s", added, len(items), path)
        return added


_EXPORT_KEYS = frozenset(RECORD_FIELDS)


def read_export(path: str | Path, *, author: str | None = None) -> list[tuple[EditRequest, str, str]]:
    """The active records of an export as ``(request, descriptor, author)``; errors name the file and line."""
    source = Path(path)
    if not source.is_file():
        raise ValidationError(f"{source} does not exist or is not a file")
    items = []
    for n, raw in enumerate(source.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue

        def fail(what: str, n: int = n) -> ValidationError:
            return ValidationError(f"{source}, line {n}: {what}")

        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise fail("not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise fail(f"not JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise fail(f"expected a JSON object (an exported edit record), got {type(obj).__name__}")
        unknown = sorted(set(obj) - _EXPORT_KEYS)
        if unknown:
            raise fail(f"unknown field {unknown[0]!r}.{did_you_mean(unknown[0], _EXPORT_KEYS)}")
        for key in ("request", "descriptor"):
            if key not in obj:
                raise fail(f"missing field {key!r}")
        if not isinstance(obj["request"], dict):
            raise fail(f"field 'request' must be an object, got {type(obj['request']).__name__}")
        for key in ("deleted", "superseded_by"):
            if obj.get(key) is not None and (isinstance(obj[key], bool) or not isinstance(obj[key], int | float)):
                raise fail(f"field {key!r} must be a number or null, got {obj[key]!r}")
        record_author = obj.get("author", "") if author is None else author
        try:
            request = EditRequest.from_dict(obj["request"])
            check_edit(request, obj["descriptor"], record_author)
        except ValidationError as exc:
            raise fail(str(exc)) from None
        if obj.get("deleted") is None and obj.get("superseded_by") is None:
            items.append((request, obj["descriptor"], record_author))
    return items
