"""SERAC with a growing memory (SERAC Figure 3 taken to 10,000 edits, and Table 6): edit success, drawdown,
latency and memory as the number of stored edits grows.

Edits from a CounterFact file are added to one SERAC memory in chunks. At each size in --sizes, on --probe-cases
cases whose edits are in memory (the most recently added, so the cases change as the memory grows):

* ES: exact match of the new target on the rephrase probes (SERAC eq. 4), and the classifier's routing accuracy;
* DD: on the neighborhood probes, 1 when the edited model's greedy answer differs from the base model's (eq. 5),
  split by cause (probes naming no edited subject, and those naming a subject with an edit of its own in memory,
  with how often that edit's answer came: they may be in its scope), and the share of the second kind;
* latency of one forward pass (one input, next-token distribution) for the base model, SERAC on an
  out-of-scope input (routed to the base) and SERAC on an in-scope input (routed to h), median of --repeats;
  and of a 16-token greedy generation, base against SERAC out of scope (routing happens once per input);
* seconds per added edit, one at a time (the last --single-adds edits before each size) and in chunks (durable
  write + embedding + index), bytes of the memory file per edit, process RSS.

With ``--probes FILE`` the probed cases are fixed instead: the first --probe-cases of FILE go into the memory
first and are probed at every size, and --data only fills the memory (its edits that share a case id, prompt or
subject with the probes left out, as ``editkit eval --prefill`` does). Out-of-scope overhead is then also measured
as a ratio in one interleaved loop (base and SERAC alternately on the same input: median ratio and its
quartiles, which a shared CPU's drift does not bias), for one input and for batches of 16 and 64 out-of-scope
prompts; above the index's exact-search threshold (HNSW), the recall of the approximate nearest edit against
brute force on the probes' inputs.

    python benchmarks/serac_scale.py --artifacts build/serac --sizes 10,100,1000,10000 \
        --out benchmarks/results/serac_scale_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from editkit.configfile import parse_overrides
from editkit.data import load_cases
from editkit.editors import create_editor
from editkit.editors.serac import SERAC
from editkit.edits import ProbeKind
from editkit.evaluation.metrics import Reference, score_cases
from editkit.evaluation.prefill import SubjectIndex, load_prefill
from editkit.models.zoo import cache_dir, load

log = logging.getLogger("serac_scale")


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _interleaved(base, serac, repeats: int) -> dict[str, float]:
    """Base and SERAC timed alternately: medians, and the median and quartiles of the per-pair ratio."""
    base(), serac()  # warm-up
    pairs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        base()
        t1 = time.perf_counter()
        serac()
        pairs.append((t1 - t0, time.perf_counter() - t1))
    ratios = sorted(b / a for a, b in pairs)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "base_s": statistics.median(a for a, _ in pairs),
        "serac_s": statistics.median(b for _, b in pairs),
        "ratio": statistics.median(ratios),
        "ratio_q1": q[0],
        "ratio_q3": q[2],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--artifacts", help="trained SERAC parts (default: the packaged ones)")
    ap.add_argument("--scope", default="embed")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another SERAC setting")
    ap.add_argument("--data", default="../shared/data/counterfact/easyedit/counterfact-edit.json")
    ap.add_argument("--probes", help="fixed probe cases (first --probe-cases of this file), in memory first")
    ap.add_argument("--sizes", default="10,100,1000,10000")
    ap.add_argument("--probe-cases", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=500, help="edits added per apply() call")
    ap.add_argument("--single-adds", type=int, default=5, help="edits added one at a time before each size")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if args.probes:
        probe_set = load_cases(args.probes, limit=args.probe_cases, skip_invalid=True)
        fill = load_prefill(args.data, max(sizes) - len(probe_set.cases), probe_set.cases, args.probes)
        requests = [c.request for c in probe_set.cases] + fill.requests
        data = {"probes": {"path": str(probe_set.path), "sha256": probe_set.sha256}, "fill": fill.summary}
        cases = probe_set.cases
    else:
        dataset = load_cases(args.data, limit=max(sizes), skip_invalid=True)
        cases = dataset.cases
        requests = [c.request for c in cases]
        data = {"path": str(dataset.path), "sha256": dataset.sha256}
    lm = load(args.model, progress=False)
    settings: dict[str, object] = {"scope": args.scope, **parse_overrides(args.set)}
    if args.artifacts:
        settings["artifacts"] = args.artifacts
    with tempfile.TemporaryDirectory() as tmp:
        settings["memory"] = str(Path(tmp) / "memory.sqlite")
        editor = create_editor("serac", settings)
        assert isinstance(editor, SERAC)
        t0 = time.perf_counter()
        editor.prepare(lm)
        load_seconds = time.perf_counter() - t0
        model = editor.routed(lm)
        rows = []
        added = 0
        add_seconds: list[float] = []
        fixed_reference = Reference.cached(lm, cases, cache_dir() / "references") if args.probes else None
        for size in sizes:
            singles = min(args.single_adds, size - added)
            while added < size - singles:
                chunk = requests[added : min(size - singles, added + args.chunk)]
                t0 = time.perf_counter()
                editor.apply(lm, chunk)
                add_seconds.append((time.perf_counter() - t0) / len(chunk))
                added += len(chunk)
            single_seconds = []
            for request in requests[added:size]:  # the last few edits one at a time, as a user adds them
                t0 = time.perf_counter()
                editor.apply(lm, [request])
                single_seconds.append(time.perf_counter() - t0)
                added += 1
            probe_cases = cases if args.probes else cases[max(0, size - args.probe_cases) : size]
            reference = fixed_reference or Reference.build(lm, probe_cases)
            in_memory = SubjectIndex.of(requests[:size])
            scores = score_cases(
                model,
                probe_cases,
                reference,
                kinds=(ProbeKind.REPHRASE, ProbeKind.NEIGHBORHOOD, ProbeKind.EDIT),
                subjects=in_memory,
            )
            rephrases = [(c, p) for c in probe_cases for p in c.of_kind(ProbeKind.REPHRASE)]
            routes = model.route([p.prompt for _, p in rephrases])
            routed_right = [
                float(r.record is not None and r.record.request == c.request)
                for (c, _), r in zip(rephrases, routes, strict=True)
            ]
            neighbours = [p.prompt for c in probe_cases for p in c.of_kind(ProbeKind.NEIGHBORHOOD)]
            # A neighborhood prompt about a subject that has its own edit in memory may be in scope of that edit.
            naming_edited = [bool(in_memory.named(text)) for text in neighbours]
            out_routes = model.route(neighbours)
            in_text = rephrases[0][1].prompt
            outside = [t for t, r in zip(neighbours, out_routes, strict=True) if r.record is None] or neighbours
            out_text = outside[0]

            def base_pass(texts: tuple[str, ...] = (out_text,)) -> None:
                lm.next_token_logprobs(list(texts), batch_size=64)

            def serac_pass(texts: tuple[str, ...] = (out_text,)) -> None:
                model.clear_routes()  # measure routing too, not the route cache
                model.next_token_logprobs(list(texts), batch_size=64)

            def serac_in(text: str = in_text) -> None:
                serac_pass((text,))

            def base_generate(text: str = out_text) -> None:
                lm.generate_ids([text], 16)

            def serac_generate(text: str = out_text) -> None:
                model.clear_routes()
                model.generate_ids([text], 16)

            row = {
                "edits_in_memory": len(model.memory),
                "es_rephrase": statistics.mean(s["rephrase_acc"] for s in scores if "rephrase_acc" in s),
                "es_edit": statistics.mean(s["edit_acc"] for s in scores if "edit_acc" in s),
                "dd_neighborhood": statistics.mean(s["dd"] for s in scores if "dd" in s),
                "kl_drawdown": statistics.mean(s["kl_drawdown"] for s in scores if "kl_drawdown" in s),
                **{
                    key: statistics.mean(s[key] for s in scores if key in s)
                    for key in ("dd_unedited_subject", "dd_edited_subject", "other_edit_answered")
                    if any(key in s for s in scores)
                },
                "rephrase_routed_to_own_edit": statistics.mean(routed_right),
                "neighborhood_routed_to_base": statistics.mean(r.record is None for r in out_routes),
                "neighborhood_naming_an_edited_subject": statistics.mean(naming_edited),
                "base_forward_s": _median_seconds(base_pass, args.repeats),
                "serac_out_of_scope_forward_s": _median_seconds(serac_pass, args.repeats),
                "serac_in_scope_forward_s": _median_seconds(serac_in, args.repeats),
                "base_generate16_s": _median_seconds(base_generate, max(3, args.repeats // 4)),
                "serac_out_of_scope_generate16_s": _median_seconds(serac_generate, max(3, args.repeats // 4)),
                "seconds_per_added_edit_in_chunks": statistics.mean(add_seconds[-3:]) if add_seconds else None,
                "seconds_per_single_add": statistics.median(single_seconds) if single_seconds else None,
                "memory_file_bytes_per_edit": os.path.getsize(model.memory.location) / len(model.memory),
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "index_exact": model.memory.index.exact,
            }
            if args.probes:
                row["overhead_interleaved"] = {
                    str(n): _interleaved(
                        lambda t=tuple(outside[:n]): base_pass(t),
                        lambda t=tuple(outside[:n]): serac_pass(t),
                        args.repeats if n == 1 else max(5, args.repeats // 4),
                    )
                    for n in (1, 16, 64)
                    if len(outside) >= n
                }
            if not model.memory.index.exact:
                texts = [p.prompt for _, p in rephrases] + neighbours
                queries = model.memory.scope.query_vectors(texts).astype("float32")
                _, approx = model.memory.index.search(queries, 1)
                exact = model.memory.index.nearest_exact(queries)
                row["index_recall_at_1"] = float((approx[:, 0] == exact).mean())
            rows.append(row)
            log.info("%s", json.dumps(row))
    result = {
        "model": lm.name,
        "scope": args.scope,
        "settings": {k: v for k, v in settings.items() if k != "memory"},
        "provenance": editor.provenance(),
        "data": data,
        "probe_cases": args.probe_cases,
        "threads": torch.get_num_threads(),
        "load_seconds": load_seconds,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
