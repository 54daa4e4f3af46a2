"""Trained artifacts read back whole or refused in one line: a truncated manifest, a loader called without
verify, a garbled manifest in the folder a training run writes to."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from editkit.errors import ValidationError
from editkit.trained import load_tensors, record_part, save_part, start_manifest, verify


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    """An artifact with one part of two files (no training data recorded)."""
    folder = tmp_path / "art"
    manifest = start_manifest(folder, {"seed": 3}, [], "tiny-llama-s0")
    save_part(folder / "part", {"part": "part", "steps": 2}, tensors={"w": torch.arange(6.0).reshape(2, 3)})
    record_part(folder, manifest, "part", {"part": "part", "steps": 2})
    return folder


def test_a_truncated_manifest_is_one_line(artifact: Path):
    path = artifact / "manifest.json"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValidationError, match="not valid JSON"):
        verify(artifact, ["part"])


def test_every_loader_verifies_the_part_it_reads(artifact: Path):
    """A reader that skips verify still cannot use a damaged part: the loaders verify on their own."""
    weights = artifact / "part" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4] ^= 0xFF  # inside the tensor's values: the file still loads
    weights.write_bytes(bytes(data))
    with pytest.raises(ValidationError, match="does not match its recorded hash"):
        load_tensors(artifact / "part")


def test_training_into_a_folder_with_a_garbled_manifest_starts_a_new_one(artifact: Path):
    (artifact / "manifest.json").write_text('{"parts": {"par')
    manifest = start_manifest(artifact, {"seed": 5}, [], "tiny-llama-s0")
    assert manifest["parts"] == {} and manifest["config"] == {"seed": 5}
