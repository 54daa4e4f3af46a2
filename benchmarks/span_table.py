"""The span tables of docs/benchmarks.md's long sequential runs: per span of edits, the new edits' scores, and at
the span's last checkpoint the forgotten share of earlier edits, downstream scores and drift; optionally beside
another run over the same cases (in parentheses).

    python benchmarks/span_table.py benchmarks/results/sequential_ft-c_smollm2_cf1000.json \
        --beside benchmarks/results/sequential_alphaedit_smollm2_cf1000.json --spans 200,400,600,800,1000

Reads finished results and partial ones (a state folder's results.json or a snapshot); a span that the run has
not finished ends at its last edit.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import mean
from typing import Any

from editkit.errors import ValidationError
from editkit.evaluation.results import load_results


def label(run: dict[str, Any]) -> str:
    return str((run.get("run") or {}).get("label") or run["method"])


def last_checkpoint(run: dict[str, Any], end: int) -> dict[str, Any] | None:
    """The last checkpoint after an edit, at or before edit ``end``."""
    done = [c for c in run["checkpoints"] if 0 < c["n_edits"] <= end]
    return done[-1] if done else None


def new_edits(run: dict[str, Any], start: int, end: int) -> str:
    records = run["records"][start:end]
    kinds = ("efficacy", "paraphrase", "neighborhood")
    return " / ".join(f"{mean(r['post'][k] for r in records):.2f}" for k in kinds)


def forgotten(checkpoint: dict[str, Any] | None, *, at: bool) -> str:
    if checkpoint is None:
        return "-"
    text = f"{checkpoint['forgotten']} of {checkpoint['succeeded']}"
    if at:
        text += f" ({100 * checkpoint['forgotten_fraction']:.1f}%) at {checkpoint['n_edits']}"
    return text


def task_cells(checkpoint: dict[str, Any] | None, task: str) -> tuple[str, str]:
    """AUC, and F1 with the share of examples called positive, of ``task`` at ``checkpoint``."""
    if checkpoint is None or task not in checkpoint["downstream"]:
        return "-", "-"
    scores = checkpoint["downstream"][task]
    return f"{scores['auc']:.3f}", f"{scores['f1']:.2f}; {scores['predicted_positive']:.2f}"


def drift(checkpoint: dict[str, Any] | None) -> str:
    return "-" if checkpoint is None else f"{sum(checkpoint['drift'].values()):.2f}"


def table(run: dict[str, Any], bounds: list[int], beside: dict[str, Any] | None) -> list[str]:
    n = run["n_edits"]
    spans = []
    start = 0
    for bound in bounds:
        if start >= n:
            break
        spans.append((start, min(bound, n)))
        start = bound
    title = f"{label(run)}, {run['model']}" + (f" ({label(beside)} over the same edits)" if beside else "")
    lines = [
        f"| {title} | " + " | ".join(f"{a + 1}-{b}" for a, b in spans) + " |",
        "|---|" + "---|" * len(spans),
    ]

    def row(name: str, cell: Any) -> None:
        cells = []
        for a, b in spans:
            text = cell(run, a, b)
            if beside is not None and (other := cell(beside, a, b)) is not None:
                text += f" ({other})"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    def unedited_row(name: str, cell: Any) -> None:
        lines.append(f"| {name} | " + " | ".join(cell(a, b) for a, b in spans) + " |")

    row("new edits: efficacy / paraphrase / neighborhood", new_edits)
    unedited_row(
        "their neighborhood unedited",
        lambda a, b: f"{mean(r['pre']['neighborhood'] for r in run['records'][a:b]):.2f}",
    )
    lines.append(
        "| earlier successful edits forgotten, at the last checkpoint | "
        + " | ".join(
            forgotten(last_checkpoint(run, b), at=True)
            + (f" ({forgotten(last_checkpoint(beside, b), at=False)})" if beside else "")
            for _, b in spans
        )
        + " |"
    )
    for task in run["checkpoints"][0]["downstream"]:
        unedited_auc, unedited_f1 = task_cells(run["checkpoints"][0], task)
        row(
            f"{task} AUC there (unedited {unedited_auc})",
            lambda r, _a, b, task=task: task_cells(last_checkpoint(r, b), task)[0],
        )
        unedited_row(
            f"{task} F1; share called positive (unedited {unedited_f1})",
            lambda _a, b, task=task: task_cells(last_checkpoint(run, b), task)[1],
        )
    row("drift, summed over the edited weights", lambda r, _a, b: drift(last_checkpoint(r, b)))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="a sequential run's results JSON")
    ap.add_argument("--beside", type=Path, help="another run over the same cases, shown in parentheses")
    ap.add_argument("--spans", default="200,400,600,800,1000", help="the spans' last edits, ascending")
    args = ap.parse_args()
    try:
        run = load_results(args.results)
        beside = load_results(args.beside) if args.beside else None
    except ValidationError as e:
        ap.error(str(e))
    for r, path in ((run, args.results), (beside, args.beside)):
        if r is not None and r.get("protocol") != "sequential":
            ap.error(f"{path} is not a sequential run's results")
    if beside is not None and beside["case_ids"][: run["n_edits"]] != run["case_ids"][: run["n_edits"]]:
        ap.error(f"{args.beside} edited other cases, or in another order")
    try:
        bounds = [int(b) for b in args.spans.split(",")]
    except ValueError:
        ap.error(f"--spans takes ascending edit counts, got {args.spans!r}")
    if not bounds or bounds != sorted(set(bounds)) or bounds[0] < 1:
        ap.error(f"--spans takes ascending edit counts, got {args.spans!r}")
    print("\n".join(table(run, bounds, beside)))


if __name__ == "__main__":
    main()
