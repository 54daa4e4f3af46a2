"""Every config shipped under ``benchmarks/configs`` loads and passes its checks: run configs name a registered
method whose settings they accept, training configs (``train_*.yaml``) are valid training settings, and all point
at data files that exist where the benchmark data is present."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DATA, REPO
from editkit.configfile import read_yaml
from editkit.editors import create_editor
from editkit.evaluation.downstream import get_task
from editkit.evaluation.runner import RunConfig
from editkit.training.serac import SERACTrainConfig

CONFIGS = sorted(p for p in (REPO / "benchmarks" / "configs").glob("*.yaml") if not p.name.startswith("train_"))
TRAINING = sorted((REPO / "benchmarks" / "configs").glob("train_*.yaml"))


def test_there_are_shipped_configs():
    assert CONFIGS, "benchmarks/configs holds no run configs"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_is_valid(path: Path):
    config = RunConfig.build(str(path))
    editor = create_editor(config.method, config.settings)
    assert editor.name == config.method
    for task in config.downstream:
        get_task(task)
    if not DATA.is_dir():
        pytest.skip(f"benchmark data {DATA} not available")
    # config paths are relative to the repository root, with shared/ beside it
    for rel in (config.data, config.downstream_data, config.settings.get("corpus")):
        if rel:
            assert (REPO / rel).exists(), f"{path.name}: {rel} does not exist"
    for task in config.downstream:
        assert (REPO / str(config.downstream_data) / f"{task}.jsonl").is_file()


@pytest.mark.parametrize("path", TRAINING, ids=[p.name for p in TRAINING])
def test_shipped_training_config_is_valid(path: Path):
    config = SERACTrainConfig.from_dict(read_yaml(path))
    assert config.data and config.out
    if not DATA.is_dir():
        pytest.skip(f"benchmark data {DATA} not available")
    for rel in config.data:
        assert (REPO / rel).is_file(), f"{path.name}: {rel} does not exist"
