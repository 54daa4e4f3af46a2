"""The edit journal (SQLiteStore) and the vector index: rules, durability across a killed process, corruption,
export / import, and search against brute force."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from editkit.edits import EditRequest
from editkit.errors import ValidationError
from editkit.memory.index import VectorIndex
from editkit.memory.store import MAX_DESCRIPTOR_CHARS, MemoryCorruptError, SQLiteStore

PM = EditRequest(prompt="Who is the UK PM?", target_new=" Boris Johnson")


def _req(i: int, target: str = " x") -> EditRequest:
    return EditRequest(prompt=f"Question number {i}?", target_new=target)


def test_add_get_delete_and_journal(tmp_path):
    with SQLiteStore(tmp_path / "m.sqlite") as store:
        a = store.add(PM, "Who is the UK PM? Boris Johnson", author="ops")
        b = store.add(_req(1), "q1")
        assert a.status == b.status == "added" and a.record.id < b.record.id
        assert store.get(a.record.id).request == PM and store.get(a.record.id).author == "ops"
        deleted = store.delete(a.record.id)
        assert deleted.deleted is not None and not deleted.active
        assert [r.id for r in store.active()] == [b.record.id]
        assert [r.id for r in store.journal()] == [a.record.id, b.record.id]
        assert len(store) == 1
        with pytest.raises(ValidationError, match="already deleted"):
            store.delete(a.record.id)
        with pytest.raises(ValidationError, match="no edit with id 99"):
            store.get(99)


def test_duplicates_are_not_stored_and_conflicts_supersede(tmp_path):
    with SQLiteStore(tmp_path / "m.sqlite") as store:
        first = store.add(PM, "d")
        dup = store.add(EditRequest(prompt="who is the uk pm? ", target_new="Boris Johnson"), "d")
        assert dup.status == "duplicate" and dup.record.id == first.record.id
        newer = store.add(EditRequest(prompt="Who is the UK PM?", target_new=" Liz Truss"), "d2")
        assert newer.status == "replaced" and newer.replaced == (first.record.id,)
        assert [r.id for r in store.active()] == [newer.record.id]
        assert store.get(first.record.id).superseded_by == newer.record.id  # the older stays in the journal


def test_descriptor_and_author_limits(tmp_path):
    with SQLiteStore(tmp_path / "m.sqlite") as store:
        with pytest.raises(ValidationError, match=f"limit is {MAX_DESCRIPTOR_CHARS}"):
            store.add(PM, "x" * (MAX_DESCRIPTOR_CHARS + 1))
        with pytest.raises(ValidationError, match="empty"):
            store.add(PM, "   ")
        with pytest.raises(ValidationError, match="author"):
            store.add(PM, "d", author="a" * 201)
        assert not store.journal()


def test_export_import_reproduces_the_active_edits(tmp_path):
    with SQLiteStore(tmp_path / "a.sqlite") as a:
        for i in range(5):
            a.add(_req(i), f"q{i}")
        a.delete(2)
        a.add(_req(3, " y"), "q3 again")  # supersedes edit 4 (question 3)
        assert a.export_jsonl(tmp_path / "edits.jsonl") == 6
        want = [(r.request, r.descriptor) for r in a.active()]
    with SQLiteStore(tmp_path / "b.sqlite") as b:
        assert b.import_jsonl(tmp_path / "edits.jsonl") == 4
        assert [(r.request, r.descriptor) for r in b.active()] == want
        assert b.import_jsonl(tmp_path / "edits.jsonl") == 0  # all duplicates now


def test_malformed_import_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"request": PM.to_dict(), "descriptor": "d"}) + "\n{not json\n")
    with SQLiteStore(tmp_path / "m.sqlite") as store, pytest.raises(ValidationError, match="line 2"):
        store.import_jsonl(path)


def test_vectors_round_trip_per_space_and_survive_reopening(tmp_path):
    path = tmp_path / "m.sqlite"
    with SQLiteStore(path) as store:
        r = store.add(PM, "d").record
        store.put_vectors("enc-a", {r.id: np.arange(4, dtype=np.float32)})
        store.put_vectors("enc-b", {r.id: np.ones(4, dtype=np.float32)})
    with SQLiteStore(path) as store:
        assert store.active()[0].request == PM
        np.testing.assert_array_equal(store.get_vectors("enc-a")[r.id], np.arange(4, dtype=np.float32))
        np.testing.assert_array_equal(store.get_vectors("enc-b")[r.id], np.ones(4, dtype=np.float32))
        assert store.get_vectors("enc-c") == {}


def test_corrupted_file_is_refused_and_left_alone(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(os.urandom(4096))
    before = junk.read_bytes()
    with pytest.raises(MemoryCorruptError, match="junk.sqlite"):
        SQLiteStore(junk)
    assert junk.read_bytes() == before
    real = tmp_path / "real.sqlite"
    with SQLiteStore(real) as store:
        for i in range(50):
            store.add(_req(i), f"q{i}")
    real.write_bytes(real.read_bytes()[:1500])  # truncated
    with pytest.raises(MemoryCorruptError):
        SQLiteStore(real)


def test_no_acknowledged_edit_is_lost_when_the_process_is_killed(tmp_path):
    path = tmp_path / "m.sqlite"
    script = textwrap.dedent(
        f"""
        import sys
        from editkit.edits import EditRequest
        from editkit.memory.store import SQLiteStore
        store = SQLiteStore({str(path)!r})
        i = 0
        while True:
            r = store.add(EditRequest(prompt=f"Question {{i}}?", target_new=f" answer {{i}}"), f"d{{i}}")
            print(r.record.id, flush=True)
            i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    acknowledged = []
    assert proc.stdout is not None
    for line in proc.stdout:
        acknowledged.append(int(line))
        if len(acknowledged) >= 25:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with SQLiteStore(path) as store:
        present = {r.id: r for r in store.journal()}
    for i in acknowledged:
        assert i in present, f"acknowledged edit {i} was lost"
        n = int(present[i].descriptor[1:])
        assert present[i].request == EditRequest(prompt=f"Question {n}?", target_new=f" answer {n}")


