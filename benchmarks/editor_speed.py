"""Speed of the locate-and-edit editors (ROME, MEMIT, AlphaEdit) on one model: the key statistics each needs
(cold into an empty cache, then a cached reload), seconds per edit and per optimisation step with the fast path
and with plain full passes, seconds to replay an edit from its record (checked equal to the edit), and a
profile of one edit.

    python benchmarks/editor_speed.py --methods rome,memit,alphaedit --cases 10 \
        --data ../shared/data/counterfact/canonical_schema_subsets/counterfact_portability_gpt4.json \
        --corpus ../shared/data/wikitext/wikitext-2/valid.txt --out benchmarks/results/editor_speed_smollm2.json
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
from typing import Any

import torch

from editkit.configfile import parse_overrides
from editkit.data import load_cases
from editkit.editors import create_editor, stats
from editkit.editors.base import WeightEditor
from editkit.edits import EditCase
from editkit.errors import ValidationError
from editkit.models.lm import LanguageModel
from editkit.models.zoo import load
from editkit.provenance import code_version

METHODS = ("rome", "memit", "alphaedit")


def preparation_seconds(lm: LanguageModel, method: str, corpus: Path) -> dict[str, float]:
    """``prepare`` (context prefixes, key statistics of every edited layer, AlphaEdit's null space) into an
    empty cache, then again with the statistics read back from disk."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.environ.get("EDITKIT_CACHE")
        os.environ["EDITKIT_CACHE"] = tmp
        try:
            for key in ("prepare_cold_seconds", "prepare_cached_seconds"):
                stats._MEMO.clear()
                editor = create_editor(method, {"corpus": str(corpus)})
                t0 = time.perf_counter()
                editor.prepare(lm)
                out[key] = time.perf_counter() - t0
        finally:
            if saved is None:
                os.environ.pop("EDITKIT_CACHE")
            else:
                os.environ["EDITKIT_CACHE"] = saved
    return out


def steps_of(info: dict[str, Any]) -> int:
    steps = info["steps"]
    return sum(steps) if isinstance(steps, list) else int(steps)  # MEMIT-style editors: one count per edit


def edit_seconds(
    lm: LanguageModel, method: str, corpus: Path, cases: list[EditCase], variants: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Seconds per edit (wall and this process's CPU time) and per step of each variant (editor settings), the
    variants taking turns on each case so that a busy machine slows them alike; each edit is also replayed from
    its record and checked equal."""
    editors = {}
    for name, extra in variants.items():
        editors[name] = create_editor(method, {"corpus": str(corpus), **extra})
        editors[name].prepare(lm)  # contexts and statistics, once per editor: not part of an edit's cost
    timed: dict[str, dict[str, list[float]]] = {
        v: {"seconds": [], "cpu_seconds": [], "steps": [], "replay": []} for v in variants
    }
    for case in cases:
        for name, editor in editors.items():
            t0, c0 = time.perf_counter(), time.process_time()
            handle = editor.apply(lm, [case.request])
            timed[name]["seconds"].append(time.perf_counter() - t0)
            timed[name]["cpu_seconds"].append(time.process_time() - c0)
            timed[name]["steps"].append(steps_of(handle.info))
            handle.rollback()
            t0 = time.perf_counter()
            again = editor.replay(lm, [case.request], handle.info["replay"])
            timed[name]["replay"].append(time.perf_counter() - t0)
            if any(not torch.equal(again.changes[n].edited, ch.edited) for n, ch in handle.changes.items()):
                raise RuntimeError(f"{method}: the replayed edit of {case.request.case_id} differs from the edit")
            again.rollback()
    out: dict[str, Any] = {}
    for name, t in timed.items():
        seconds, steps = t["seconds"], t["steps"]
        out[name] = {
            "settings": variants[name],
            "seconds_per_edit": sum(seconds) / len(seconds),
            "seconds_median": sorted(seconds)[len(seconds) // 2],
            "steps_per_edit": sum(steps) / len(steps),
            "seconds_per_step": sum(seconds) / sum(steps),
            # CPU time of this process: on a shared machine, less sensitive to other jobs than wall time
            "cpu_seconds_per_edit": sum(t["cpu_seconds"]) / len(seconds),
            "replay_seconds_per_edit": sum(t["replay"]) / len(t["replay"]),
        }
    return out


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:KEY=VALUE[,KEY=VALUE...]`` (values read as YAML scalars)."""
    name, _, items = text.partition(":")
    if not name or not items:
        raise argparse.ArgumentTypeError(f"a variant is NAME:KEY=VALUE[,KEY=VALUE...], got {text!r}")
    try:
        return name, parse_overrides(items.split(","))
    except ValidationError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def profile_one(lm: LanguageModel, method: str, corpus: Path, case: EditCase) -> list[dict[str, Any]]:
    editor = create_editor(method, {"corpus": str(corpus)})
    editor.prepare(lm)
    prof = cProfile.Profile()
    prof.enable()
    editor.apply(lm, [case.request]).rollback()
    prof.disable()
    rows = [
        {"function": f"{Path(file).name}:{line}:{fn}", "cumulative": ct, "own": tt}
        for (file, line, fn), (_cc, _nc, tt, ct, _callers) in pstats.Stats(prof).stats.items()  # type: ignore[attr-defined]
    ]
    rows.sort(key=lambda r: r["own"], reverse=True)
    return rows[:12]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of: {', '.join(METHODS)}")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="time these settings against the default fast path instead of the plain full passes (repeatable); "
        "with variants, statistics' preparation and the profile are skipped",
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    methods = args.methods.split(",")
    if unknown := [m for m in methods if m not in METHODS]:
        ap.error(f"unknown method(s) {', '.join(unknown)}; this benchmark times {', '.join(METHODS)}")
    lm = load(args.model, progress=False)
    cases = load_cases(args.data, limit=args.cases).cases
    out: dict[str, Any] = {"model": lm.name, "cases": len(cases), "methods": {}}
    variants: dict[str, dict[str, Any]] = (
        {"fast": {}, **dict(args.variant)} if args.variant else {"fast": {}, "reference": {"fast_path": False}}
    )
    for method in methods:
        editor = create_editor(method, {"corpus": str(args.corpus)})
        assert isinstance(editor, WeightEditor)
        row = {"edited": editor.target_parameters(lm, []), "stats_tokens": editor.config.to_dict()["mom2_n_tokens"]}
        if not args.variant:
            row.update(preparation_seconds(lm, method, args.corpus))
        row.update(edit_seconds(lm, method, args.corpus, cases, variants))
        if not args.variant:
            row["profile_top_own_time"] = profile_one(lm, method, args.corpus, cases[0])
        out["methods"][method] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out["load_average_end"] = os.getloadavg()
    out["code_version"] = code_version()
    args.out.write_text(json.dumps(out, indent=1))
    summary = {m: {k: v for k, v in r.items() if k != "profile_top_own_time"} for m, r in out["methods"].items()}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
