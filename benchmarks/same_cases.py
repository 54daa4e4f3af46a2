"""Single-edit CounterFact runs compared on the cases they all scored: the first N cases common to every run
(a shorter run beside the first N cases of a longer one), as a Markdown table.

    python benchmarks/same_cases.py benchmarks/results/rome_smollm2_cf100.json \
        benchmarks/results/rome-l5_smollm2_cf40.json --out benchmarks/results/rome_layers_smollm2_cf40.json

Each run's efficacy, paraphrase and neighborhood are averaged over those cases from its per-case records (the
post-edit scores), with the median seconds per edit; ``--out`` writes the numbers and the files' sha256.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean, median
from typing import Any

from editkit.errors import ValidationError
from editkit.evaluation.results import load_results
from editkit.files import atomic_write, file_sha256

KINDS = ("efficacy", "paraphrase", "neighborhood")


def label(run: dict[str, Any]) -> str:
    config = run.get("config") or {}
    if "layer" not in config:
        return str(run["method"])
    return f"{run['method']} (layer {config['layer'] if config['layer'] is not None else 'default'})"


def compare(paths: list[Path]) -> dict[str, Any]:
    runs = [load_results(p) for p in paths]
    if any(r["protocol"] != "batch" or r.get("ks") != [1] for r in runs):
        raise ValidationError("every run must be a single-edit batch run (k = 1)")
    n = min(len(r["case_ids"]) for r in runs)
    ids = runs[0]["case_ids"][:n]
    if any(r["case_ids"][:n] != ids for r in runs):
        raise ValidationError("the runs do not start with the same cases")
    rows = []
    for path, run in zip(paths, runs, strict=True):
        records = run["records"][:n]
        row = {k: mean(r["post"][k] for r in records) for k in KINDS}
        row.update(label=label(run), path=str(path), sha256=file_sha256(path))
        row["median_seconds"] = median(r["edit_seconds"] for r in records)
        rows.append(row)
    return {"n_cases": n, "case_ids": ids, "runs": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    table = compare(args.results)
    print(f"first {table['n_cases']} cases")
    print("| run | efficacy | paraphrase | neighborhood | s / edit (median) |\n|---|---|---|---|---|")
    for r in table["runs"]:
        print(
            f"| {r['label']} | {r['efficacy']:.2f} | {r['paraphrase']:.2f} | {r['neighborhood']:.3f} | "
            f"{r['median_seconds']:.1f} |"
        )
    if args.out:
        atomic_write(args.out, json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
