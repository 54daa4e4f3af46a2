"""Every config shipped under ``benchmarks/configs`` loads and passes its checks: run configs name a registered
method whose settings they accept, training configs (``train_*.yaml``) are valid training settings, and all point
at data files that exist where the benchmark data is present."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DATA, REPO
from editkit.configfile import read_yaml
from editkit.editors import create_editor
from editkit.errors import ConfigError
from editkit.evaluation.downstream import get_task
from editkit.evaluation.runner import RunConfig, matrix_configs
from editkit.training.loop import data_entry
from editkit.training.registry import get_trainer_class

SHIPPED = sorted((REPO / "benchmarks" / "configs").glob("*.yaml"))
TRAINING = [p for p in SHIPPED if p.name.startswith("train_")]
MATRICES = [p for p in SHIPPED if p.name.startswith("matrix_")]
SWEEPS = [p for p in SHIPPED if p.name.startswith("sweep_")]
CONFIGS = [p for p in SHIPPED if p not in TRAINING and p not in MATRICES and p not in SWEEPS]


def test_there_are_shipped_configs():
    assert CONFIGS, "benchmarks/configs holds no run configs"


def _check(path: Path, config: RunConfig) -> None:
    # a corpus path is checked by the method's config when it is built: where the benchmark data is absent,
    # any existing file stands in for it (AlphaEdit cannot be built without one)
    settings = dict(config.settings)
    if "corpus" in settings and not DATA.is_dir():
        settings["corpus"] = __file__
    editor = create_editor(config.method, settings)
    assert editor.name == config.method
    for task in config.downstream:
        get_task(task)
    if not DATA.is_dir():
        return  # benchmark data not available: only the settings are checked
    # config paths are relative to the repository root, with shared/ beside it
    for rel in (config.data, config.downstream_data, config.settings.get("corpus")):
        if rel:
            assert (REPO / rel).exists(), f"{path.name}: {rel} does not exist"
    for task in config.downstream:
        assert (REPO / str(config.downstream_data) / f"{task}.jsonl").is_file()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_is_valid(path: Path):
    _check(path, RunConfig.build(str(path)))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_shipped_sweep_is_valid(path: Path, monkeypatch: pytest.MonkeyPatch):
    from editkit.sweep.grid import expand, load_sweep

    if not DATA.is_dir():
        pytest.skip("benchmark data not available: a sweep reads its data file to plan its shards")
    monkeypatch.chdir(REPO)  # its paths are relative to the repository root
    runs = expand(load_sweep(path))
    assert len({r.config.out for r in runs}) == len(runs), "two runs of the sweep write the same file"
    for run in runs:
        _check(path, run.config)


@pytest.mark.parametrize("path", MATRICES, ids=[p.name for p in MATRICES])
def test_shipped_matrix_is_valid(path: Path):
    configs = matrix_configs(path)
    assert len({c.out for c in configs}) == len(configs), "two runs of the matrix write the same file"
    for config in configs:
        _check(path, config)


def test_matrix_limits_and_errors(tmp_path: Path):
    path = tmp_path / "m.yaml"
    path.write_text(
        "out_dir: out\nedits_per_step: [10]\ndatasets: {a: {data: x.json, limit: 100, format: zsre-tf}}\n"
        "runs: [{label: l1, method: ft, limit: 20, edits_per_step: [1, 5]}, {label: l2, method: rome}]\n"
    )
    first, second = matrix_configs(path)
    assert (first.limit, first.edits_per_step, first.out, first.label) == (20, [1, 5], "out/a_l1.json", "l1")
    assert (second.limit, second.edits_per_step, second.method) == (100, [10], "rome")
    assert first.format == second.format == "zsre-tf"
    path.write_text("out_dir: out\ndatasets: {a: {data: x.json}}\nruns: [{label: l1, method: ft, k: 3}]\n")
    with pytest.raises(ConfigError, match=r"unknown: \['k'\]"):
        matrix_configs(path)


def test_run_config_takes_lists_as_text_and_merges_settings(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "data: x.json\nout: r.json\nprotocol: sequential\nedits_per_step: 5\nsettings: {lr: 0.1}\n"
        "guard: {drift_factor: 5}\n"
    )
    config = RunConfig.build(str(path), downstream="sst2, mrpc", downstream_data="glue")
    assert (config.edits_per_step, config.downstream) == ([5], ["sst2", "mrpc"])
    merged = RunConfig.build(str(path), settings={"steps": 2}, guard={"canary_n": 8})
    assert merged.settings == {"lr": 0.1, "steps": 2} and merged.guard == {"drift_factor": 5, "canary_n": 8}
    assert RunConfig.build(str(path), protocol=None).protocol == "sequential"  # None: not given
    assert RunConfig.build(str(path), every="7", limit="10").to_dict()["every"] == 7


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("protocl: batch", r"no setting 'protocl'\. Did you mean 'protocol'\?"),
        ("limit: many", r"RunConfig\.limit: 'many'"),
        ("every: 2.5", r"RunConfig\.every: expected an integer"),
        ("label: [a, b]", r"RunConfig\.label"),
        ("protocol: stream", r"RunConfig\.protocol: 'stream' is not one of \['batch', 'sequential'\]"),
        ("edits_per_step: 1,x", r"RunConfig\.edits_per_step: expected int, got 'x'"),
        ("settings: [lr]", r"RunConfig\.settings: expected a mapping"),
        ("distinct_subjects: maybe", r"RunConfig\.distinct_subjects: expected true/false"),
    ],
)
def test_run_config_errors_name_the_setting(tmp_path: Path, yaml: str, message: str):
    path = tmp_path / "run.yaml"
    path.write_text(f"data: x.json\nout: r.json\n{yaml}\n")
    with pytest.raises(ConfigError, match=message):
        RunConfig.build(str(path))


@pytest.mark.parametrize("path", TRAINING, ids=[p.name for p in TRAINING])
def test_shipped_training_config_is_valid(path: Path):
    # train_NAME.yaml (or train_NAME_VARIANT.yaml) is trainer NAME's
    trainer = get_trainer_class(path.stem.removeprefix("train_").split("_")[0])
    config = trainer.config_cls.from_dict(read_yaml(path))
    assert config.data and config.out
    if not DATA.is_dir():
        pytest.skip(f"benchmark data {DATA} not available")
    for entry in config.data:
        rel, _ = data_entry(entry)  # FORMAT:PATH names a format
        assert (REPO / rel).is_file(), f"{path.name}: {rel} does not exist"
