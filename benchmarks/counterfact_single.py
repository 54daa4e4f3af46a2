"""Independent CounterFact edits on one model: efficacy, paraphrase and neighborhood scores, seconds per edit.

    python benchmarks/counterfact_single.py --method rome --limit 100 \
        --data ../shared/data/counterfact/canonical_schema_subsets/counterfact_portability_gpt4.json \
        --set corpus=../shared/data/wikitext/wikitext-2/valid.txt --out results/rome_cf100.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import yaml

from editkit.data import load_cases
from editkit.editors import create_editor
from editkit.evaluation.protocols import independent_edits
from editkit.models.zoo import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", required=True)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method config override")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    lm = load(args.model)
    editor = create_editor(args.method, overrides)
    data = load_cases(args.data, limit=args.limit)
    results = independent_edits(lm, editor, data.cases, datasets=[data])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    agg = results["aggregates"]
    print(json.dumps({k: round(v, 4) for k, v in agg.items()}, indent=1))


if __name__ == "__main__":
    main()
