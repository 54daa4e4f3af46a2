"""editkit sweep: the grid's expansion and its errors, and runs on one local Ray (two CPUs, started once for the
module) on a tiny random model: a batch run sharded by case range merges into the results of one process."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import write_tiny_cases
from editkit.cli import main
from editkit.evaluation.results import RESULTS_VERSION
from editkit.evaluation.runner import RunConfig, run
from editkit.sweep import execute as execute_module
from editkit.sweep.execute import execute, progress_lines, status_of
from editkit.sweep.grid import expand, load_sweep

# keys that hold times, memory or where a run ran: they differ between any two runs
TIMING = {"total_seconds", "peak_memory_mb", "environment", "edit_seconds", "seconds_per_edit", "seconds"}


def _sweep_file(tmp_path: Path, **grid: Any) -> Path:
    cases = write_tiny_cases(tmp_path / "cases.jsonl")
    spec = {
        "out_dir": str(tmp_path / "out"),
        "data": str(cases),
        "models": ["tiny-llama"],
        "methods": [{"label": "ft3", "method": "ft", "settings": {"steps": 3}}],
        **grid,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _without(value: Any, keys: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


def test_neither_import_editkit_nor_the_cli_imports_ray():
    code = "import sys, editkit.cli, editkit.sweep.grid\neditkit.cli.build_parser()\nprint('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_dry_run_prints_every_run_of_the_grid_and_its_shards(tmp_path, capsys):
    path = _sweep_file(
        tmp_path,
        methods=["ft", {"label": "ft3", "method": "ft", "settings": {"steps": 3}}],
        orderings=[None, 7],
        protocols=["batch", "sequential"],
        shards=2,
        batch={"edits_per_step": [1, 2]},
    )
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("8 runs, 12 tasks")
    assert "ft3_tiny-llama_shuffle7_seed0_batch: ft on tiny-llama, 6 cases (shuffle 7), seed 0, batch" in out
    assert "0:4, 4:6 -> " in out  # cut at a multiple of k = 2
    assert "one task (sequential: its state folder resumes it)" in out
    assert out.count("(not started)") == 8
    assert not (tmp_path / "out").exists()


def test_a_method_may_read_the_data_in_its_own_format(tmp_path):
    from editkit.sweep.grid import expand, load_sweep

    methods = [{"label": "native", "method": "ft", "format": "editkit"}, "ft-c"]
    runs = expand(load_sweep(_sweep_file(tmp_path, methods=methods)))  # the sweep's format: detected
    assert [(r.name.split("_")[0], r.config.format, r.n_cases) for r in runs] == [
        ("native", "editkit", 6),
        ("ft-c", None, 6),
    ]


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"methods": ["ft", "nosuch"]}, "unknown method 'nosuch'"),
        ({"methods": []}, "the grid is empty: 'methods' has no entries"),
        ({"data": "/nowhere/cases.json"}, "data file /nowhere/cases.json does not exist"),
        ({"models": ["tiny-nosuch"]}, "tiny-nosuch"),
        ({"orderngs": [1]}, "Did you mean 'orderings'"),
        ({"methods": ["ft", {"label": "ft", "method": "ft-c"}]}, "label 'ft' is used twice"),
        ({"run": {"limit": 3}}, "set by the sweep's grid"),
        ({"batch": {"every": 0}}, "must be positive"),
        ({"methods": [{"method": "ft", "format": "nosuch"}]}, "nosuch"),
        ({"methods": [{"method": "ft", "setings": {"steps": 3}}]}, "{label, method, settings, format} mapping"),
    ],
)
def test_a_bad_grid_is_one_line_before_anything_runs(tmp_path, capsys, grid, message):
    path = _sweep_file(tmp_path, **grid)
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("editkit: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    ray = pytest.importorskip("ray")
    cache = tmp_path_factory.mktemp("ray-cache")
    env = {"env_vars": {"EDITKIT_CACHE": str(cache)}}
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=env)
    yield
    ray.shutdown()


def test_an_unreachable_cluster_is_one_line_that_names_the_token_setting(tmp_path, capsys, monkeypatch):
    import ray

    def refuse(**kwargs: Any) -> None:
        raise ConnectionError(f"Failed to connect to Ray cluster at {kwargs['address']}\nmore")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    assert main(["sweep", str(_sweep_file(tmp_path)), "--address", "10.0.0.9:6379"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "could not reach the Ray cluster at 10.0.0.9:6379: Failed to connect to Ray cluster at 10.0.0.9:6379" in err
    assert "RAY_AUTH_MODE=token" in err


def test_a_sharded_batch_run_merges_into_the_results_of_one_process(local_ray, tmp_path, capsys):
    path = _sweep_file(
        tmp_path,
        orderings=[1],
        protocols=["batch", "sequential"],
        shards=2,
        batch={"edits_per_step": [1, 2]},
        sequential={"every": 3},
    )
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    assert "[0:4]: done" in out and "[4:6]: done" in out and "2 shards merged" in out
    folder = tmp_path / "out"
    merged = json.loads((folder / "ft3_tiny-llama_shuffle1_seed0_batch.json").read_text())
    assert [s["case_range"] for s in merged["shards"]] == ["0:4", "4:6"]

    config = RunConfig.from_dict({**merged["run"], "out": str(tmp_path / "single.json")})
    single = json.loads(json.dumps(run(config, progress=False)))
    provenance = {k: merged[k] for k in ("run", "shards")}
    assert _without(merged, TIMING | set(provenance)) == _without(single, TIMING | {"run"})
    assert {**merged["run"], "out": None} == {**single["run"], "out": None}
    assert [r["group"] for r in merged["records"] if r["k"] == 2] == [0, 0, 1, 1, 2, 2]
    file_order = [f"tiny-{i}" for i in range(6)]
    assert sorted(merged["case_ids"]) == file_order and merged["case_ids"] != file_order  # shuffled

    sequential = json.loads((folder / "ft3_tiny-llama_shuffle1_seed0_sequential.json").read_text())
    assert sequential["n_edits"] == 6 and sequential["case_ids"] == merged["case_ids"]
    assert (folder / "ft3_tiny-llama_shuffle1_seed0_sequential.state" / "results.json").is_file()

    # run again: nothing is done twice; a lost merged file is merged again from its shards, without a task
    (folder / "ft3_tiny-llama_shuffle1_seed0_batch.json").unlink()
    sweep = load_sweep(path)
    (batch_run,) = [r for r in expand(sweep) if r.config.protocol == "batch"]
    assert status_of(batch_run, None) == "2 of 2 shards done"
    events: list[str] = []
    outcome = execute(sweep, expand(sweep), on_event=events.append)
    assert outcome.skipped == ["ft3_tiny-llama_shuffle1_seed0_sequential"] and not outcome.failed
    assert not [e for e in events if "done in" in e]
    again = json.loads((folder / "ft3_tiny-llama_shuffle1_seed0_batch.json").read_text())
    assert again == merged


def test_a_run_that_keeps_its_residuals_has_them_optimised_in_parts_first(local_ray, tmp_path, capsys, monkeypatch):
    """MEMIT with residual_cache and shards 2: two tasks optimise half of the residuals each, then the run's
    task reads them and scores as one process without the folder does."""
    subjects = ["The Eiffel Tower", "The Louvre", "Big Ben", "The Colosseum"]
    data = tmp_path / "cf.json"
    record = {"target_new": "Rome", "ground_truth": "Paris", "locality_ground_truth": "Paris"}
    data.write_text(
        json.dumps(
            [
                {**record, "case_id": i, "subject": s, "prompt": f"{s} is located in"}
                | {"rephrase_prompt": f"Where is {s}? It is in", "locality_prompt": "The Louvre is located in"}
                for i, s in enumerate(subjects)
            ]
        )
    )
    fast = {"v_steps": 4, "n_context": 1, "context_length": 3, "mom2_update_weight": 1.0, "v_batch": 1}
    folder = tmp_path / "z"
    kept = {"label": "memit", "method": "memit", "settings": {**fast, "residual_cache": str(folder)}}
    grid = {"data": str(data), "methods": [kept], "shards": 2, "batch": {"edits_per_step": [4]}}
    path = _sweep_file(tmp_path, **grid, run_threads=3)
    assert main(["sweep", str(path)]) == 2  # the local Ray of two CPUs has no node for a task of three
    assert "asks for 3 CPUs" in capsys.readouterr().err
    path = _sweep_file(tmp_path, **grid, run_threads=2)
    assert main(["sweep", str(path), "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert dry.startswith("1 runs, 3 tasks") and "one task (its residuals in 2 tasks first; 2 threads)" in dry
    folder.mkdir()
    (folder / "another-run.safetensors").write_bytes(b"")  # a run sharing the folder: not counted as this run's
    monkeypatch.setattr(execute_module, "PROGRESS_SECONDS", 0.05)
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    name = "memit_tiny-llama_file_seed0_batch"
    assert re.search(rf"^{name}: [1-4] of 4 residuals kept$", out, re.MULTILINE)  # said while its tasks ran
    assert not re.search(rf"^{name}: [5-9] of", out, re.MULTILINE)
    assert f"{name} [residuals 1/2]: done" in out and f"{name} [residuals 2/2]: done" in out
    assert out.index(f"{name} [residuals 2/2]: done") < out.index(f"{name}: done in")  # the run waited for both
    assert len(list(folder.iterdir())) == 5
    results = json.loads((tmp_path / "out" / f"{name}.json").read_text())
    assert results["run"]["threads"] == 2  # the run's task took both cores once its parts were done
    alone = RunConfig.from_dict({**results["run"], "settings": fast, "out": str(tmp_path / "alone.json")})
    assert [r["post"] for r in results["records"]] == [r["post"] for r in run(alone, progress=False)["records"]]


def test_a_run_whose_state_was_lost_resumes_from_its_committed_snapshot(
    local_ray, tmp_path, tiny_corpus, capsys, monkeypatch
):
    from importlib import resources

    from editkit.editors.rome import ROME
    from editkit.sweep.grid import expand, load_sweep

    settings = {"v_steps": 4, "n_context": 2, "context_length": 4, "corpus": str(tiny_corpus), "mom2_n_tokens": 2000}
    with resources.as_file(resources.files("editkit.data").joinpath("demo_edits.jsonl")) as demo:
        spec = {
            "out_dir": str(tmp_path / "out"),
            "state_dir": str(tmp_path / "cache"),
            "snapshot_dir": str(tmp_path / "snapshots"),
            "data": str(demo),
            "limit": 4,
            "models": ["tiny-llama"],
            "methods": [{"label": "rome", "method": "rome", "settings": settings}],
            "protocols": ["sequential"],
            "sequential": {"every": 2},
        }
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(spec))
        (only,) = expand(load_sweep(path))
        state = Path(only.config.state or "")
        snapshot = tmp_path / "snapshots" / f"{only.name}.json"
        whole = run(RunConfig.from_dict({**only.config.to_dict(), "out": str(tmp_path / "whole.json"), "state": None}))

        real_apply, calls = ROME.apply, []

        def stopped(self, lm, requests):  # the machine goes away before the third edit
            if len(calls) == 2:
                raise KeyboardInterrupt
            calls.append(1)
            return real_apply(self, lm, requests)

        ROME.apply = stopped  # type: ignore[method-assign]
        try:
            with pytest.raises(KeyboardInterrupt):
                run(only.config, progress=False)
        finally:
            ROME.apply = real_apply  # type: ignore[method-assign]
        assert main(["sweep", str(path), "--snapshot"]) == 0
        assert f"{only.name}: 2 edits -> {snapshot}" in capsys.readouterr().out
        assert json.loads(snapshot.read_text()) == json.loads((state / "results.json").read_text())

        assert main(["sweep", str(path), "--dry-run"]) == 0
        assert "(2 of 4 edits, in its state)" in capsys.readouterr().out
        shutil.rmtree(state)  # the cache is lost with its machine; the snapshot was committed
        assert main(["sweep", str(path), "--dry-run"]) == 0
        assert "(2 of 4 edits, in its snapshot (resumes by replay))" in capsys.readouterr().out
        monkeypatch.setattr(execute_module, "PROGRESS_SECONDS", 0.05)
        assert main(["sweep", str(path)]) == 0
        out = capsys.readouterr().out
        assert f"{only.name}: resumes from {snapshot} (2 edits, replayed from records)" in out
        # while the task runs, the sweep says how far it has come (the seeded state says 2 at first)
        assert re.search(rf"^{only.name}: [234] of 4 edits$", out, re.MULTILINE)
    resumed = json.loads(Path(only.config.out).read_text())
    assert [(r["n_edits"], r["from"]) for r in resumed["resumes"]] == [(2, "records")]
    assert [r["case_id"] for r in resumed["records"]] == [r["case_id"] for r in whole["records"]]
    for a, b in zip(resumed["records"], whole["records"], strict=True):
        assert a["post"] == pytest.approx(b["post"], abs=1e-4)

    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert f"{only.name}.json (done)" in capsys.readouterr().out
    assert main(["sweep", str(path), "--snapshot"]) == 0  # finished: its results file replaces the snapshot
    assert f"{only.name}: finished, snapshot {snapshot} removed" in capsys.readouterr().out
    assert not snapshot.exists()


def test_progress_names_each_running_run_once_per_change(tmp_path):
    state = tmp_path / "run.state"
    base = {"method": "ft", "data": "x.jsonl", "out": "x.json"}
    config = RunConfig.from_dict({**base, "protocol": "sequential", "state": str(state)})
    batch = RunConfig.from_dict(base)
    running, seen = [("seq", config), ("batch", batch)], {}
    assert progress_lines(running, seen) == []  # nothing saved yet
    state.mkdir()
    (state / "results.json").write_text(json.dumps({"n_edits": 3, "n_cases": 10}))
    assert progress_lines(running, seen) == ["seq: 3 of 10 edits"]
    assert progress_lines(running, seen) == []  # not moved since
    (state / "results.json").write_text(json.dumps({"n_edits": 4, "n_cases": 10}))
    assert progress_lines(running, seen) == ["seq: 4 of 10 edits"]
    folder = tmp_path / "z"
    memit = RunConfig.from_dict({**base, "method": "memit", "settings": {"residual_cache": str(folder)}})
    files = {"memit": [folder / "a.safetensors", folder / "b.safetensors"]}
    parts = [("memit", memit), ("memit", memit)]  # a run's parts and its own task
    assert progress_lines(parts, seen, files) == []  # no folder yet
    folder.mkdir()
    (folder / "other-run.safetensors").write_bytes(b"")  # a run sharing the folder: not this run's
    assert progress_lines(parts, seen, files) == []
    (folder / "a.safetensors").write_bytes(b"")
    assert progress_lines(parts, seen, files) == ["memit: 1 of 2 residuals kept"]  # once per change
    assert progress_lines(parts, seen, files) == []


def test_snapshots_keep_the_furthest_and_refuse_what_cannot_be_replayed(tmp_path, capsys):
    from editkit.sweep.grid import expand, load_sweep
    from editkit.sweep.snapshot import seed_from_snapshots

    path = _sweep_file(tmp_path, protocols=["sequential"], snapshot_dir=str(tmp_path / "snap"))
    (only,) = expand(load_sweep(path))
    results = Path(only.config.state or "") / "results.json"
    snapshot = tmp_path / "snap" / f"{only.name}.json"
    partial = {"version": RESULTS_VERSION, "protocol": "sequential", "n_edits": 2, "checkpoints": []}
    partial["records"] = [{"case_id": "tiny-0"}]
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps(partial))
    snapshot.parent.mkdir()
    snapshot.write_text(json.dumps({**partial, "n_edits": 4}))
    assert main(["sweep", str(path), "--snapshot"]) == 0
    assert "is further along" in capsys.readouterr().out and json.loads(snapshot.read_text())["n_edits"] == 4

    results.unlink()  # FT keeps no replay in its records: its snapshot cannot rebuild the weights
    assert seed_from_snapshots([only], tmp_path / "snap") == [
        f"{only.name}: {snapshot}'s records cannot rebuild the weights (no replay); the run starts afresh"
    ]
    assert not results.exists()
    (tmp_path / "other").mkdir()
    no_dir = _sweep_file(tmp_path / "other", protocols=["sequential"])
    assert main(["sweep", str(no_dir), "--snapshot"]) == 2
    assert "names no snapshot_dir" in capsys.readouterr().err


def test_a_run_that_fails_is_reported_and_the_sweep_goes_on(local_ray, tmp_path, capsys):
    path = _sweep_file(tmp_path, methods=["rome", {"label": "ft3", "method": "ft", "settings": {"steps": 3}}])
    assert main(["sweep", str(path)]) == 1
    captured = capsys.readouterr()
    assert "1 runs finished, 0 done before, 1 failed" in captured.out
    assert "editkit: run rome_tiny-llama_file_seed0_batch failed: rome needs a subject in every edit" in captured.err
    assert (tmp_path / "out" / "ft3_tiny-llama_file_seed0_batch.json").is_file()


@pytest.mark.real_model
def test_a_reference_is_the_same_whatever_the_order_of_the_cases(smollm2):
    """Runs of one sweep in several case orderings share the cached reference (keyed by the set of probes), so
    its values must not depend on the order the run that built it read the cases in."""
    import random

    import torch

    from conftest import data_file
    from editkit.data.formats import load_cases
    from editkit.evaluation.metrics import Reference

    cases = load_cases(data_file("counterfact/canonical_schema_subsets/counterfact_portability_gpt4.json"), limit=20)
    shuffled = list(cases.cases)
    random.Random(1).shuffle(shuffled)
    first, second = Reference.build(smollm2, cases.cases), Reference.build(smollm2, shuffled)
    assert first.predictions == second.predictions
    assert all(torch.equal(first.distributions[k], second.distributions[k]) for k in first.distributions)


def test_a_sweep_with_nothing_left_to_run_asks_ray_nothing(tmp_path, monkeypatch):
    """Every run done before: no task, so no question to Ray (a driver without a Ray could not answer)."""
    ray = pytest.importorskip("ray")

    def not_started() -> None:
        raise RuntimeError("Ray has not been started yet")

    monkeypatch.setattr(ray, "nodes", not_started)
    outcome = execute(load_sweep(_sweep_file(tmp_path)), [])
    assert outcome.finished == [] and outcome.failed == []
