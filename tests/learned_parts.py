"""Trained parts of the learned editors for the contract suite: each trained on tiny models in a few steps, once
per session and architecture (their training itself is tested in each method's own test module)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import write_tiny_cases
from editkit.training.registry import create_trainer

# KE: the top layer's MLP output matrix, a narrow hypernetwork, two steps
KE_TINY = {
    "layers": [-1],
    "parts": ["mlp_out"],
    "hidden": 8,
    "edits": 2,
    "probes_per_edit": 2,
    "local_per_edit": 1,
    "steps": 2,
    "checkpoint_every": 2,
}


@pytest.fixture(scope="session")
def ke_parts(tmp_path_factory: pytest.TempPathFactory) -> Callable[[pytest.FixtureRequest], Path]:
    """KE's hypernetwork for the tiny architecture a test runs on (its ``arch`` parameter, else llama), trained on
    first request: ``ke_parts(request)``."""
    root = tmp_path_factory.mktemp("ke")
    data = write_tiny_cases(root / "cases.jsonl")
    trained: dict[str, Path] = {}

    def parts(request: pytest.FixtureRequest) -> Path:
        callspec = getattr(request.node, "callspec", None)
        arch = callspec.params.get("arch", "llama") if callspec else "llama"
        if arch not in trained:
            out = root / arch
            settings = {**KE_TINY, "data": [str(data)], "out": str(out), "base_model": f"tiny-{arch}"}
            create_trainer("ke", settings).train(progress=False)
            trained[arch] = out
        return trained[arch]

    return parts
