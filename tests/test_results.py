"""The results format: every committed results file loads through load_results (migrated to the current version),
files of unknown or newer versions are one-line errors, and older files' gaps are filled in one place."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from editkit.errors import ValidationError
from editkit.evaluation.results import (
    RESULTS_VERSION,
    load_results,
    saved_state_files,
    state_files,
    step_drift,
)

RESULTS = Path(__file__).parents[1] / "benchmarks" / "results"
COMMITTED = sorted(RESULTS.rglob("*.json"))


def _is_results(path: Path) -> bool:
    """An editkit run's results, as opposed to a benchmark script's own output (which names no protocol)."""
    data = json.loads(path.read_text())
    return isinstance(data, dict) and "protocol" in data


def test_the_committed_results_are_there():
    assert sum(_is_results(p) for p in COMMITTED) >= 40
    assert any(json.loads(p.read_text()).get("version") == 1 for p in COMMITTED)  # the migration has work to do


@pytest.mark.parametrize("path", COMMITTED, ids=[str(p.relative_to(RESULTS)) for p in COMMITTED])
def test_every_committed_results_file_loads_migrated_to_the_current_version(path):
    if not _is_results(path):
        with pytest.raises(ValidationError, match="not an editkit results file"):
            load_results(path)
        return
    run = load_results(path)
    assert run["version"] == RESULTS_VERSION and run["protocol"] in ("batch", "sequential")
    assert len(run["case_ids"]) == run["n_cases"] or run["protocol"] == "sequential"
    if run["protocol"] == "batch":
        assert {str(k) for k in run["ks"]} == set(run["aggregates_by_k"])
        assert all("k" in r and "group" in r and "info" not in r for r in run["records"])
        assert {(r["k"], r["group"]) for r in run["records"]} == {(g["k"], g["group"]) for g in run["groups"]}
    else:
        assert "total_seconds" in run and isinstance(run["rejected_edits"], list)
        assert all(math.isfinite(step_drift(run["records"], i)) for i in range(len(run["records"])))


def test_a_version_1_file_is_a_batch_run_of_one_edit_per_group(tmp_path):
    old = {
        "version": 1,
        "protocol": "independent",
        "model": "m",
        "method": "rome",
        "n_cases": 2,
        "aggregates": {"efficacy": 0.5, "unedited_efficacy": 0.0, "seconds_per_edit": 2.0},
        "records": [
            {"case_id": "a", "pre": {"efficacy": 0.0}, "post": {"efficacy": 1.0}, "edit_seconds": 1.0},
            {"case_id": "b", "pre": {"efficacy": 0.0}, "post": {"efficacy": 0.0}, "edit_seconds": 3.0},
        ],
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    run = load_results(path)
    assert run["version"] == RESULTS_VERSION and run["protocol"] == "batch" and run["ks"] == [1]
    assert run["case_ids"] == ["a", "b"] and [(r["k"], r["group"]) for r in run["records"]] == [(1, 0), (1, 1)]
    assert run["groups"] == [
        {"k": 1, "group": 0, "edit_seconds": 1.0, "info": {}},
        {"k": 1, "group": 1, "edit_seconds": 3.0, "info": {}},
    ]
    assert run["aggregates_by_k"] == {"1": {"efficacy": 0.5, "seconds_per_edit": 2.0, "n_cases": 2}}
    assert run["aggregates"] == old["aggregates"]
    assert json.loads(path.read_text()) == old  # the file itself is never rewritten


def test_a_version_2_batch_file_keeps_each_groups_info_once(tmp_path):
    info = {"steps": [3, 5], "layers": [2, 3]}
    records = [
        {"case_id": c, "k": 2, "group": 0, "pre": {}, "post": {}, "edit_seconds": 1.5, "info": info} for c in "ab"
    ]
    old = {"version": 2, "protocol": "batch", "aggregates": {"efficacy": 1.0}, "records": records}
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(old))
    run = load_results(path)
    assert run["groups"] == [{"k": 2, "group": 0, "edit_seconds": 3.0, "info": info}]
    assert [r["case_id"] for r in run["records"]] == ["a", "b"] and all("info" not in r for r in run["records"])
    sequential = {"version": 2, "protocol": "sequential", "records": [{"n_edits": 1, "info": info}], "checkpoints": []}
    path.write_text(json.dumps(sequential))
    assert load_results(path)["records"][0]["info"] == info  # a sequential record is one edit's: kept


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"version": 4, "protocol": "batch", "aggregates": {}}, "version 4, newer than this editkit reads"),
        ({"version": "2", "protocol": "batch", "aggregates": {}}, "unknown results version '2'"),
        ({"protocol": "batch", "aggregates": {}}, "unknown results version None"),
        ({"version": 1, "protocol": "sequential", "records": []}, "results version 1 has no protocol 'sequential'"),
        ({"version": 2, "protocol": "batch"}, "not an editkit results file"),
        ({"version": 2, "protocol": "sequential", "records": []}, "without records or checkpoints"),
        ([1, 2], "not an editkit results file"),
    ],
)
def test_unreadable_results_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValidationError, match=message) as err:
        load_results(path)
    assert "\n" not in str(err.value)


def test_missing_or_broken_files_are_one_line_errors(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        load_results(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValidationError, match="not valid JSON"):
        load_results(tmp_path / "bad.json")


def test_older_sequential_results_are_completed_and_step_drift_reads_either_record(tmp_path):
    records = [
        {"n_edits": 1, "drift": 0.5},
        {"n_edits": 2, "drift": 0.75},
        {"n_edits": 3, "drift": 1.0, "edit_drift": 2.0},
    ]
    old = {"version": 2, "protocol": "sequential", "seconds": 12.5, "records": records, "checkpoints": []}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(old))
    run = load_results(path)
    assert run["total_seconds"] == 12.5 and run["rejected_edits"] == []  # the steps' time; no guard, no rejections
    assert [step_drift(run["records"], i) for i in range(3)] == [0.5, 0.25, 2.0]
    kept = {**old, "version": RESULTS_VERSION, "total_seconds": 40.0, "rejected_edits": [{"n_edits": 2}]}
    path.write_text(json.dumps(kept))
    assert load_results(path) == kept  # what a current run writes comes back as it is


def test_a_state_folder_names_its_files_by_edit_count_or_as_older_folders_did(tmp_path):
    names = ["weights-7.safetensors", "editor-7.safetensors", "weights-7.json"]
    assert [p.name for p in state_files(tmp_path, 7)] == names
    assert saved_state_files(tmp_path, 7) == state_files(tmp_path, 7)  # an empty folder: today's names
    (tmp_path / "weights.json").write_text("{}")
    older = ["weights.safetensors", "editor.safetensors", "weights.json"]
    assert [p.name for p in saved_state_files(tmp_path, 7)] == older
    (tmp_path / "weights-7.json").write_text("{}")
    assert saved_state_files(tmp_path, 7) == state_files(tmp_path, 7)
