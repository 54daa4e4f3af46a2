"""The edit journal: every edit ever made, durable, with who made it and when.

A memory-based editor (SERAC, LU, RP) is only as trustworthy as its memory: an edit a user was told about must
survive a crash, and an edit that was rolled back or replaced must still be explainable later. So the journal
is append-only and every write is on disk before it returns.

:class:`EditStore` is the interface (a PostgreSQL store shared by several server replicas can implement it);
:class:`SQLiteStore` is the default: one file, WAL journal, ``synchronous=FULL`` and one transaction per write,
so an ``add`` has been fsynced when it returns and a killed process never loses an acknowledged edit.

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

A file that is not an editkit memory (not SQLite, damaged, of an unknown schema version) is refused with
:class:`MemoryCorruptError` and never modified: it may be the only copy of someone's edits.
"""

from __future__ import annotations

import json
import logging
import operator
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import numpy as np

from editkit.edits import EditRequest
from editkit.errors import EditkitError, ValidationError, did_you_mean
from editkit.files import atomic_open

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_DESCRIPTOR_CHARS = 2000
MAX_AUTHOR_CHARS = 200

_SQLITE_MAGIC = b"SQLite format 3\x00"
_VECTOR_DTYPE = np.dtype("<f4")  # vectors are stored as little-endian float32 bytes, whatever the machine
_RECORD_FIELDS = ("id", "request", "descriptor", "author", "created", "deleted", "superseded_by")
_RESTORE_HINT = (
    "restore it from an export with SQLiteStore(new_path).import_jsonl(export), or move it aside to start a new "
    "memory; editkit will not overwrite it"
)


class MemoryCorruptError(EditkitError, RuntimeError):
    """An edit memory file cannot be read (not an editkit memory, damaged, or of an unknown schema version)."""


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
    _check_author(author)


def _check_author(author: str) -> None:
    if not isinstance(author, str):
        raise ValidationError(f"author must be a string, got {type(author).__name__}")
    if len(author) > MAX_AUTHOR_CHARS:
        raise ValidationError(f"author is {len(author)} characters long; the limit is {MAX_AUTHOR_CHARS}")


def _is_duplicate(record: EditRecord, request: EditRequest, descriptor: str) -> bool:
    return (
        record.request.target_new.strip() == request.target_new.strip()
        and record.descriptor.strip() == descriptor.strip()
    )


def _vector_blob(space: str, edit_id: Any, vector: np.ndarray) -> tuple[int, bytes]:
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
    return int(arr.shape[0]), arr.astype(_VECTOR_DTYPE).tobytes()


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
            _check_author(author)
        items = read_export(path, author=author)
        outcomes = self.add_many(items)
        added = sum(o.status != "duplicate" for o in outcomes)
        log.info("imported %d of %d active edit records from %s", added, len(items), path)
        return added


_EXPORT_KEYS = frozenset(_RECORD_FIELDS)


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