# --------------------------------------------------------------------------- index
def test_exact_search_equals_brute_force_and_honours_removals():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    q = rng.normal(size=(20, 8)).astype(np.float32)
    index = VectorIndex.build({i: v for i, v in enumerate(x)}, 8)
    assert index.exact and len(index) == 200
    d, ids = index.search(q, 5)
    brute = ((q[:, None] - x[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(ids, np.argsort(brute, axis=1)[:, :5])
    np.testing.assert_allclose(d, np.sort(brute, axis=1)[:, :5], rtol=1e-4)
    index.remove(ids[:, 0].tolist())
    _, after = index.search(q, 1)
    assert not set(after[:, 0]) & set(ids[:, 0])


def test_approximate_index_past_the_threshold_still_finds_neighbours():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 16)).astype(np.float32)
    index = VectorIndex(16, exact_below=50)
    index.add(list(range(500)), x)
    assert not index.exact
    q = x[:200] + 0.01 * rng.normal(size=(200, 16)).astype(np.float32)
    _, ids = index.search(q, 1)
    assert (ids[:, 0] == np.arange(200)).mean() >= 0.9
    index.remove(range(100))
    _, ids = index.search(q, 3)
    assert not (ids[:100] < 100).any() and (ids[100:, 0] == np.arange(100, 200)).mean() >= 0.9


def test_index_pads_and_validates():
    index = VectorIndex(4)
    d, ids = index.search(np.zeros((1, 4), dtype=np.float32), 2)
    assert (ids == -1).all() and np.isinf(d).all()
    index.add([7], np.ones((1, 4), dtype=np.float32))
    d, ids = index.search(np.zeros((1, 4), dtype=np.float32), 2)
    assert ids.tolist() == [[7, -1]] and d[0, 0] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="shape"):
        index.add([1], np.ones((1, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="ids"):
        index.add([1, 2], np.ones((1, 4), dtype=np.float32))
