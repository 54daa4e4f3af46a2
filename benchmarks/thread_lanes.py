"""Threads against processes: how fast SmolLM2 edits and scores with one torch thread, with two, and as two
one-thread processes side by side (two "lanes"), on the same cases. It answers how to spend 2 CPU cores on a
long study: one run with two threads, or two runs with one thread each.

    python benchmarks/thread_lanes.py --methods ft-c,rome,memit --cases 4 \
        --data ../shared/data/counterfact/canonical_schema_subsets/counterfact_portability_gpt4.json \
        --corpus ../shared/data/wikitext/wikitext-2/valid.txt --out benchmarks/results/thread_lanes_smollm2.json

Each layout runs in fresh worker processes (this script with ``--worker``). A worker loads the model, prepares
the editor (key statistics come from the cache, filled once before anything is timed), says it is ready, and
starts when every worker of its layout is ready; it then edits each case and rolls it back, then scores the
cases' probes (every metric). "score" is timed apart from the edits. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

METHODS = ("ft", "ft-c", "rome", "memit", "alphaedit")
LAYOUTS = {"1 process, 2 threads": [2], "1 process, 1 thread": [1], "2 processes, 1 thread each": [1, 1]}


def settings(method: str, corpus: str) -> dict[str, Any]:
    return {"corpus": corpus} if method in ("rome", "memit", "alphaedit") else {}


def worker(args: argparse.Namespace) -> None:
    """Time the edits of ``args.method`` (or, for "score", one scoring pass over the cases' probes) in this
    process with ``args.threads`` threads; JSON on stdout's last line."""
    import torch

    torch.set_num_threads(args.threads)
    from editkit.data import load_cases
    from editkit.editors import create_editor
    from editkit.evaluation.metrics import Reference, score_cases
    from editkit.models.zoo import load

    lm = load(args.model, progress=False)
    cases = load_cases(args.data, limit=args.cases).cases
    scoring = args.method == "score"
    if scoring:
        reference = Reference.build(lm, cases)
    else:
        editor = create_editor(args.method, settings(args.method, str(args.corpus)))
        editor.prepare(lm)
    print("ready", flush=True)
    sys.stdin.readline()  # "go": every worker of the layout is ready
    seconds = []
    if scoring:
        t0 = time.perf_counter()
        score_cases(lm, cases, reference)
        seconds.append(time.perf_counter() - t0)
    else:
        for case in cases:
            t0 = time.perf_counter()
            editor.apply(lm, [case.request]).rollback()
            seconds.append(time.perf_counter() - t0)
    print(json.dumps({"threads": torch.get_num_threads(), "seconds": seconds}), flush=True)


def run_layout(args: argparse.Namespace, method: str, threads: list[int]) -> dict[str, Any]:
    """Start one worker per entry of ``threads``, let them go together, and collect their timings."""
    base = [sys.executable, __file__, "--worker", "--method", method, "--model", args.model]
    base += ["--data", str(args.data), "--corpus", str(args.corpus), "--cases", str(args.cases)]
    procs = [
        subprocess.Popen([*base, "--threads", str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for n in threads
    ]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"worker for {method} failed before timing (said {line!r})")
    t0 = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"worker for {method} exited with {p.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "threads": [r["threads"] for r in results],
        "seconds": [r["seconds"] for r in results],
        "wall_seconds": time.perf_counter() - t0,  # includes the workers' exit
        **throughput([r["seconds"] for r in results]),
    }


def throughput(seconds: list[list[float]]) -> dict[str, float]:
    """The median time of one unit (an edit, or a scoring pass), and the layout's throughput: the units each
    worker finishes per second of its own timed work, summed over the workers that ran side by side."""
    return {
        "median_seconds": statistics.median(s for worker in seconds for s in worker),
        "units_per_second": sum(len(worker) / sum(worker) for worker in seconds),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="ft-c,rome,memit", help=f"comma-separated, of: {', '.join(METHODS)}")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--no-score", action="store_true", help="time the edits only, not the scoring of the cases")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.out is None:
        ap.error("--out is required")
    methods = args.methods.split(",")
    if unknown := [m for m in methods if m not in METHODS]:
        ap.error(f"unknown method(s) {', '.join(unknown)}; of: {', '.join(METHODS)}")
    from editkit.editors import create_editor
    from editkit.models.zoo import load

    lm = load(args.model, progress=False)
    for method in methods:  # fill the statistics cache before anything is timed
        create_editor(method, settings(method, str(args.corpus))).prepare(lm)
    del lm
    import torch

    out: dict[str, Any] = {"model": args.model, "cases": args.cases, "torch": torch.__version__, "layouts": {}}
    for method in [*methods, *([] if args.no_score else ["score"])]:
        rows = {name: run_layout(args, method, threads) for name, threads in LAYOUTS.items()}
        out["layouts"][method] = rows
        one = rows["1 process, 2 threads"]["units_per_second"]
        for name, row in rows.items():
            row["throughput_vs_2_threads"] = row["units_per_second"] / one
            print(
                f"{method:10s} {name:28s} median {row['median_seconds']:6.2f} s  x{row['throughput_vs_2_threads']:.2f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