class SQLiteStore(EditStore):
    """The journal in one SQLite file (created with its folders if missing).

    One connection is shared by all threads (``check_same_thread=False``) and every use of it holds a lock, so
    a server's thread pool can share one store. Several processes may open the same file: each write is an
    ``IMMEDIATE`` transaction that reads the conflicting edits and writes in one step, and a writer waits up
    to ``timeout`` seconds for another.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._closed = False
        if self.path.is_dir():
            raise MemoryCorruptError(f"{self.path} is a folder, not an editkit edit memory file")
        existing = self.path.is_file() and self.path.stat().st_size > 0
        if existing:
            with self.path.open("rb") as f:
                if f.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                    raise MemoryCorruptError(
                        f"{self.path} is not an editkit edit memory (not an SQLite file); {_RESTORE_HINT}"
                    )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=timeout, check_same_thread=False, isolation_level=None)
        try:
            if existing:
                self._verify()  # before anything is written: a file we refuse is left exactly as it was
            self._configure()
            if not existing:
                self._create()
                self._verify()
        except BaseException as exc:
            self._db.close()
            if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
                raise  # another process holds the file: that is not damage
            if isinstance(exc, sqlite3.DatabaseError):
                raise self._corrupt(str(exc)) from None
            raise
        log.debug("opened edit memory %s", self.path)

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # ------------------------------------------------------------------ opening
    def _corrupt(self, reason: str) -> MemoryCorruptError:
        return MemoryCorruptError(f"{self.path} is not a usable editkit edit memory ({reason}); {_RESTORE_HINT}")

    def _configure(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning(
                "%s: WAL journal unavailable (journal_mode=%s); writes stay durable but serialize", self.path, mode
            )
        self._db.execute("PRAGMA synchronous=FULL")

    def _create(self) -> None:
        """Create the schema in one transaction (a crash leaves an empty file, not half a schema). Another
        process may have created it first; then this does nothing."""
        with self._transaction():
            if self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone():
                return
            self._db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.execute(
                """CREATE TABLE edits (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    request TEXT NOT NULL,
                    descriptor TEXT NOT NULL,
                    author TEXT NOT NULL,
                    created REAL NOT NULL,
                    deleted REAL,
                    superseded_by INTEGER,
                    conflict_key TEXT NOT NULL
                )"""
            )
            self._db.execute(
                "CREATE INDEX edits_active_key ON edits (conflict_key) WHERE deleted IS NULL AND superseded_by IS NULL"
            )
            self._db.execute(
                """CREATE TABLE vectors (
                    space TEXT NOT NULL,
                    edit_id INTEGER NOT NULL,
                    vector BLOB NOT NULL,
                    PRIMARY KEY (space, edit_id)
                )"""  # a rowid table: a 1.5 KB vector would spill to an overflow page in a WITHOUT ROWID one
            )
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self._db.execute("INSERT INTO meta VALUES ('created', ?)", (repr(time.time()),))
        log.info("created edit memory %s", self.path)

    def _verify(self) -> None:
        problems = [str(r[0]) for r in self._db.execute("PRAGMA integrity_check(3)").fetchall()]
        if problems != ["ok"]:
            raise self._corrupt(f"integrity check failed: {'; '.join(problems)}")
        tables = {str(r[0]) for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            raise self._corrupt("an SQLite file without editkit's schema version")
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            raise self._corrupt("no schema version in its meta table")
        if row[0] != str(SCHEMA_VERSION):
            raise MemoryCorruptError(
                f"{self.path} has edit memory schema version {row[0]!r}; this editkit reads version "
                f"{SCHEMA_VERSION}: open it with the editkit that wrote it and export it with export_jsonl"
            )
        missing = {"edits", "vectors"} - tables
        if missing:
            raise self._corrupt(f"tables {sorted(missing)} are missing")

    # ------------------------------------------------------------------ helpers
    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction (call with the lock held). ``IMMEDIATE`` takes the write lock before the
        first read, so a read-then-write is atomic across processes; COMMIT is fsynced (synchronous=FULL)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # also when COMMIT itself failed (a full disk): leave no transaction open
                self._db.execute("ROLLBACK")
            raise

    _COLUMNS = ", ".join(_RECORD_FIELDS)

    def _record(self, row: Sequence[Any]) -> EditRecord:
        id_, request, descriptor, author, created, deleted, superseded_by = row
        try:
            parsed = EditRequest.from_dict(json.loads(request))
        except (ValueError, TypeError) as exc:  # ValidationError is a ValueError
            raise self._corrupt(f"edit {id_} cannot be read: {exc}") from None
        return EditRecord(
            id=int(id_),
            request=parsed,
            descriptor=str(descriptor),
            author=str(author),
            created=float(created),
            deleted=None if deleted is None else float(deleted),
            superseded_by=None if superseded_by is None else int(superseded_by),
        )

    def _get(self, edit_id: int) -> EditRecord:
        try:
            key = operator.index(edit_id)
        except TypeError:
            raise ValidationError(f"an edit id must be an integer, got {edit_id!r}") from None
        row = self._db.execute(f"SELECT {self._COLUMNS} FROM edits WHERE id = ?", (key,)).fetchone()
        if row is None:
            raise ValidationError(f"no edit with id {edit_id} in {self.path}")
        return self._record(row)

    def _add(self, request: EditRequest, descriptor: str, author: str) -> AddOutcome:
        """One add inside an open transaction."""
        key = conflict_key(request, descriptor)
        rows = self._db.execute(
            f"SELECT {self._COLUMNS} FROM edits WHERE conflict_key = ? AND deleted IS NULL "
            "AND superseded_by IS NULL ORDER BY id",
            (key,),
        ).fetchall()
        current = [self._record(r) for r in rows]
        for record in current:
            if _is_duplicate(record, request, descriptor):
                return AddOutcome(record, "duplicate")
        created = time.time()
        cur = self._db.execute(
            "INSERT INTO edits (request, descriptor, author, created, conflict_key) VALUES (?, ?, ?, ?, ?)",
            (json.dumps(request.to_dict(), ensure_ascii=False), descriptor, author, created, key),
        )
        assert cur.lastrowid is not None
        new_id = int(cur.lastrowid)
        older = tuple(r.id for r in current)
        if older:
            self._db.execute(
                f"UPDATE edits SET superseded_by = ? WHERE id IN ({','.join('?' * len(older))})", (new_id, *older)
            )
        record = EditRecord(new_id, request, descriptor, author, created)
        return AddOutcome(record, "replaced" if older else "added", older)

    # ------------------------------------------------------------------ the interface
    def add(
        self,
        request: EditRequest,
        descriptor: str,
        *,
        author: str = "",
        vectors: Mapping[str, np.ndarray] | None = None,
    ) -> AddOutcome:
        """Store an edit and its ``vectors`` (space -> vector) in one transaction, durable (fsynced) when this
        returns. See the module docstring for the rules."""
        check_edit(request, descriptor, author)
        checked = {space: _vector_blob(space, "being added", v) for space, v in (vectors or {}).items()}
        with self._lock, self._transaction():
            outcome = self._add(request, descriptor, author)
            if outcome.status != "duplicate":
                for space, (dim, blob) in checked.items():
                    self._check_dims(space, {dim})
                    row = (space, outcome.record.id, blob)
                    self._db.execute("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", row)
        log.debug("%s edit %d (%r)", outcome.status, outcome.record.id, conflict_key(request, descriptor))
        return outcome

    def add_many(self, items: Sequence[tuple[EditRequest, str, str]]) -> list[AddOutcome]:
        """Add items in order in one transaction: all of them are stored, or (on an error or a crash) none."""
        for request, descriptor, author in items:
            check_edit(request, descriptor, author)
        with self._lock, self._transaction():
            return [self._add(request, descriptor, author) for request, descriptor, author in items]

    def get(self, edit_id: int) -> EditRecord:
        with self._lock:
            return self._get(edit_id)

    def delete(self, edit_id: int) -> EditRecord:
        with self._lock, self._transaction():
            record = self._get(edit_id)
            if record.deleted is not None:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.deleted))
                raise ValidationError(f"edit {edit_id} was already deleted (at {when})")
            now = time.time()
            self._db.execute("UPDATE edits SET deleted = ? WHERE id = ?", (now, record.id))
        log.debug("deleted edit %d", record.id)
        return replace(record, deleted=now)

    def journal(self) -> list[EditRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {self._COLUMNS} FROM edits ORDER BY id").fetchall()
        return [self._record(r) for r in rows]

    def active(self) -> list[EditRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLUMNS} FROM edits WHERE deleted IS NULL AND superseded_by IS NULL ORDER BY id"
            ).fetchall()
        return [self._record(r) for r in rows]

    def __len__(self) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM edits WHERE deleted IS NULL AND superseded_by IS NULL"
            ).fetchone()
        return int(row[0])

    def _check_dims(self, space: str, dims: set[int]) -> None:
        """Inside a transaction: every vector of a space has one length."""
        stored = self._db.execute("SELECT length(vector) FROM vectors WHERE space = ? LIMIT 1", (space,)).fetchone()
        if stored is not None:
            dims = dims | {int(stored[0]) // _VECTOR_DTYPE.itemsize}
        if len(dims) > 1:
            raise ValidationError(f"vectors of space {space!r} must all have one length, got lengths {sorted(dims)}")

    def put_vectors(self, space: str, vectors: Mapping[int, np.ndarray]) -> None:
        """Cache vectors of existing edits in ``space``, all in one transaction. Every vector of a space has the
        same length; an id that is not in the journal is a :class:`ValidationError`."""
        ids, checked = [], []
        for edit_id, vector in vectors.items():
            try:
                ids.append(operator.index(edit_id))
            except TypeError:
                raise ValidationError(f"an edit id must be an integer, got {edit_id!r}") from None
            checked.append(_vector_blob(space, edit_id, vector))
        if not ids:
            return
        with self._lock, self._transaction():
            self._check_dims(space, {dim for dim, _ in checked})
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                found = {
                    int(r[0])
                    for r in self._db.execute(f"SELECT id FROM edits WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                }
                unknown = [i for i in chunk if i not in found]
                if unknown:
                    raise ValidationError(f"cannot store a vector for edit {unknown[0]}: no such edit in {self.path}")
            self._db.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                [(space, i, blob) for i, (_, blob) in zip(ids, checked, strict=True)],
            )

    def get_vectors(self, space: str) -> dict[int, np.ndarray]:
        with self._lock:
            rows = self._db.execute(
                "SELECT edit_id, vector FROM vectors WHERE space = ? ORDER BY edit_id", (space,)
            ).fetchall()
        return {int(i): np.frombuffer(v, dtype=_VECTOR_DTYPE).astype(np.float32) for i, v in rows}

    def close(self) -> None:
        """Close the file (idempotent). The WAL is checkpointed into the main file."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()
