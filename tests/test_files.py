"""Whole-or-absent writes and content hashes (editkit.files)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from editkit.files import atomic_open, atomic_save_tensors, atomic_write, file_sha256, tensor_sha256


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "results.json"
    atomic_write(target, "first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "journal.jsonl"
    atomic_write(target, "old\n")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half of the new")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["journal.jsonl"]


def test_atomic_open_refuses_append(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="whole files"), atomic_open(tmp_path / "x", "a"):
        pass


def test_tensors_round_trip_and_hashes(tmp_path: Path) -> None:
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()  # not contiguous
    atomic_save_tensors({"t": t}, tmp_path / "t.safetensors", metadata={"k": "v"})
    assert torch.equal(load_file(str(tmp_path / "t.safetensors"))["t"], t)
    assert tensor_sha256(t) == hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()
    assert tensor_sha256(t) != tensor_sha256(t.to(torch.float64))
    (tmp_path / "blob").write_bytes(b"x" * 3_000_000)
    assert file_sha256(tmp_path / "blob", chunk=1 << 16) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"a": [1, 2', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (None, "is a folder"),
    ],
)
def test_read_json_says_in_one_line_why_a_file_cannot_be_read(tmp_path, content, message):
    from editkit.errors import ValidationError
    from editkit.files import read_json

    path = tmp_path / "x.json"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ValidationError, match=message) as err:
        read_json(path, "results file")
    assert "\n" not in str(err.value) and str(err.value).startswith(("results file", "cannot read"))
    with pytest.raises(ValidationError, match="does not exist"):
        read_json(tmp_path / "absent.json")


def test_check_writable_refuses_before_any_work_and_creates_nothing(tmp_path):
    from editkit.errors import ValidationError
    from editkit.files import check_writable

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    check_writable(tmp_path / "new" / "deeper" / "out.json", "--out")
    check_writable(tmp_path / "new-folder", "--save", folder=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing created by the checks
    with pytest.raises(ValidationError, match="is a file, not a folder"):
        check_writable(blocker / "out.json", "--out")
    with pytest.raises(ValidationError, match="is a folder; give a file name"):
        check_writable(tmp_path, "--out")
    with pytest.raises(ValidationError, match="is a file; give a folder"):
        check_writable(blocker, "--save", folder=True)
    readonly = Path("/proc/editkit-out.json")
    with pytest.raises(ValidationError, match="cannot be written"):
        check_writable(readonly, "--out")
