"""editkit.memory: the edit journal (SQLiteStore) and the vector index (VectorIndex).

The journal: add / get / delete / active / journal, the duplicate and conflict rules, limits, export and import,
cached vectors, reopening, refusing damaged files without touching them, no acknowledged edit lost when the
process is killed, sharing between threads and connections. The index: exact search against brute force,
removal and re-adding, the switch to HNSW and its recall, tombstones and rebuilds, padding, validation.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from editkit.edits import EditRequest
from editkit.errors import EditkitError, ValidationError
from editkit.memory import (
    MAX_DESCRIPTOR_CHARS,
    EditRecord,
    MemoryCorruptError,
    SQLiteStore,
    VectorIndex,
)

PM = EditRequest(prompt="Who is the UK PM?", target_new=" Boris Johnson")
SPORT = EditRequest(prompt="{} plays the sport of", subject="LeBron James", target_new=" football")


def q(i: int, target: str = " yes") -> EditRequest:
    return EditRequest(prompt=f"Is {i} a lucky number?", target_new=target)


@pytest.fixture
def store(tmp_path: Path):
    with SQLiteStore(tmp_path / "memory.sqlite") as s:
        yield s


# --------------------------------------------------------------------------- journal: basics
def test_add_get_delete_active_and_journal(store: SQLiteStore) -> None:
    t0 = time.time()
    a = store.add(PM, "Who is the UK PM? Boris Johnson", author="ops")
    b = store.add(SPORT, "LeBron James plays the sport of football")
    c = store.add(q(1), "q1")
    assert [o.status for o in (a, b, c)] == ["added"] * 3
    assert a.record.id < b.record.id < c.record.id
    got = store.get(a.record.id)
    assert got == a.record and got.request == PM and got.author == "ops" and got.active
    assert t0 <= got.created <= time.time()
    assert store.get(b.record.id).request.subject == "LeBron James"

    gone = store.delete(b.record.id)
    assert gone.deleted is not None and not gone.active and gone.request == SPORT
    assert store.get(b.record.id) == gone  # the row stays, stamped
    assert [r.id for r in store.active()] == [a.record.id, c.record.id]
    assert [r.id for r in store.journal()] == [a.record.id, b.record.id, c.record.id]
    assert len(store) == 2
    with pytest.raises(ValidationError, match=f"edit {b.record.id} was already deleted"):
        store.delete(b.record.id)
    with pytest.raises(ValidationError, match="no edit with id 999"):
        store.get(999)
    with pytest.raises(ValidationError, match="no edit with id 999"):
        store.delete(999)


def test_store_uses_wal_and_full_sync_and_creates_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "memory.sqlite"
    with SQLiteStore(path) as s:
        s.add(PM, "d")
        assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert path.is_file()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"


# --------------------------------------------------------------------------- journal: duplicates and conflicts
def test_a_duplicate_of_an_active_edit_writes_nothing(store: SQLiteStore) -> None:
    first = store.add(PM, "d", author="a")
    again = store.add(EditRequest(prompt="  who is the uk pm? ", target_new="Boris Johnson "), "d ", author="b")
    assert again.status == "duplicate" and again.record == first.record and again.replaced == ()
    assert store.journal() == [first.record]
    free_form = EditRequest(descriptor="TOPIC: bananas SENTIMENT: negative")
    one = store.add(free_form, free_form.descriptor or "")
    two = store.add(EditRequest(descriptor="topic: BANANAS sentiment: negative"), "TOPIC: bananas SENTIMENT: negative")
    assert two.status == "duplicate" and two.record.id == one.record.id
    assert len(store.journal()) == 2


def test_an_edit_of_the_same_input_supersedes_the_older_one(store: SQLiteStore) -> None:
    old = store.add(SPORT, "sport football").record
    # The same input written without the template: the key is the text with the subject filled in.
    new = store.add(
        EditRequest(prompt="LeBron James plays the sport of", subject="LeBron James", target_new=" soccer"),
        "sport soccer",
    )
    assert new.status == "replaced" and new.replaced == (old.id,)
    assert store.get(old.id).superseded_by == new.record.id and not store.get(old.id).active
    assert [r.id for r in store.active()] == [new.record.id]
    assert [r.id for r in store.journal()] == [old.id, new.record.id]  # the older stays in the journal

    # The older answer again is a new edit (the older record is history, not active): it replaces the newer.
    back = store.add(SPORT, "sport football")
    assert back.status == "replaced" and back.replaced == (new.record.id,)
    # Same answer with another descriptor: the newer wins too.
    redescribed = store.add(SPORT, "LeBron James, sport: football")
    assert redescribed.status == "replaced" and redescribed.replaced == (back.record.id,)
    assert [r.id for r in store.active()] == [redescribed.record.id]
    # A deleted edit does not conflict: after rolling it back the same edit is simply added.
    store.delete(redescribed.record.id)
    assert store.add(SPORT, "LeBron James, sport: football").status == "added"
    assert len(store) == 1 and len(store.journal()) == 5


def test_descriptor_and_author_limits(store: SQLiteStore) -> None:
    too_long = "x" * (MAX_DESCRIPTOR_CHARS + 1)
    with pytest.raises(ValidationError, match=f"{MAX_DESCRIPTOR_CHARS + 1} characters long; the limit is 2000"):
        store.add(PM, too_long)
    with pytest.raises(ValidationError, match="descriptor is empty"):
        store.add(PM, " \n\t ")
    with pytest.raises(ValidationError, match="author is 201 characters long; the limit is 200"):
        store.add(PM, "d", author="a" * 201)
    with pytest.raises(ValidationError, match="must be a string"):
        store.add(PM, None)  # type: ignore[arg-type]
    assert store.journal() == []
    assert store.add(PM, "x" * MAX_DESCRIPTOR_CHARS, author="a" * 200).status == "added"


# --------------------------------------------------------------------------- journal: export / import
def _history(s: SQLiteStore) -> None:
    for i in range(6):
        s.add(q(i), f"q{i}", author=f"user{i}")
    s.delete(3)
    s.add(q(4, " no"), "q4 answered no")  # supersedes edit 5
    s.add(EditRequest(descriptor="TOPIC: bananas SENTIMENT: negative"), "TOPIC: bananas SENTIMENT: negative")


def test_export_then_import_into_a_fresh_store_reproduces_the_active_edits(tmp_path: Path) -> None:
    export = tmp_path / "out" / "edits.jsonl"
    with SQLiteStore(tmp_path / "a.sqlite") as a:
        _history(a)
        journal = a.journal()
        assert a.export_jsonl(export) == len(journal) == 8
        want = [(r.request, r.descriptor, r.author) for r in a.active()]
    lines = export.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [r.to_dict() for r in journal]  # the history is exported too
    with SQLiteStore(tmp_path / "b.sqlite") as b:
        assert b.import_jsonl(export) == len(want) == 6
        assert [(r.request, r.descriptor, r.author) for r in b.active()] == want
        assert b.import_jsonl(export) == 0  # every record is now a duplicate
        assert len(b.journal()) == 6
    with SQLiteStore(tmp_path / "c.sqlite") as c:
        assert c.import_jsonl(export, author="restore") == 6
        assert {r.author for r in c.active()} == {"restore"}


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"request": PM.to_dict()}), "missing field 'descriptor'"),
        (json.dumps({"request": PM.to_dict(), "descripton": "d"}), "unknown field 'descripton'"),
        (json.dumps({"request": {"prompt": "Who?", "target_new": ""}, "descriptor": "d"}), "empty target_new"),
        (json.dumps({"request": PM.to_dict(), "descriptor": "x" * 2001}), "the limit is 2000"),
        (json.dumps({"request": PM.to_dict(), "descriptor": None}), "must be a string"),
    ],
)
def test_a_malformed_import_line_is_named_and_nothing_is_added(tmp_path: Path, bad_line: str, message: str) -> None:
    path = tmp_path / "edits.jsonl"
    good = json.dumps({"request": q(1).to_dict(), "descriptor": "q1"})
    path.write_text(f"{good}\n\n{bad_line}\n{good}\n", encoding="utf-8")
    with SQLiteStore(tmp_path / "m.sqlite") as s:
        with pytest.raises(ValidationError, match=message) as err:
            s.import_jsonl(path)
        assert str(err.value).startswith(f"{path}, line 3: ")
        assert "\n" not in str(err.value)
        assert s.journal() == []  # checked before anything is written
        with pytest.raises(ValidationError, match="does not exist"):
            s.import_jsonl(tmp_path / "missing.jsonl")


# --------------------------------------------------------------------------- journal: vectors, reopening
def test_vectors_round_trip_per_space(store: SQLiteStore) -> None:
    a, b = store.add(PM, "a").record.id, store.add(q(1), "b").record.id
    rng = np.random.default_rng(0)
    va, vb = rng.normal(size=384), rng.normal(size=384)  # float64 in, float32 out
    store.put_vectors("minilm@abc", {a: va, b: vb})
    store.put_vectors("lu@def", {a: np.arange(8, dtype=np.float32)})
    got = store.get_vectors("minilm@abc")
    assert list(got) == [a, b] and all(v.dtype == np.float32 and v.shape == (384,) for v in got.values())
    np.testing.assert_array_equal(got[a], va.astype(np.float32))
    np.testing.assert_array_equal(store.get_vectors("lu@def")[a], np.arange(8, dtype=np.float32))
    assert store.get_vectors("unknown") == {}
    store.put_vectors("lu@def", {a: np.ones(8)})  # replaces
    np.testing.assert_array_equal(store.get_vectors("lu@def")[a], np.ones(8, dtype=np.float32))
    with pytest.raises(ValidationError, match="one length"):
        store.put_vectors("lu@def", {b: np.ones(9)})
    with pytest.raises(ValidationError, match="no such edit"):
        store.put_vectors("lu@def", {12345: np.ones(8)})
    with pytest.raises(ValidationError, match="1-D"):
        store.put_vectors("lu@def", {b: np.ones((1, 8))})
    with pytest.raises(ValidationError, match="not finite"):
        store.put_vectors("lu@def", {b: np.full(8, np.nan)})
    assert list(store.get_vectors("lu@def")) == [a]  # failed puts stored nothing


def test_an_edit_and_its_vectors_are_one_write(store: SQLiteStore) -> None:
    """SERAC's adds store the record and its key together: one fsync, and never one without the other."""
    added = store.add(PM, "a", vectors={"minilm@abc": np.ones(4)}).record
    np.testing.assert_array_equal(store.get_vectors("minilm@abc")[added.id], np.ones(4, dtype=np.float32))
    dup = store.add(PM, "a", vectors={"minilm@abc": np.zeros(4)})
    assert dup.status == "duplicate" and store.get_vectors("minilm@abc")[added.id][0] == 1.0
    before = len(store.journal())
    with pytest.raises(ValidationError, match="one length"):
        store.add(q(1), "b", vectors={"minilm@abc": np.ones(5)})
    with pytest.raises(ValidationError, match="not finite"):
        store.add(q(2), "c", vectors={"minilm@abc": np.full(4, np.inf)})
    assert len(store.journal()) == before  # a bad vector leaves no record behind


