"""Disabling edits on a fresh model (forgetting paper, §3.4.1): the edits a sequential run flagged as disabling,
each applied alone to the unedited model. Do they still move the weights far more than an ordinary edit, and
do they still break the model's downstream ability?

For each flagged edit, and for --ordinary unflagged edits of the same run as controls: the edit's own drift
(``||W_after - W_before|| / neurons``), the efficacy of the edit, and few-shot F1 / AUC on the downstream tasks,
before and after; every edit is rolled back before the next.

    python benchmarks/disabling_edits.py benchmarks/results/sequential_rome_smollm2_cf200.json \
        --glue ../shared/data/glue --out benchmarks/results/disabling_edits_rome_smollm2.json

A run still going (its state folder's results.json) names its config with --config.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import median

from editkit.data import load_cases
from editkit.editors import create_editor
from editkit.errors import ValidationError
from editkit.evaluation.downstream import evaluate_task, load_examples
from editkit.evaluation.drift import edit_drift
from editkit.evaluation.metrics import Reference, score_cases
from editkit.evaluation.results import load_results
from editkit.evaluation.runner import config_of_results
from editkit.models.zoo import load
from editkit.progress import progress_bar


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="a sequential run's results JSON")
    ap.add_argument("--glue", type=Path, required=True)
    ap.add_argument("--tasks", default="sst2", help="downstream tasks (the run's sample: same n and seed)")
    ap.add_argument("--ordinary", type=int, default=4, help="unflagged edits of the run to apply as controls")
    ap.add_argument(
        "--config", type=Path, help="the run's config, when RESULTS are a state folder's partial results.json"
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    try:
        run = load_results(args.results)
    except ValidationError as e:
        raise SystemExit(str(e)) from None
    flagged = {d["case_id"]: d["reason"] for d in run["disabling_edits"]}
    if not flagged:
        raise SystemExit(f"{args.results} flags no disabling edit")
    try:
        cfg = config_of_results(run, args.config)
    except ValidationError as e:
        raise SystemExit(f"{args.results}: {e}") from None
    dataset = load_cases(cfg["data"], limit=cfg["limit"])
    cases = {c.request.case_id: c for c in dataset.cases}
    ordinary = [c for c in run["case_ids"] if c not in flagged][:: max(1, len(run["case_ids"]) // args.ordinary)]
    chosen = [*flagged, *ordinary[: args.ordinary]]
    lm = load(cfg["model"])
    if lm.name != run["model"]:
        raise SystemExit(f"the config loads {lm.name}, not this run's {run['model']}")
    editor = create_editor(cfg["method"], cfg["settings"])
    editor.prepare(lm)
    tasks = {
        t: load_examples(args.glue / f"{t}.jsonl", t, n=cfg["downstream_n"], seed=cfg["seed"])
        for t in args.tasks.split(",")
    }
    unedited = {t: evaluate_task(lm, t, ex) for t, ex in tasks.items()}
    reference = Reference.build(lm, [cases[c] for c in chosen])
    drift_in_run = {r["case_id"]: r["drift"] for r in run["records"]}
    rows = []
    started = time.perf_counter()
    with progress_bar(len(chosen), "edits on a fresh model", True) as bar:
        for case_id in chosen:
            case = cases[case_id]
            handle = editor.apply(lm, [case.request])
            edited = handle.model  # the edited model: ``lm`` itself for weight edits, a router for memories
            scores = score_cases(edited, [case], reference)[0]
            after = {t: evaluate_task(edited, t, ex) for t, ex in tasks.items()}
            rows.append(
                {
                    "case_id": case_id,
                    "flagged": flagged.get(case_id),
                    "n_edits_in_run": run["case_ids"].index(case_id) + 1,
                    "drift_alone": edit_drift(lm.model, handle),
                    "efficacy": scores.get("efficacy"),
                    "downstream": {t: {"f1": a["f1"], "auc": a["auc"]} for t, a in after.items()},
                }
            )
            handle.rollback()
            bar.advance()
    typical = median(r["drift_alone"] for r in rows if r["flagged"] is None)
    for r in rows:
        r["drift_vs_ordinary_median"] = r["drift_alone"] / typical
    increments = [b - a for a, b in zip([0.0, *drift_in_run.values()], drift_in_run.values(), strict=False)]
    out = {
        "benchmark": "disabling_edits",
        "source_run": str(args.results),
        "model": lm.name,
        "method": editor.name,
        "config": editor.config.to_dict(),
        "unedited_downstream": {t: {"f1": a["f1"], "auc": a["auc"]} for t, a in unedited.items()},
        "run_median_drift_increment": median(increments),
        "edits": rows,
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
