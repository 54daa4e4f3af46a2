"""benchmarks/span_table.py, on results written by hand: which records and checkpoints each cell reads."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import benchmark_script

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "span_table.py"
span_table = benchmark_script("span_table")


def _run(label, efficacy, forgotten, auc, n=3):
    records = [
        {
            "post": {"efficacy": efficacy[i], "paraphrase": 0.5, "neighborhood": 1.0},
            "pre": {"neighborhood": 0.25 * (i + 1)},
        }
        for i in range(n)
    ]

    def checkpoint(k, lost, score):
        sst2 = {"auc": score, "f1": 0.6, "predicted_positive": 0.9}
        return {
            "n_edits": k,
            "succeeded": k,
            "forgotten": lost,
            "forgotten_fraction": lost / k if k else 0.0,
            "downstream": {"sst2": sst2},
            "drift": {"a": 0.1 * k, "b": 0.01 * k},
        }

    checkpoints = [checkpoint(0, 0, 0.9)] + [
        checkpoint(k, f, a) for k, f, a in zip((2, 3), forgotten, auc, strict=True)
    ]
    return {
        "version": 2,
        "protocol": "sequential",
        "method": "m",
        "run": {"label": label},
        "model": "tiny",
        "n_edits": n,
        "case_ids": ["c1", "c2", "c3", "c4"],
        "records": records,
        "checkpoints": checkpoints[: 1 + (n >= 2) + (n >= 3)],
    }


def test_cells_read_the_span_records_and_its_last_checkpoint():
    run = _run("ours", [1.0, 0.0, 1.0], forgotten=(1, 2), auc=(0.8, 0.7))
    other = _run("theirs", [1.0, 1.0, 1.0], forgotten=(0, 1), auc=(0.85, 0.75))
    lines = span_table.table(run, [2, 4], other)
    assert (
        lines[0] == "| ours, tiny (theirs over the same edits) | 1-2 | 3-3 |"
    )  # the second span ends at the last edit
    rows = {cells[0]: cells[1:] for cells in (line.strip("| ").split(" | ") for line in lines[2:])}
    assert rows["new edits: efficacy / paraphrase / neighborhood"][0] == "0.50 / 0.50 / 1.00 (1.00 / 0.50 / 1.00)"
    assert rows["their neighborhood unedited"] == ["0.38", "0.75"]
    assert rows["earlier successful edits forgotten, at the last checkpoint"][1] == "2 of 3 (66.7%) at 3 (1 of 3)"
    assert rows["sst2 AUC there (unedited 0.900)"][0] == "0.800 (0.850)"
    assert rows["drift, summed over the edited weights"][1] == "0.33 (0.33)"


def test_a_run_of_other_cases_or_bad_spans_is_refused(tmp_path):
    run, other = _run("a", [1.0] * 3, (0, 0), (0.9, 0.9)), _run("b", [1.0] * 3, (0, 0), (0.9, 0.9))
    other["case_ids"] = ["c1", "x", "c3", "c4"]
    (tmp_path / "a.json").write_text(json.dumps(run))
    (tmp_path / "b.json").write_text(json.dumps(other))
    for extra in (["--beside", str(tmp_path / "b.json")], ["--spans", "4,2"], ["--spans", "x"]):
        done = subprocess.run(
            [sys.executable, str(SCRIPT), str(tmp_path / "a.json"), *extra], capture_output=True, text=True
        )
        assert done.returncode == 2 and "error" in done.stderr, extra
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "a.json")], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("| a, tiny | 1-3 |")


def test_a_run_before_its_first_checkpoint_shows_dashes():
    lines = span_table.table(_run("a", [1.0], (0, 0), (0.9, 0.9), n=1), [2], None)
    assert "| earlier successful edits forgotten, at the last checkpoint | - |" in lines