def test_reopening_keeps_everything_and_ids_keep_increasing(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite"
    with SQLiteStore(path) as s:
        _history(s)
        s.put_vectors("space", {r.id: np.full(4, r.id, dtype=np.float32) for r in s.active()})
        journal, active = s.journal(), s.active()
        last = journal[-1].id
        s.delete(last)  # the highest id is deleted: a new id must still be higher
    with SQLiteStore(path) as s:
        assert s.journal()[:-1] == journal[:-1] and s.get(last).deleted is not None
        assert [r.id for r in s.active()] == [r.id for r in active if r.id != last]
        assert {i: float(v[0]) for i, v in s.get_vectors("space").items()} == {r.id: float(r.id) for r in active}
        assert s.add(q(99), "q99").record.id > last


def test_index_can_be_rebuilt_from_the_stored_vectors(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite"
    rng = np.random.default_rng(3)
    with SQLiteStore(path) as s:
        ids = [s.add(q(i), f"q{i}").record.id for i in range(30)]
        s.put_vectors("enc", {i: rng.normal(size=16) for i in ids})
        s.delete(ids[7])
    with SQLiteStore(path) as s:
        stored = s.get_vectors("enc")
        index = VectorIndex.build({r.id: stored[r.id] for r in s.active()}, 16)
    assert len(index) == 29 and ids[7] not in index
    _, found = index.search(np.stack([stored[ids[5]], stored[ids[7]]]), 1)
    assert found[0, 0] == ids[5] and found[1, 0] != ids[7]


# --------------------------------------------------------------------------- journal: damaged files
def _refused(path: Path, match: str | None = None) -> MemoryCorruptError:
    before = path.read_bytes()
    with pytest.raises(MemoryCorruptError, match=match) as err:
        SQLiteStore(path)
    assert path.read_bytes() == before, "a refused file must be left exactly as it was"
    message = str(err.value)
    assert str(path) in message and "\n" not in message and isinstance(err.value, EditkitError)
    return err.value


def _real_store(path: Path, n: int = 200) -> None:
    with SQLiteStore(path) as s:
        for i in range(0, n, 50):
            s.add_many([(q(j), f"descriptor {j} " + "z" * 100, "") for j in range(i, i + 50)])


def test_random_bytes_and_foreign_sqlite_files_are_refused_untouched(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    assert "import_jsonl" in str(_refused(junk, "not an SQLite file"))
    text = tmp_path / "notes.sqlite"
    text.write_text("these are my notes\n")
    _refused(text, "not an SQLite file")
    foreign = tmp_path / "other_app.sqlite"
    with sqlite3.connect(foreign) as raw:
        raw.execute("CREATE TABLE people (name TEXT)")
        raw.execute("INSERT INTO people VALUES ('ada')")
    raw.close()
    _refused(foreign, "without editkit's schema version")
    assert not Path(f"{foreign}-wal").exists()  # not even switched to WAL
    with pytest.raises(MemoryCorruptError, match="is a folder"):
        SQLiteStore(tmp_path)


@pytest.mark.parametrize("keep", [0.5, "pages"])
def test_a_truncated_store_is_refused_untouched(tmp_path: Path, keep: float | str) -> None:
    path = tmp_path / "memory.sqlite"
    _real_store(path)
    data = path.read_bytes()
    page = int.from_bytes(data[16:18], "big")
    assert len(data) > 6 * page
    cut = int(len(data) * keep) if isinstance(keep, float) else 3 * page  # mid-page, or on a page boundary
    path.write_bytes(data[:cut])
    _refused(path)


def test_an_unknown_or_missing_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite"
    with SQLiteStore(path) as s:
        s.add(PM, "d")
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    raw.close()
    _refused(path, "schema version '99'")
    with sqlite3.connect(path) as raw:
        raw.execute("DELETE FROM meta")
    raw.close()
    _refused(path, "no schema version")


# --------------------------------------------------------------------------- journal: crashes and sharing
CHILD = """
import sys
import numpy as np
from editkit.edits import EditRequest
from editkit.memory.sqlite import SQLiteStore

store = SQLiteStore(sys.argv[1])
i = 0
while True:
    r = store.add(EditRequest(prompt=f"Question {i}?", target_new=f" answer {i}"), f"d{i}", author="child")
    store.put_vectors("space", {r.record.id: np.full(8, i, dtype=np.float32)})
    print(r.record.id, i, flush=True)
    i += 1
"""


def test_no_acknowledged_edit_is_lost_when_the_process_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    acknowledged: dict[int, int] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            edit_id, n = map(int, line.split())
            acknowledged[edit_id] = n
            if len(acknowledged) >= 20:
                break
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=30)
    finally:
        watchdog.cancel()
    assert len(acknowledged) >= 20, f"the writer died early: {stderr}"
    assert proc.returncode == -signal.SIGKILL
    assert Path(f"{path}-wal").exists()  # killed with the edits still in the WAL: reopening has to recover them
    with SQLiteStore(path) as s:
        journal = {r.id: r for r in s.journal()}
        vectors = s.get_vectors("space")
    for edit_id, n in acknowledged.items():
        assert edit_id in journal, f"acknowledged edit {edit_id} was lost"
        record = journal[edit_id]
        assert record.request == EditRequest(prompt=f"Question {n}?", target_new=f" answer {n}")
        assert (record.descriptor, record.author, record.active) == (f"d{n}", "child", True)
        np.testing.assert_array_equal(vectors[edit_id], np.full(8, n, dtype=np.float32))


def test_threads_share_one_store(store: SQLiteStore) -> None:
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(12):
                store.add(q(100 * t + i), f"t{t} i{i}", author=f"thread{t}")
                store.active()  # reads interleave with other threads' writes
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    journal = store.journal()
    assert len(journal) == len({r.id for r in journal}) == len(store) == 48


def test_two_connections_racing_on_one_input_leave_one_active_edit(tmp_path: Path) -> None:
    """The conflict check and the write are one IMMEDIATE transaction, so two processes (here: connections)
    adding answers for the same inputs cannot both leave an active edit."""
    path = tmp_path / "memory.sqlite"
    SQLiteStore(path).close()
    stores = [SQLiteStore(path), SQLiteStore(path)]

    def writer(s: SQLiteStore, answer: str) -> None:
        for i in range(15):
            s.add(q(i % 5, answer), f"q{i % 5}{answer}")

    threads = [threading.Thread(target=writer, args=(s, a)) for s, a in zip(stores, (" yes", " no"), strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    active = stores[0].active()
    assert sorted(r.request.text for r in active) == sorted(q(i).text for i in range(5))
    assert all(isinstance(r, EditRecord) for r in stores[1].journal())
    for s in stores:
        s.close()


# --------------------------------------------------------------------------- index
def brute(x: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = ((queries[:, None, :].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1)
    order = np.argsort(d, axis=1)[:, :k]
    return np.take_along_axis(d, order, axis=1), ids[order]


def test_exact_search_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 24)).astype(np.float32)
    ids = 1000 + 3 * np.arange(300)  # ids are not positions
    queries = rng.normal(size=(40, 24)).astype(np.float32)
    index = VectorIndex.build(dict(zip(ids.tolist(), x, strict=True)), 24)
    assert index.exact and len(index) == 300
    d, found = index.search(queries, 7)
    want_d, want_ids = brute(x, ids, queries, 7)
    assert d.dtype == np.float32 and found.dtype == np.int64 and d.shape == found.shape == (40, 7)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(d, want_d, rtol=1e-4, atol=1e-4)
    assert (np.diff(d, axis=1) >= 0).all()


def test_exact_remove_and_re_add() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 8)).astype(np.float32)
    index = VectorIndex(8)
    index.add(list(range(100)), x)
    _, nearest = index.search(x[:10], 1)
    assert nearest[:, 0].tolist() == list(range(10))
    index.remove([0, 1, 2, 12345])  # unknown ids are ignored
    assert len(index) == 97 and 0 not in index
    _, after = index.search(x[:3], 5)
    assert not np.isin(after, [0, 1, 2]).any()
    index.add([5], x[50:51])  # re-adding an id replaces its vector
    d, found = index.search(x[5:6], 2)
    assert 5 not in found[0] or d[0, found[0].tolist().index(5)] > 0
    d, found = index.search(x[50:51], 2)
    assert set(found[0]) == {5, 50} and d[0].max() == pytest.approx(0.0, abs=1e-5)
    assert len(index) == 97


def test_past_the_threshold_the_index_is_approximate_and_still_finds_neighbours() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 32)).astype(np.float32)
    ids = np.arange(500) * 2 + 1
    queries = rng.normal(size=(200, 32)).astype(np.float32)
    index = VectorIndex(32, exact_below=50)
    index.add(ids[:40].tolist(), x[:40])
    assert index.exact
    index.add(ids[40:].tolist(), x[40:])
    assert not index.exact and len(index) == 500
    d, found = index.search(queries, 5)
    want_d, want_ids = brute(x, ids, queries, 5)
    assert (found[:, 0] == want_ids[:, 0]).mean() >= 0.9
    np.testing.assert_array_equal(index.nearest_exact(queries), want_ids[:, 0])  # what recall is measured against
    hit = found[:, 0] == want_ids[:, 0]
    np.testing.assert_allclose(d[hit, 0], want_d[hit, 0], rtol=1e-4)  # squared L2, like the exact index
    assert (np.diff(d, axis=1) >= 0).all() and (found >= 0).all()

    # Removals are honoured: 15% of the graph becomes tombstones (no rebuild yet) and never comes back.
    removed = ids[rng.choice(500, 75, replace=False)]
    index.remove(removed.tolist())
    assert not index.exact and len(index) == 425 and index._tombstones == 75
    _, found = index.search(queries, 10)
    assert not np.isin(found, removed).any() and (found >= 0).all()
    keep = ~np.isin(ids, removed)
    _, want_ids = brute(x[keep], ids[keep], queries, 1)
    assert (found[:, 0] == want_ids[:, 0]).mean() >= 0.9

    # Re-adding an id replaces its vector in the graph too (its old entry becomes a tombstone).
    moved = int(ids[keep][0])
    index.add([moved], np.full((1, 32), 50.0, dtype=np.float32))
    _, found = index.search(np.full((1, 32), 50.0, dtype=np.float32), 3)
    assert found[0, 0] == moved and found[0].tolist().count(moved) == 1
    _, found = index.search(x[ids == moved], 3)
    assert moved not in found[0]


