"""benchmarks/replay_check.py on a tiny ROME run: a faithful replay reads zero difference, a record that does not
match its edit is named."""

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import benchmark_script
from editkit.data import demo_cases
from editkit.data.formats import editkit_record
from editkit.editors import create_editor
from editkit.evaluation.sequential import sequential_edits
from editkit.models.tiny import tiny_model

replay_check = benchmark_script("replay_check")


def _check(monkeypatch, results: Path, out: Path, *extra: str) -> dict:
    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", ["replay_check.py", str(results), "--out", str(out), *extra])
    try:
        replay_check.main()
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text())


def test_replay_check_reads_the_records_difference_from_the_replayed_edits(tmp_path, tiny_corpus, monkeypatch):
    settings = {"v_steps": 3, "n_context": 2, "context_length": 4, "corpus": str(tiny_corpus), "mom2_n_tokens": 2000}
    threads = torch.get_num_threads()
    run = sequential_edits(
        tiny_model("llama"), create_editor("rome", settings), demo_cases()[:3], every=3, progress=False
    )
    torch.set_num_threads(threads)
    # the run's cases come from its data file: results name them by id only
    data = tmp_path / "cases.jsonl"
    data.write_text("".join(json.dumps(editkit_record(c)) + "\n" for c in demo_cases()[:3]))
    run["run"] = {"method": "rome", "model": "tiny-llama", "settings": settings, "data": str(data), "limit": None}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(run))
    faithful = _check(monkeypatch, path, tmp_path / "a.json", "--threads", str(threads))
    assert faithful["summary"]["edits"] == 3 and faithful["summary"]["over_limit"] == []
    assert faithful["summary"]["largest_relative"] < 1e-6
    assert [e["recorded"] for e in faithful["edits"]] == [r["edit_drift"] for r in run["records"]]

    run["records"][1]["edit_drift"] *= 1.01  # a record that another edit made
    path.write_text(json.dumps(run))
    off = _check(monkeypatch, path, tmp_path / "b.json", "--limit", "2")
    assert off["summary"]["edits"] == 2 and off["summary"]["over_limit"] == [2]
    assert off["edits"][1]["relative"] == pytest.approx(0.01 / 1.01, rel=1e-3)

    data.write_text("".join(json.dumps(editkit_record(c)) + "\n" for c in demo_cases()[3:5]))
    with pytest.raises(SystemExit, match="lacks the run's cases"):
        _check(monkeypatch, path, tmp_path / "e.json")

    del run["run"]  # a run in progress: its config file says how it is made, and must name its method
    path.write_text(json.dumps(run))
    with pytest.raises(SystemExit, match="give its config"):
        _check(monkeypatch, path, tmp_path / "c.json")
    config = tmp_path / "run.yaml"
    config.write_text("model: tiny-llama\nmethod: memit\ndata: cases.json\nprotocol: sequential\nout: r.json\n")
    with pytest.raises(SystemExit, match="configures memit edits, not the run's rome"):
        _check(monkeypatch, path, tmp_path / "d.json", "--config", str(config))
