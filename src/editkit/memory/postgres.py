"""The edit journal in PostgreSQL (``postgresql://user@host:port/db``): one store shared by several server
replicas, behind :func:`~editkit.memory.urls.open_store`.

Same rules as every store (:mod:`editkit.memory.store`), same tables as the SQLite store under ``editkit_``
names. Every write is one transaction that first takes a transaction-scoped advisory lock, so the
read-then-write of the duplicate and conflict rules is atomic across processes (two replicas adding an edit of one
input leave one active edit); it is durable when COMMIT returns (the server's ``synchronous_commit``, on by
default). Each write also sends ``NOTIFY editkit_edits`` with the edit id, for listeners; replicas catch up by
polling :meth:`~editkit.editors.memory.EditMemory.refresh` (``editkit serve --sync-seconds``).

psycopg 3 is imported when a store opens (the ``serve`` extra), so editkit imports without it. The password of a
URL never appears in :attr:`PostgresStore.location` or in messages. A lost connection is replaced on the next
call; the call that met it raises :class:`~editkit.memory.store.StoreUnavailableError`.
"""

from __future__ import annotations

import json
import logging
import operator
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
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
    StoreUnavailableError,
    check_edit,
    conflict_key,
    is_duplicate,
    vector_blob,
)

log = logging.getLogger(__name__)

_LOCK_KEY = 0x6564_6974_6B69  # the advisory lock every editkit write takes ("editki")
_COLUMNS = ", ".join(RECORD_FIELDS)
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS editkit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS editkit_edits (
        id BIGSERIAL PRIMARY KEY,
        request TEXT NOT NULL,
        descriptor TEXT NOT NULL,
        author TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        deleted DOUBLE PRECISION,
        superseded_by BIGINT,
        conflict_key TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS editkit_edits_active_key ON editkit_edits (conflict_key) "
    "WHERE deleted IS NULL AND superseded_by IS NULL",
    """CREATE TABLE IF NOT EXISTS editkit_vectors (
        space TEXT NOT NULL,
        edit_id BIGINT NOT NULL REFERENCES editkit_edits (id),
        vector BYTEA NOT NULL,
        PRIMARY KEY (space, edit_id)
    )""",
]


