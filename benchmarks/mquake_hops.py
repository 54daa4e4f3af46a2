"""MQuAKE by number of hops: per method, the edited cases' scores grouped by how many hops their multi-hop
questions take (``len(new_single_hops)`` in the data file), from batch-protocol results of the MQuAKE matrix.

    python benchmarks/mquake_hops.py benchmarks/results/mquake/*.json \
        --data ../shared/data/mquake/akew_MQuAKE-CF.json --out benchmarks/results/mquake_hops.json

Multi-hop accuracy is ``hard_in_acc``: the share of a case's multi-hop questions whose greedy answer is the new
answer or one of its aliases, averaged over cases (MQuAKE counts a case as solved when any of its three questions
is: that needs per-question results, which the records do not keep). Also per hop count: the unedited model's
multi-hop accuracy on the same cases, the rewrites' efficacy and their hop questions' exact match (rephrase_acc).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Any

from editkit.data import load_cases
from editkit.evaluation.results import load_results
from editkit.files import atomic_write, file_sha256
from editkit.provenance import code_version

KEYS = ("hard_in_acc", "efficacy", "rephrase_acc")


def hops_by_case(data: Path) -> dict[str, int]:
    records = json.loads(data.read_text(encoding="utf-8"))
    ds = load_cases(data)
    return {case.request.case_id: len(rec["new_single_hops"]) for case, rec in zip(ds.cases, records, strict=True)}


def by_hops(results: dict[str, Any], hops: dict[str, int]) -> dict[str, dict[str, float]]:
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in results["records"]:
        groups[hops[record["case_id"]]].append(record)
    return {
        str(n): {
            "cases": len(records),
            "unedited_hard_in_acc": mean(r["pre"]["hard_in_acc"] for r in records),
            **{k: mean(r["post"][k] for r in records) for k in KEYS},
        }
        for n, records in sorted(groups.items())
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="batch results of the MQuAKE matrix")
    ap.add_argument("--data", required=True, help="the MQuAKE file the runs read")
    ap.add_argument("--out", required=True, help="JSON file for the table")
    args = ap.parse_args()
    hops = hops_by_case(Path(args.data))
    table = {}
    for path in args.results:
        results = load_results(path)
        label = str((results.get("run") or {}).get("label") or results["method"])
        table[label] = {"file": path, "n_cases": results["n_cases"], "by_hops": by_hops(results, hops)}
    out = {
        "data": {"path": args.data, "sha256": file_sha256(args.data)},
        "code_version": code_version(),
        "metric": "hard_in_acc: share of a case's multi-hop questions answered with the new answer (or an alias)",
        "methods": table,
    }
    atomic_write(args.out, json.dumps(out, indent=1))
    counts = sorted({n for m in table.values() for n in m["by_hops"]}, key=int)
    print("| method | " + " | ".join(f"{n} hops: multi-hop (unedited) / efficacy" for n in counts) + " |")
    print("|---|" + "---|" * len(counts))
    for label, m in table.items():
        cells = []
        for n in counts:
            g = m["by_hops"].get(n)
            cells.append(
                f"{g['hard_in_acc']:.2f} ({g['unedited_hard_in_acc']:.2f}) / {g['efficacy']:.2f}, n={g['cases']}"
                if g
                else "-"
            )
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
