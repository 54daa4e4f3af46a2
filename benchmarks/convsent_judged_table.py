"""The table of docs/benchmarks.md's "ConvSent: the sentiment of generated text": per results file of
`editkit eval --judge-tokens N` (ConvSent, batch protocol, k = 1), the unedited model's and the edited model's
judged ES_sent (share of in-scope generations with the requested sentiment, and the mean judged probability of
it), split by the requested sentiment (read from each record's generations), the share of blank generations,
DD and KL.

    python benchmarks/convsent_judged_table.py benchmarks/results/convsent/*judged*.json
"""

from __future__ import annotations

import argparse
from statistics import mean
from typing import Any

from editkit.errors import ValidationError
from editkit.evaluation.results import load_results


def split(records: list[dict[str, Any]], side: str, score: str) -> str:
    """Mean ``score`` of ``side`` ("pre" / "post") over positive, then negative edits."""
    cells = []
    for want in ("positive", "negative"):
        values = [r[side][score] for r in records if r.get("generations") and r["generations"][0]["sentiment"] == want]
        cells.append(f"{mean(values):.3f}" if values else "-")
    return " / ".join(cells)


def rows(run: dict[str, Any]) -> list[str]:
    records = [r for r in run["records"] if "es_sent_judged" in r["post"]]
    if not records:
        raise ValidationError(f"{run['_path']}: no judged generations (run editkit eval with --judge-tokens N)")
    label = (run.get("run") or {}).get("label") or run["method"]
    agg = run["aggregates"]
    out = []
    for name, side, prefix in ((f"unedited (in {label})", "pre", "unedited_"), (label, "post", "")):
        out.append(
            f"| {name} | {len(records)} | **{agg[prefix + 'es_sent_judged']:.3f}** | "
            f"{split(records, side, 'es_sent_judged')} | {agg[prefix + 'es_sent_judged_p']:.3f} | "
            f"{split(records, side, 'es_sent_judged_p')} | {agg[prefix + 'judged_blank']:.3f} | "
            f"{agg[prefix + 'dd']:.3f} | "
            f"{agg[prefix + 'kl_drawdown']:.4f} |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+")
    args = parser.parse_args()
    print(
        "| run | cases | **ES_sent judged** | positive / negative edits | mean P(wanted) | positive / negative "
        "| blank | DD | KL |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for path in args.results:
        run = load_results(path)
        run["_path"] = path
        for line in rows(run):
            print(line)


if __name__ == "__main__":
    main()