def redact(url: str) -> str:
    """``url`` without its password."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


class PostgresStore(EditStore):
    """The journal in a PostgreSQL database (module docstring). One connection, shared by threads under a lock."""

    def __init__(self, url: str, *, connect_timeout: int = 10) -> None:
        try:
            import psycopg
        except ImportError:
            raise ValidationError("PostgreSQL edit stores need psycopg: pip install 'editkit[serve]'") from None
        self.url = url
        self._psycopg = psycopg
        self._timeout = connect_timeout
        self._lock = threading.Lock()
        self._closed = False
        self._db = self._connect()
        try:
            self._create()
        except BaseException:
            self._db.close()
            raise
        log.debug("opened edit store %s", self.location)

    def __repr__(self) -> str:
        return f"PostgresStore({self.location!r})"

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self.url, connect_timeout=self._timeout)
        except self._psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreUnavailableError(f"cannot connect to the edit store {self.location}: {reason}") from None

    @contextmanager
    def _session(self) -> Iterator[None]:
        """Hold the lock around one use of the connection: a connection found broken (the server restarted, the
        network dropped) is replaced first, and a failure of the connection during the use is a
        :class:`StoreUnavailableError` (the transaction was rolled back or never committed: nothing is half
        written; the next call connects again)."""
        with self._lock:
            if self._closed:
                raise StoreUnavailableError(f"the edit store {self.location} is closed")
            if self._db.closed or self._db.broken:
                self._db = self._connect()
            try:
                yield
            except self._psycopg.OperationalError as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise StoreUnavailableError(f"the edit store {self.location} failed: {reason}") from None

    @property
    def location(self) -> str:
        return redact(self.url)

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """One transaction holding editkit's advisory write lock (call with ``self._lock`` held)."""
        with self._db.transaction():
            cur = self._db.cursor()
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            yield cur

    def _create(self) -> None:
        with self._session(), self._transaction() as cur:
            for statement in _SCHEMA:
                cur.execute(statement)
            cur.execute("SELECT value FROM editkit_meta WHERE key = 'schema_version'")
            row = cur.fetchone()
            if row is None:
                cur.execute("INSERT INTO editkit_meta VALUES ('schema_version', %s)", (str(SCHEMA_VERSION),))
                cur.execute("INSERT INTO editkit_meta VALUES ('created', %s)", (repr(time.time()),))
            elif row[0] != str(SCHEMA_VERSION):
                raise MemoryCorruptError(
                    f"{self.location} has edit memory schema version {row[0]!r}; this editkit reads version "
                    f"{SCHEMA_VERSION}"
                )

    def _record(self, row: Sequence[Any]) -> EditRecord:
        id_, request, descriptor, author, created, deleted, superseded_by = row
        try:
            parsed = EditRequest.from_dict(json.loads(request))
        except (ValueError, TypeError) as exc:
            raise MemoryCorruptError(f"{self.location}: edit {id_} cannot be read: {exc}") from None
        return EditRecord(
            int(id_),
            parsed,
            str(descriptor),
            str(author),
            float(created),
            None if deleted is None else float(deleted),
            None if superseded_by is None else int(superseded_by),
        )

    def _select(self, where: str, params: Sequence[Any] = ()) -> list[EditRecord]:
        with self._db.transaction():
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM editkit_edits {where} ORDER BY id", params).fetchall()
        return [self._record(r) for r in rows]

    @staticmethod
    def _key(edit_id: Any) -> int:
        try:
            return operator.index(edit_id)
        except TypeError:
            raise ValidationError(f"an edit id must be an integer, got {edit_id!r}") from None

    def _add(self, cur: Any, request: EditRequest, descriptor: str, author: str) -> AddOutcome:
        key = conflict_key(request, descriptor)
        cur.execute(
            f"SELECT {_COLUMNS} FROM editkit_edits WHERE conflict_key = %s AND deleted IS NULL "
            "AND superseded_by IS NULL ORDER BY id",
            (key,),
        )
        current = [self._record(r) for r in cur.fetchall()]
        for record in current:
            if is_duplicate(record, request, descriptor):
                return AddOutcome(record, "duplicate")
        created = time.time()
        cur.execute(
            "INSERT INTO editkit_edits (request, descriptor, author, created, conflict_key) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (json.dumps(request.to_dict(), ensure_ascii=False), descriptor, author, created, key),
        )
        new_id = int(cur.fetchone()[0])
        older = tuple(r.id for r in current)
        if older:
            cur.execute("UPDATE editkit_edits SET superseded_by = %s WHERE id = ANY(%s)", (new_id, list(older)))
        cur.execute("SELECT pg_notify('editkit_edits', %s)", (str(new_id),))
        record = EditRecord(new_id, request, descriptor, author, created)
        return AddOutcome(record, "replaced" if older else "added", older)

    def _check_dims(self, cur: Any, space: str, dims: set[int]) -> None:
        cur.execute("SELECT length(vector) FROM editkit_vectors WHERE space = %s LIMIT 1", (space,))
        stored = cur.fetchone()
        if stored is not None:
            dims = dims | {int(stored[0]) // VECTOR_DTYPE.itemsize}
        if len(dims) > 1:
            raise ValidationError(f"vectors of space {space!r} must all have one length, got lengths {sorted(dims)}")

    # ------------------------------------------------------------------ the interface
    def add(
        self,
        request: EditRequest,
        descriptor: str,
        *,
        author: str = "",
        vectors: Mapping[str, np.ndarray] | None = None,
    ) -> AddOutcome:
        check_edit(request, descriptor, author)
        checked = {space: vector_blob(space, "being added", v) for space, v in (vectors or {}).items()}
        with self._session(), self._transaction() as cur:
            outcome = self._add(cur, request, descriptor, author)
            if outcome.status != "duplicate":
                for space, (dim, blob) in checked.items():
                    self._check_dims(cur, space, {dim})
                    cur.execute(
                        "INSERT INTO editkit_vectors VALUES (%s, %s, %s) ON CONFLICT (space, edit_id) "
                        "DO UPDATE SET vector = EXCLUDED.vector",
                        (space, outcome.record.id, blob),
                    )
        return outcome

    def add_many(self, items: Sequence[tuple[EditRequest, str, str]]) -> list[AddOutcome]:
        for request, descriptor, author in items:
            check_edit(request, descriptor, author)
        with self._session(), self._transaction() as cur:
            return [self._add(cur, request, descriptor, author) for request, descriptor, author in items]

    def get(self, edit_id: int) -> EditRecord:
        key = self._key(edit_id)
        with self._session():
            found = self._select("WHERE id = %s", (key,))
        if not found:
            raise ValidationError(f"no edit with id {edit_id} in {self.location}")
        return found[0]

    def delete(self, edit_id: int) -> EditRecord:
        key = self._key(edit_id)
        with self._session(), self._transaction() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM editkit_edits WHERE id = %s", (key,))
            row = cur.fetchone()
            if row is None:
                raise ValidationError(f"no edit with id {edit_id} in {self.location}")
            record = self._record(row)
            if record.deleted is not None:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.deleted))
                raise ValidationError(f"edit {edit_id} was already deleted (at {when})")
            now = time.time()
            cur.execute("UPDATE editkit_edits SET deleted = %s WHERE id = %s", (now, key))
            cur.execute("SELECT pg_notify('editkit_edits', %s)", (str(key),))
        return replace(record, deleted=now)

    def journal(self) -> list[EditRecord]:
        with self._session():
            return self._select("")

    def active(self) -> list[EditRecord]:
        with self._session():
            return self._select("WHERE deleted IS NULL AND superseded_by IS NULL")

    def put_vectors(self, space: str, vectors: Mapping[int, np.ndarray]) -> None:
        ids = [self._key(i) for i in vectors]
        checked = [vector_blob(space, i, v) for i, v in vectors.items()]
        if not ids:
            return
        with self._session(), self._transaction() as cur:
            self._check_dims(cur, space, {dim for dim, _ in checked})
            cur.execute("SELECT id FROM editkit_edits WHERE id = ANY(%s)", (ids,))
            found = {int(r[0]) for r in cur.fetchall()}
            unknown = [i for i in ids if i not in found]
            if unknown:
                raise ValidationError(f"cannot store a vector for edit {unknown[0]}: no such edit in {self.location}")
            cur.executemany(
                "INSERT INTO editkit_vectors VALUES (%s, %s, %s) ON CONFLICT (space, edit_id) "
                "DO UPDATE SET vector = EXCLUDED.vector",
                [(space, i, blob) for i, (_, blob) in zip(ids, checked, strict=True)],
            )

    def get_vectors(self, space: str) -> dict[int, np.ndarray]:
        with self._session(), self._db.transaction():
            rows = self._db.execute(
                "SELECT edit_id, vector FROM editkit_vectors WHERE space = %s ORDER BY edit_id", (space,)
            ).fetchall()
        return {int(i): np.frombuffer(bytes(v), dtype=VECTOR_DTYPE).astype(np.float32) for i, v in rows}

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()