def test_tombstones_trigger_rebuilds_and_a_shrunken_index_goes_back_to_exact() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 8)).astype(np.float32)
    index = VectorIndex(8, exact_below=50)
    index.add(list(range(100)), x)
    index.remove(range(15))  # 15 of 100 entries: below 20%
    assert not index.exact and index._tombstones == 15
    index.remove(range(15, 25))  # 25 > 20: rebuilt, still 75 >= 50 vectors
    assert not index.exact and index._tombstones == 0 and len(index) == 75
    index.remove(range(25, 65))  # rebuilt with 35 < 50 vectors: exact again
    assert index.exact and len(index) == 35
    d, found = index.search(x[:5], 4)
    want_d, want_ids = brute(x[65:], np.arange(65, 100), x[:5], 4)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(d, want_d, rtol=1e-4, atol=1e-4)
    index.add(list(range(65)), x[:65])  # grows past the threshold again
    assert not index.exact and len(index) == 100


@pytest.mark.parametrize("exact_below", [20_000, 0])
def test_rows_are_padded_when_k_exceeds_the_index(exact_below: int) -> None:
    index = VectorIndex(4, exact_below=exact_below)
    d, found = index.search(np.zeros((2, 4), dtype=np.float32), 3)
    assert (found == -1).all() and np.isposinf(d).all()
    index.add([7, 8, 9], np.eye(4, dtype=np.float32)[:3] * [[1], [2], [3]])
    assert index.exact == (exact_below > 0)
    d, found = index.search(np.zeros((1, 4), dtype=np.float32), 5)
    assert found.tolist() == [[7, 8, 9, -1, -1]] and d.dtype == np.float32
    np.testing.assert_allclose(d[0, :3], [1, 4, 9], atol=1e-5)
    assert np.isposinf(d[0, 3:]).all()
    index.remove([8])
    d, found = index.search(np.zeros((1, 4), dtype=np.float32), 3)
    assert found.tolist() == [[7, 9, -1]] and np.isposinf(d[0, 2])


def test_index_validates_its_inputs() -> None:
    index = VectorIndex(4)
    one = np.ones((1, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"shape \[n, 4\], got \[1, 5\]"):
        index.add([1], np.ones((1, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"v\[None, :\]"):
        index.search(np.ones(4, dtype=np.float32), 1)
    with pytest.raises(ValueError, match="2 ids for 1 vectors"):
        index.add([1, 2], one)
    with pytest.raises(ValueError, match="repeat"):
        index.add([1, 1], np.ones((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="non-negative"):
        index.add([-1], one)
    with pytest.raises(ValueError, match="NaN"):
        index.add([1], np.full((1, 4), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="real numbers"):
        index.add([1], np.array([["a", "b", "c", "d"]]))
    with pytest.raises(ValueError, match="k must be"):
        index.search(one, 0)
    with pytest.raises(ValueError, match="dim"):
        VectorIndex(0)
    assert len(index) == 0
    index.add([1], np.ones((1, 4), dtype=np.float64))  # other real dtypes are converted
    assert index.search(one, 1)[1].tolist() == [[1]]
