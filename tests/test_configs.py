"""Every run config shipped under ``benchmarks/configs`` loads, passes its checks, names a registered method
whose settings it accepts, and points at data files that exist where the benchmark data is present."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DATA, REPO
from editkit.editors import create_editor
from editkit.evaluation.downstream import get_task
from editkit.evaluation.runner import RunConfig

CONFIGS = sorted((REPO / "benchmarks" / "configs").glob("*.yaml"))


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
