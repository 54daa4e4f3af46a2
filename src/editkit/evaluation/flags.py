"""Disabling edits (forgetting paper, §3.4.1), flagged while a sequential run goes on: a step that moved the
weights far more than the median step before it, or the first checkpoint where mean downstream F1 collapses
(then the step since the previous checkpoint that moved the weights most is named). Flags are appended to the
results' ``disabling_edits``."""

from __future__ import annotations

from statistics import median
from typing import Any

from editkit.evaluation.results import step_drift
from editkit.evaluation.shared import mean_f1


def flag_drift_jump(results: dict[str, Any], factor: float) -> None:
    """Flag the latest step if it moved the weights more than ``factor`` times the median step before it (its
    own drift against the other steps' own drift, where the records have it)."""
    records = results["records"]
    own = "edit_drift" in records[-1]
    sizes = [step_drift(records, i) for i in range(len(records)) if ("edit_drift" in records[i]) == own]
    if len(sizes) < 6:
        return
    typical = median(sizes[:-1])
    if typical > 0 and sizes[-1] > factor * typical:
        what = "its own drift was" if own else "drift jumped"
        results["disabling_edits"].append(
            {
                "n_edits": records[-1]["n_edits"],
                "case_id": records[-1]["case_id"],
                "reason": f"{what} {sizes[-1] / typical:.1f}x the median {'edit' if own else 'increment'}",
            }
        )


def flag_collapse(results: dict[str, Any], baseline: float | None, fraction: float) -> None:
    """Flag the first downstream collapse: the latest checkpoint's mean F1 below ``fraction`` x ``baseline``."""
    ckpt = results["checkpoints"][-1]
    now = mean_f1(ckpt)
    if baseline is None or now is None or now >= fraction * baseline:
        return
    previous = results["checkpoints"][-2]["n_edits"]
    if any(d["reason"].startswith("downstream") for d in results["disabling_edits"]):
        return  # report the first collapse only
    records = results["records"]
    window = [i for i, r in enumerate(records) if r["n_edits"] > previous]
    suspect = records[max(window, key=lambda i: step_drift(records, i))]
    results["disabling_edits"].append(
        {
            "n_edits": suspect["n_edits"],
            "case_id": suspect["case_id"],
            "reason": f"downstream F1 fell to {now:.2f} from {baseline:.2f} between edits {previous} and "
            f"{ckpt['n_edits']}; this edit moved the weights most in that window",
        }
    )
