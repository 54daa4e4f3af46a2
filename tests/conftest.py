"""Shared fixtures. Tiny random models for fast tests; SmolLM2 (from the model cache) for real-model tests;
benchmark data read by path from ``$EDITKIT_DATA`` (default: ``../shared/data`` beside the repository)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from editkit.models.lm import LanguageModel
from editkit.models.tiny import tiny_model

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EDITKIT_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def data_file(rel: str) -> Path:
    """A benchmark file, checked against the data set's MANIFEST; the test is skipped when it is absent."""
    path = DATA / rel
    if not path.is_file():
        pytest.skip(f"benchmark data {path} not available (set EDITKIT_DATA)")
    manifest = DATA / "MANIFEST.json"
    if manifest.is_file():
        for entry in json.loads(manifest.read_text()):
            if entry.get("file") == rel:
                assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], f"{path} differs from MANIFEST"
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Unit tests get an empty cache; real-model tests keep the user's (where the model was fetched)."""
    if request.node.get_closest_marker("real_model") is None:
        monkeypatch.setenv("EDITKIT_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(params=["llama", "gemma3", "gpt2", "gptj", "gpt_neox", "t5"])
def any_arch(request: pytest.FixtureRequest) -> LanguageModel:
    return tiny_model(request.param)


@pytest.fixture
def llama() -> LanguageModel:
    return tiny_model("llama")


@pytest.fixture(scope="session")
def smollm2() -> LanguageModel:
    from editkit.models.zoo import load

    return load("smollm2-135m", progress=False)


@pytest.fixture(scope="session")
def wikitext() -> Path:
    return data_file("wikitext/wikitext-2/valid.txt")
