"""SERAC Tables 4 and 5 in kind: scope-classifier and counterfactual-model accuracy on in-easy / in-hard /
out-easy / out-hard inputs (``editkit.evaluation.scope.scope_breakdown``), for each classifier (embedding and
cross-attention, trained; raw MiniLM for comparison) on each held-out data set, with groups of k edits in memory;
the classifier also at other thresholds than eq. 1's 0.5 (a sensitivity analysis on the evaluation data, not a
tuning: the editors keep 0.5). Hard in-scope inputs: zsRE's and CounterFact's portability questions, and
MQuAKE-CF's multi-hop questions (its records with one rewrite; a multi-hop answer needs all of a record's edits);
``qa-hard`` (zsRE as ``zsre-tf``) has true / false questions about each edit, ``fc`` (CounterFact as
``counterfact-fc``) the claims an evidence statement contradicts.

    python benchmarks/serac_scope.py --k 10 --groups 20 [--distinct-subjects] \
        --out benchmarks/results/serac_scope_smollm2.json

The same breakdown for another memory editor (``--method seprog``: e(x) and the most attended edit as the
classifier, the base model reading its prefix and the edit's words as the answerer; ``--set`` passes its
settings, and ``--scopes`` is SERAC's only):

    python benchmarks/serac_scope.py --method seprog --set artifacts=PARTS --datasets zsre,counterfact --k 10 \
        --groups 8 --distinct-subjects --out benchmarks/results/seprog_scope_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from editkit.configfile import parse_overrides
from editkit.data import load_cases
from editkit.editors import create_editor
from editkit.evaluation.scope import scope_breakdown
from editkit.models.zoo import load

DATA = {  # name -> (file, format: None to detect)
    "zsre": ("../shared/data/zsre/mend_format/zsre_mend_eval_portability_gpt4.json", None),
    "counterfact": ("../shared/data/counterfact/canonical_schema_subsets/counterfact_portability_gpt4.json", None),
    "mquake": ("../shared/data/mquake/akew_MQuAKE-CF.json", None),
    # QA-hard in kind: zsRE with true / false questions about each edit as its hard in-scope inputs
    "qa-hard": ("../shared/data/zsre/mend_format/zsre_mend_eval_portability_gpt4.json", "zsre-tf"),
    # fact checking in kind: evidence statements, claims true / false under them (false ones hard in scope)
    "fc": ("../shared/data/counterfact/easyedit/counterfact-val.json", "counterfact-fc"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="serac", help="a memory editor: serac (each of --scopes), seprog, rp, ...")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an editor setting (repeatable)")
    ap.add_argument("--artifacts", help="trained SERAC parts (default: the packaged ones)")
    ap.add_argument("--datasets", default=",".join(DATA), help=f"comma-separated, of: {', '.join(DATA)}")
    ap.add_argument("--scopes", default="embed,cross,embed-untrained")
    ap.add_argument("--k", type=int, default=10, help="edits in memory per group")
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--distinct-subjects", action="store_true", help="no two edits of a group about one subject")
    ap.add_argument(
        "--thresholds", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7", help="scope thresholds for the sensitivity analysis"
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    names = args.datasets.split(",")
    if unknown := [n for n in names if n not in DATA]:
        ap.error(f"unknown data set(s) {', '.join(unknown)}; known: {', '.join(DATA)}")
    lm = load(args.model)
    results: dict[str, dict[str, object]] = {}
    started = time.perf_counter()
    for name in names:
        path, fmt = DATA[name]
        # MQuAKE: records with several rewrites are left out, so read the whole file and keep the first k x groups.
        mquake = name == "mquake"
        dataset = load_cases(path, format=fmt, limit=None if mquake else args.k * args.groups, skip_invalid=mquake)
        cases = dataset.cases[: args.k * args.groups]
        for scope in args.scopes.split(",") if args.method == "serac" else ["default"]:
            settings = {
                **({"scope": scope} if args.method == "serac" else {}),
                **({"artifacts": args.artifacts} if args.artifacts else {}),
                **parse_overrides(args.set),
            }
            editor = create_editor(args.method, settings)
            editor.prepare(lm)
            results.setdefault(name, {})[scope] = {
                "data": {"path": path, "sha256": dataset.sha256},
                "provenance": editor.provenance(),
                **scope_breakdown(
                    lm,
                    editor,
                    cases,
                    args.k,
                    max_groups=args.groups,
                    thresholds=[float(t) for t in args.thresholds.split(",")],
                    distinct_subjects=args.distinct_subjects,
                ),
            }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "serac_scope",
                "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "model": lm.name,
                "seconds_total": time.perf_counter() - started,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
