"""ROME speed on one model: key statistics (cold and cached), seconds per edit and per optimisation step with
the fast path and with plain full passes, and a profile of one edit.

    python benchmarks/rome_speed.py --cases 10 \
        --data ../shared/data/counterfact/canonical_schema_subsets/counterfact_portability_gpt4.json \
        --corpus ../shared/data/wikitext/wikitext-2/valid.txt --out benchmarks/results/rome_speed_smollm2.json
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import tempfile
import time
from pathlib import Path

from editkit.data import load_cases
from editkit.editors import create_editor, stats
from editkit.editors.stats import StatsRequest, second_moment
from editkit.models.zoo import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    lm = load(args.model, progress=False)
    layer = lm.default_edit_layer
    out: dict = {"model": lm.name, "layer": layer}

    # Key statistics: a cold pass into an empty cache, then a reload from disk in a fresh in-memory memo.
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.environ.get("EDITKIT_CACHE")
        os.environ["EDITKIT_CACHE"] = tmp
        try:
            req = StatsRequest(layer=layer, corpus=args.corpus)
            t0 = time.perf_counter()
            second_moment(lm, req)
            out["stats_cold_seconds"] = time.perf_counter() - t0
            stats._MEMO.clear()
            t0 = time.perf_counter()
            second_moment(lm, req)
            out["stats_cached_seconds"] = time.perf_counter() - t0
        finally:
            if saved is None:
                os.environ.pop("EDITKIT_CACHE")
            else:
                os.environ["EDITKIT_CACHE"] = saved
    out["stats_tokens"] = req.n_tokens

    cases = load_cases(args.data, limit=args.cases).cases
    for fast in (True, False):
        editor = create_editor("rome", {"corpus": str(args.corpus), "fast_path": fast})
        editor.prepare(lm)  # contexts and statistics, once per editor: not part of an edit's cost
        seconds, steps = [], []
        for case in cases:
            t0 = time.perf_counter()
            handle = editor.apply(lm, [case.request])
            seconds.append(time.perf_counter() - t0)
            steps.append(handle.info["steps"])
            handle.rollback()
        key = "fast" if fast else "reference"
        out[key] = {
            "seconds_per_edit": sum(seconds) / len(seconds),
            "steps_per_edit": sum(steps) / len(steps),
            "seconds_per_step": sum(seconds) / sum(steps),
        }

    editor = create_editor("rome", {"corpus": str(args.corpus)})
    editor.prepare(lm)
    prof = cProfile.Profile()
    prof.enable()
    editor.apply(lm, [cases[0].request]).rollback()
    prof.disable()
    st = pstats.Stats(prof)
    rows = []
    for (file, line, fn), (_cc, _nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(file).name}:{line}:{fn}", "cumulative": ct, "own": tt})
    rows.sort(key=lambda r: r["own"], reverse=True)
    out["profile_top_own_time"] = rows[:12]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "profile_top_own_time"}, indent=1))


if __name__ == "__main__":
    main()
