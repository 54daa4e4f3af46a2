"""What scoring probes costs: continuations that share a prompt read it once (``LanguageModel.score_tokens``)
against one teacher-forced pass per (prompt, continuation) pair, as editkit scored before.

Scoring is what a sequential run pays besides its edits: at every checkpoint the in-scope probes of every
earlier edit (retention), after every edit all probes of that edit (immediate scores). A CounterFact probe has
an answer and a contrast after one prompt. Both variants score the same pairs, sorted by length as the metrics
sort them, in batches of ``--batch-size`` pairs; they take turns ``--repeats`` times (this CPU is shared), and
the JSON has wall and CPU seconds of each turn and how far their log-probabilities and greedy hits differ.

    python benchmarks/scoring_speed.py --data ../shared/data/counterfact/easyedit/counterfact-val.json --cases 50 \
        --out benchmarks/results/scoring_speed_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from editkit.data import load_cases
from editkit.edits import ProbeKind
from editkit.files import atomic_write
from editkit.models.lm import LanguageModel, TokenScores
from editkit.models.zoo import load
from editkit.provenance import code_version, environment

IN_SCOPE = (ProbeKind.EDIT, ProbeKind.REPHRASE)


def one_pass_per_pair(lm: LanguageModel, pairs: list[tuple[str, list[int]]], batch_size: int) -> list[TokenScores]:
    """The previous scoring: prompt and continuation in one teacher-forced sequence, a batch of pairs a pass."""
    out = []
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            tf = lm.teacher_forced([p for p, _ in chunk], [c for _, c in chunk])
            logits = lm.logits_at(tf.inputs, tf.positions()[0])
            valid = tf.positions()[1]
            lp = tf.token_logprobs(logits)
            hit = logits.argmax(-1) == tf.packed_targets()
            out += [TokenScores(lp[b][valid[b]], hit[b][valid[b]]) for b in range(lp.shape[0])]
    return out


def pairs_of(lm: LanguageModel, data: str, n_cases: int, kinds: tuple[ProbeKind, ...]) -> list[tuple[str, list[int]]]:
    cases = load_cases(data, limit=n_cases).cases
    pairs = [
        (p.prompt, lm.encode(a, special=False))
        for c in cases
        for p in c.of_kind(*kinds)
        for a in (p.answers + p.contrasts)
    ]
    unique = list(dict.fromkeys((p, tuple(c)) for p, c in pairs))
    unique.sort(key=lambda k: len(lm.encode(k[0])) + len(k[1]))
    return [(p, list(c)) for p, c in unique]


def timed(fn: Any) -> tuple[float, float, Any]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", required=True)
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load(args.model)
    results: dict[str, Any] = {}
    for name, kinds in (("retention (edit + rephrase probes)", IN_SCOPE), ("all probes", tuple(ProbeKind))):
        pairs = pairs_of(lm, args.data, args.cases, kinds)
        prompts, conts = [p for p, _ in pairs], [c for _, c in pairs]
        turns: dict[str, list[dict[str, float]]] = {"shared prompts": [], "one pass per pair": []}
        for _ in range(args.repeats):
            w, c, shared = timed(lambda: lm.score_tokens(prompts, conts, batch_size=args.batch_size))  # noqa: B023
            turns["shared prompts"].append({"wall": w, "cpu": c})
            w, c, old = timed(lambda: one_pass_per_pair(lm, pairs, args.batch_size))  # noqa: B023
            turns["one pass per pair"].append({"wall": w, "cpu": c})
        diff = max(float((a.logprobs - b.logprobs).abs().max()) for a, b in zip(shared, old, strict=True))
        same_hits = statistics.mean(float(torch.equal(a.greedy, b.greedy)) for a, b in zip(shared, old, strict=True))
        medians = {k: {m: statistics.median(t[m] for t in v) for m in ("wall", "cpu")} for k, v in turns.items()}
        results[name] = {
            "pairs": len(pairs),
            "distinct_prompts": len(set(prompts)),
            "tokens_one_pass_per_pair": sum(len(lm.encode(p)) + len(c) for p, c in pairs),
            "tokens_shared": sum(len(lm.encode(p)) for p in set(prompts)) + sum(len(c) for c in conts),
            "turns": turns,
            "median_seconds": medians,
            "cpu_ratio_shared_to_pairs": medians["shared prompts"]["cpu"] / medians["one pass per pair"]["cpu"],
            "max_abs_logprob_difference": diff,
            "same_greedy_hits": same_hits,
        }
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "turns"}))
    out = {
        "model": args.model,
        "data": args.data,
        "cases": args.cases,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "code_version": code_version(),
        "environment": environment(),
        "results": results,
    }
    atomic_write(Path(args.out), json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
