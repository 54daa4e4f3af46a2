"""Trained parts of the learned editors for the contract suite: each method's session-scoped fixture trains tiny
parts for every tiny architecture on ``write_tiny_cases`` in a few steps (the training itself is tested in each
method's own test module)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_tiny_cases

TINY_ARCHS = ("llama", "gemma3", "gpt2", "gptj", "gpt_neox", "t5")

MEND_TINY = {"top_layers": 2, "rank": 4, "blocks": 1, "steps": 2, "batch": 2, "norm_cases": 4, "alpha_init": 0.1}


@pytest.fixture(scope="session")
def mend_parts(tmp_path_factory: pytest.TempPathFactory) -> str:
    """MEND parts for each tiny model, under one folder per model: the ``artifacts`` setting with ``{model}``."""
    from editkit.training.registry import create_trainer

    root = tmp_path_factory.mktemp("mend")
    data = write_tiny_cases(root / "cases.jsonl")
    for arch in TINY_ARCHS:
        out = str(root / f"tiny-{arch}-s0")
        create_trainer("mend", {**MEND_TINY, "data": [str(data)], "out": out, "base_model": f"tiny-{arch}"}).train(
            progress=False
        )
    return str(Path(root) / "{model}")
