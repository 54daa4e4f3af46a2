"""benchmarks/same_cases.py: committed single-edit runs compared on the cases they share."""

import json
from pathlib import Path

import pytest

from conftest import benchmark_script
from editkit.errors import ValidationError

RESULTS = Path(__file__).parents[1] / "benchmarks" / "results"
same_cases = benchmark_script("same_cases")


def test_runs_are_compared_on_their_common_first_cases():
    table = same_cases.compare([RESULTS / "rome_smollm2_cf100.json", RESULTS / "rome-l5_smollm2_cf40.json"])
    assert table["n_cases"] == 40
    full = json.loads((RESULTS / "rome-l5_smollm2_cf40.json").read_text())["aggregates"]
    layer5 = table["runs"][1]
    assert layer5["label"] == "rome (layer 5)"
    for kind in ("efficacy", "paraphrase", "neighborhood"):
        assert layer5[kind] == pytest.approx(full[kind])  # all 40 of its cases: its own aggregate
    committed = json.loads((RESULTS / "rome_layers_smollm2_cf40.json").read_text())
    for mine, theirs in zip(table["runs"], committed["runs"], strict=True):
        assert {k: v for k, v in mine.items() if k != "path"} == {k: v for k, v in theirs.items() if k != "path"}


def test_runs_on_other_cases_are_refused(tmp_path):
    run = json.loads((RESULTS / "kn_smollm2_cf20.json").read_text())
    run["case_ids"] = list(reversed(run["case_ids"]))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(run))
    with pytest.raises(ValidationError, match="same cases"):
        same_cases.compare([RESULTS / "kn_smollm2_cf20.json", other])
