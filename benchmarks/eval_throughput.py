"""Evaluation throughput on one model: probes scored per second by ``score_cases`` (all metrics, batched,
length-sorted, repeated pairs scored once) against the same scoring one sequence at a time; few-shot downstream
examples per second with the shared prefix cache against full prompts; and a profile of where the time goes.

    python benchmarks/eval_throughput.py --cases 50 \
        --data ../shared/data/counterfact/canonical_schema_subsets/counterfact_portability_gpt4.json \
        --glue ../shared/data/glue --out benchmarks/results/eval_throughput_smollm2.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from pathlib import Path

import torch

from editkit.data import load_cases
from editkit.evaluation.downstream import evaluate_task, get_task, load_examples
from editkit.evaluation.metrics import Reference, score_cases
from editkit.models.zoo import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--glue", type=Path, required=True)
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--examples", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    lm = load(args.model)
    cases = load_cases(args.data, limit=args.cases).cases
    n_probes = sum(len(c.probes) for c in cases)
    t0 = time.perf_counter()
    ref = Reference.build(lm, cases, batch_size=args.batch_size)
    reference_s = time.perf_counter() - t0
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    score_cases(lm, cases, ref, batch_size=args.batch_size)
    profile.disable()
    score_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    score_cases(lm, cases, ref, batch_size=1)
    unbatched_s = time.perf_counter() - t0
    stats = io.StringIO()
    pstats.Stats(profile, stream=stats).sort_stats("tottime").print_stats(8)
    downstream = {}
    for task in ("sst2", "mrpc", "rte", "cola"):
        examples = load_examples(args.glue / f"{task}.jsonl", task, n=args.examples)
        t0 = time.perf_counter()
        evaluate_task(lm, task, examples, batch_size=args.batch_size)
        cached_s = time.perf_counter() - t0
        spec = get_task(task)
        t0 = time.perf_counter()
        lm.next_token_logprobs([spec.prefix + spec.render(e) for e in examples], batch_size=args.batch_size)
        full_s = time.perf_counter() - t0
        downstream[task] = {
            "seconds": cached_s,
            "examples_per_second": len(examples) / cached_s,
            "full_prompt_seconds": full_s,
            "prefix_cache_speedup": full_s / cached_s,
        }
    results = {
        "model": lm.name,
        "threads": torch.get_num_threads(),
        "cases": len(cases),
        "probes": n_probes,
        "reference_seconds": reference_s,
        "score_seconds": score_s,
        "probes_per_second": n_probes / score_s,
        "unbatched_seconds": unbatched_s,
        "batching_speedup": unbatched_s / score_s,
        "downstream": downstream,
        "profile_top_tottime": stats.getvalue().splitlines()[:30],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k != "profile_top_tottime"}, indent=1))
    print("\n".join(results["profile_top_tottime"]))


if __name__ == "__main__":
    main()
