"""Batch edits: what one batch of k edits costs against one edit, and whether optimising the batch's target
residuals together (``v_batch`` = k, one set of passes) changes the edit against one optimisation after
another (``v_batch`` = 1).

For each method and batch size k, the first k cases of the data file (distinct subjects) are applied as one
batch to the unedited model and rolled back. Per run: wall seconds, optimisation steps, the share of the
batch's edits that took (new target more likely than the old one on the edit prompt) and, for the locate
editors, the largest difference between the together and one-at-a-time weight updates.

    python benchmarks/batch_speed.py --methods memit,alphaedit,ft --sizes 1,5,20 \
        --data ../shared/data/counterfact/canonical_schema_subsets/counterfact_portability_gpt4.json \
        --corpus ../shared/data/wikitext/wikitext-2/valid.txt --out benchmarks/results/batch_speed_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from editkit.data import load_cases
from editkit.editors import create_editor
from editkit.editors.base import WeightEditor
from editkit.edits import EditRequest
from editkit.models.lm import LanguageModel
from editkit.models.zoo import load
from editkit.provenance import code_version, environment, peak_memory_mb

LOCATE = ("memit", "alphaedit")
METHODS = (*LOCATE, "ft")


def distinct_subjects(requests: list[EditRequest], k: int) -> list[EditRequest]:
    seen: set[str] = set()
    out = []
    for req in requests:
        if req.subject not in seen:
            seen.add(req.subject or "")
            out.append(req)
        if len(out) == k:
            return out
    raise SystemExit(f"the data file has fewer than {k} cases with distinct subjects")


def took(lm: LanguageModel, requests: list[EditRequest]) -> float:
    """Share of requests whose new target is more likely than the old one on the edit prompt."""
    new = lm.score([r.text for r in requests], [r.target_new for r in requests])
    old = lm.score([r.text for r in requests], [r.target_true or "" for r in requests])
    return sum(float(n.sum() > o.sum()) for n, o in zip(new, old, strict=True)) / len(requests)


def run_once(lm: LanguageModel, method: str, settings: dict[str, Any], requests: list[EditRequest]) -> dict[str, Any]:
    editor = create_editor(method, settings)
    assert isinstance(editor, WeightEditor)
    editor.prepare(lm)  # contexts and statistics: once per editor, not part of an edit's cost
    t0 = time.perf_counter()
    handle = editor.apply(lm, requests)
    seconds = time.perf_counter() - t0
    steps = handle.info["steps"]
    out = {
        "seconds": seconds,
        "steps": sum(steps) if isinstance(steps, list) else steps,
        "took": took(lm, requests),
        "update": {n: (c.edited - c.original).float() for n, c in handle.changes.items()},
    }
    handle.rollback()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--sizes", default="1,5,20")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE", help="an editor setting")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    methods = args.methods.split(",")
    if unknown := [m for m in methods if m not in METHODS]:
        ap.error(f"unknown method(s) {', '.join(unknown)}; this benchmark times {', '.join(METHODS)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    extra: dict[str, dict[str, str]] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        method, _, name = key.partition(".")
        extra.setdefault(method, {})[name] = value
    lm = load(args.model, progress=False)
    cases = load_cases(args.data, limit=4 * max(sizes)).cases
    pool = distinct_subjects([c.request for c in cases], max(sizes))
    out: dict[str, Any] = {
        "model": lm.name,
        "data": str(args.data),
        "threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg()[0],
        "methods": {},
    }
    for method in methods:
        base: dict[str, Any] = {"corpus": str(args.corpus)} if method in LOCATE else {}
        base.update(extra.get(method, {}))
        rows = []
        for k in sizes:
            batch = pool[:k]
            together = run_once(lm, method, {**base, "v_batch": k} if method in LOCATE else base, batch)
            row: dict[str, Any] = {"k": k, **{key: v for key, v in together.items() if key != "update"}}
            if method in LOCATE and k > 1:
                apart = run_once(lm, method, {**base, "v_batch": 1}, batch)
                row["one_at_a_time"] = {key: v for key, v in apart.items() if key != "update"}
                row["max_update_difference"] = max(
                    float((together["update"][n] - apart["update"][n]).abs().max()) for n in together["update"]
                )
                row["max_update"] = max(float(u.abs().max()) for u in together["update"].values())
            rows.append(row)
            print(json.dumps({"method": method, **row}), flush=True)
        one = next((r["seconds"] for r in rows if r["k"] == 1), None)
        for row in rows:
            if one:
                row["seconds_over_one_edit"] = row["seconds"] / one
        out["methods"][method] = {"settings": base, "runs": rows}
    out["load_average_end"] = os.getloadavg()[0]
    out["peak_memory_mb"] = peak_memory_mb()
    out["code_version"] = code_version()
    out["environment"] = environment()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
