"""Would a sequential run's records rebuild its weights here? Replays the first --limit edits of a run's results
from their records (``Editor.replay``, as ``editkit eval --state`` rebuilds a state folder that holds results
but no weights) on the unedited model, with --threads torch threads, and reports for every edit how far its own
drift (``||W_after - W_before|| / neurons``) is from the one the run recorded. editkit's rebuild stops at a
relative difference of 1e-4. To stand in for another CPU, change the arithmetic: ``ATEN_CPU_CAPABILITY=default``
runs torch without its vector kernels, so every matmul, softmax and sum rounds differently (another thread
count does not: on this machine two threads round exactly as one).

    R=benchmarks/results/sequential_rome_smollm2_cf1000.json
    python benchmarks/replay_check.py $R --limit 250 --threads 2 \
        --out benchmarks/results/replay_check_rome_threads2.json
    ATEN_CPU_CAPABILITY=default python benchmarks/replay_check.py $R --limit 250 \
        --out benchmarks/results/replay_check_rome_novector.json

A run in progress (its state folder's results.json) names its config with --config.

Runs of one edit per step only (the forgetting study's).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from editkit.data import load_cases
from editkit.editors import create_editor
from editkit.errors import ValidationError
from editkit.evaluation.replay import REPLAY_TOLERANCE, replay_steps
from editkit.evaluation.results import load_results
from editkit.evaluation.runner import config_of_results
from editkit.models.zoo import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="a sequential run's results JSON whose records carry 'replay'")
    ap.add_argument("--config", type=Path, help="the run's config, when RESULTS do not say (a run in progress)")
    ap.add_argument("--limit", type=int, default=100, help="replay the first N edits")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the runs: 1)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    try:
        run = load_results(args.results)
    except ValidationError as e:
        raise SystemExit(str(e)) from None
    if run.get("edits_per_step", 1) != 1:
        raise SystemExit(f"{args.results}: {run['edits_per_step']} edits per step; this check takes one")
    try:
        cfg = config_of_results(run, args.config)
    except ValidationError as e:
        raise SystemExit(f"{args.results}: {e}") from None
    records = [r for r in run["records"][: args.limit] if "rejected" not in r]
    if not records:
        raise SystemExit(f"{args.results}: no edit to replay in its first {args.limit} records")
    if any("replay" not in r for r in records):
        raise SystemExit(f"{args.results}: records without 'replay' (written before editkit kept it)")
    cases = load_cases(cfg["data"], limit=cfg["limit"]).cases
    ids = {c.request.case_id for c in cases}
    if missing := [r["case_id"] for r in records if r["case_id"] not in ids]:
        raise SystemExit(f"{cfg['data']} lacks the run's cases {missing[:5]}")
    torch.set_num_threads(args.threads)
    lm = load(cfg["model"])
    if lm.name != run["model"]:
        raise SystemExit(f"the config loads {lm.name}, not this run's {run['model']}")
    editor = create_editor(cfg["method"], cfg["settings"])
    editor.prepare(lm)
    started = time.perf_counter()
    try:
        # the edits the guard rejected were not made: no step to compare
        steps = [s for s in replay_steps(run, lm, editor, cases, limit=args.limit) if s.handles]
    except ValidationError as e:
        raise SystemExit(f"{args.results}: {e}") from None
    seconds = time.perf_counter() - started
    rows = [
        {"n_edits": s.n_edits, "recorded": s.recorded, "replayed": s.replayed, "relative": s.relative} for s in steps
    ]
    over = [s.n_edits for s in steps if not math.isclose(s.replayed, s.recorded, rel_tol=REPLAY_TOLERANCE)]
    summary = {
        "edits": len(rows),
        "threads": args.threads,
        "run_threads": (run.get("environment") or {}).get("threads"),
        # what stands in for another CPU: ATEN_CPU_CAPABILITY=default turns off torch's vector kernels
        "arithmetic": {k: os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")},
        "largest_relative": max(row["relative"] for row in rows),
        "over_limit": over,
        "seconds_per_edit": seconds / len(rows),
    }
    out = {"source": str(args.results), "config": cfg, "limit": REPLAY_TOLERANCE, "summary": summary, "edits": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
