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
