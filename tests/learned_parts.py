"""Trained parts of the learned editors on tiny models, for the contract suite (tests/test_contract.py): each
method's session fixture trains its parts per architecture in a few steps on ``write_tiny_cases`` (the training
itself is tested in each method's own test module)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def arch_of(request: pytest.FixtureRequest) -> str:
    """The tiny architecture a contract test runs on (``llama`` for tests not parametrized over them)."""
    callspec = getattr(request.node, "callspec", None)
    return str(callspec.params.get("arch", "llama")) if callspec is not None else "llama"


def _trained_per_arch(
    tmp_path_factory: pytest.TempPathFactory, trainer: str, settings: dict[str, Any]
) -> Callable[[str], Path]:
    """``parts(arch)``: the folder of ``trainer``'s tiny parts for that architecture, trained on first request."""
    from editkit.training.registry import create_trainer

    root = tmp_path_factory.mktemp(trainer)
    data = write_tiny_cases(root / "cases.jsonl")
    folders: dict[str, Path] = {}

    def parts(arch: str) -> Path:
        if arch not in folders:
            where = {"data": [str(data)], "out": str(root / arch), "base_model": f"tiny-{arch}"}
            create_trainer(trainer, {**settings, **where}).train(progress=False)
            folders[arch] = root / arch
        return folders[arch]

    return parts


# ENN: the top layer's MLP weights meta-trained for three steps
ENN_TINY = {"steps": 3, "batch": 2, "layers": 1, "lr": 1e-3, "inner_lr": 0.1, "checkpoint_every": 3}

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
def enn_parts(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """ENN parts for a tiny architecture (``enn_parts("gpt2")``)."""
    return _trained_per_arch(tmp_path_factory, "enn", ENN_TINY)


@pytest.fixture(scope="session")
def ke_parts(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """KE's hypernetwork for a tiny architecture (``ke_parts("gpt2")``)."""
    return _trained_per_arch(tmp_path_factory, "ke", KE_TINY)


# SEPROG: a narrow prompt generator (two prefix embeddings) on the tiny BERT encoder, three steps
SEPROG_TINY = {"encoder": "tiny-bert", "hidden": 8, "prefix_len": 2, "steps": 3, "batch": 2, "checkpoint_every": 3}


@pytest.fixture(scope="session")
def seprog_parts(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """SEPROG's prompt generator for a tiny architecture (``seprog_parts("t5")``)."""
    return _trained_per_arch(tmp_path_factory, "seprog", SEPROG_TINY)


def first_use_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trainer: Any, model: str, settings: dict[str, Any]
) -> list[Path]:
    """Turn first-use training on with a tiny recipe of ``trainer`` (a trainer class) for ``model``, over tiny
    cases under ``$EDITKIT_DATA`` and no packaged parts; the list it returns collects each training's folder."""
    import editkit.trained
    from editkit.training.registry import Recipe

    data = tmp_path / "data"
    data.mkdir()
    write_tiny_cases(data / "cases.jsonl")
    monkeypatch.setenv("EDITKIT_DATA", str(data))
    monkeypatch.setenv(editkit.trained.FIRST_USE_ENV, "1")
    monkeypatch.setattr(editkit.trained, "PACKAGED", tmp_path / "packaged")
    recipe = Recipe(data=("cases.jsonl",), settings=settings, seconds_per_step=0.5, measured="a test")
    monkeypatch.setattr(trainer, "recipes", {model: recipe})
    runs: list[Path] = []
    train = trainer.train

    def counted(self: Any, *, progress: bool = True) -> Any:
        runs.append(Path(self.config.out))
        return train(self, progress=progress)

    monkeypatch.setattr(trainer, "train", counted)
    return runs
