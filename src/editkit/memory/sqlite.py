"""The edit journal in one SQLite file: the default :class:`~editkit.memory.store.EditStore`.

One file, WAL journal, ``synchronous=FULL`` and one transaction per write, so an ``add`` has been fsynced when it
returns and a killed process never loses an acknowledged edit. A file that is not an editkit memory (not SQLite,
damaged, of an unknown schema version) is refused with :class:`~editkit.memory.store.MemoryCorruptError` and
never modified.
"""

from __future__ import annotations

import json
import logging
import operator
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from editkit.edits import EditRequest
from editkit.errors import ValidationError
from editkit.memory.store import (
    RECORD_FIELDS,
    SCHEMA_VERSION,
    VECTOR_DTYPE,
    AddOutcome,
    EditRecord,
    EditStore,
    MemoryCorruptError,
    check_edit,
    conflict_key,
    is_duplicate,
    vector_blob,
)

log = logging.getLogger(__name__)

_SQLITE_MAGIC = b"SQLite format 3\x00"
_RESTORE_HINT = (
    "restore it from an export with SQLiteStore(new_path).import_jsonl(export), or move it aside to start a new "
    "memory; editkit will not overwrite it"
)


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
        try:
            if not existing:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=timeout, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.OperationalError) as exc:  # a folder or file that cannot be created
            raise ValidationError(f"cannot open the edit memory {self.path}: {exc}") from None
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

    @property
    def location(self) -> str:
        return str(self.path)

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

    _COLUMNS = ", ".join(RECORD_FIELDS)

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
            if is_duplicate(record, request, descriptor):
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
        checked = {space: vector_blob(space, "being added", v) for space, v in (vectors or {}).items()}
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
            dims = dims | {int(stored[0]) // VECTOR_DTYPE.itemsize}
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
            checked.append(vector_blob(space, edit_id, vector))
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
        return {int(i): np.frombuffer(v, dtype=VECTOR_DTYPE).astype(np.float32) for i, v in rows}

    def close(self) -> None:
        """Close the file (idempotent). The WAL is checkpointed into the main file."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()
