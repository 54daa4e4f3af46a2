"""A sweep run three ways: unsharded, sharded with one task at a time, sharded with two at a time. Checks that
every sharded run's merged results equal the unsharded run's (every per-case record and aggregate; times, memory
and where it ran aside) and times the sharded sweep with 1 and with 2 parallel tasks.

The unsharded sweep runs first: it warms the caches every run then shares (ROME's key statistics, the unedited
model's reference), so the two timed sweeps start alike. Each sweep writes to its own folder under ``--work``.

    python benchmarks/sweep_check.py benchmarks/configs/sweep_smollm2_cf20.yaml \\
        --work ~/.cache/editkit/runs/sweep_check --out benchmarks/results/sweep/sweep_check_smollm2_cf20.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from editkit.files import atomic_write
from editkit.provenance import code_version, environment

TIMING = {"total_seconds", "peak_memory_mb", "environment", "edit_seconds", "seconds_per_edit", "seconds"}
PROVENANCE = {"run", "shards"}  # the merged file's own: its run block names its folder, shards are added


def without(value: Any, keys: set[str]) -> Any:
    """``value`` with every dict key in ``keys`` left out, at any depth."""
    if isinstance(value, dict):
        return {k: without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without(v, keys) for v in value]
    return value


def sweep(spec: dict[str, Any], folder: Path, shards: int, parallel: int) -> float:
    """Run ``spec`` into ``folder`` with ``shards`` and at most ``parallel`` tasks at once; the wall seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "sweep.yaml"
    config.write_text(yaml.safe_dump({**spec, "out_dir": str(folder / "out"), "shards": shards}))
    t0 = time.perf_counter()
    editkit = Path(sys.executable).with_name("editkit")
    subprocess.run([str(editkit), "sweep", str(config), "--max-parallel", str(parallel)], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="a sweep file (its out_dir is replaced by folders under --work)")
    ap.add_argument("--work", required=True, help="folder for the three sweeps' results")
    ap.add_argument("--out", required=True, help="the check's results JSON")
    args = ap.parse_args()
    spec = yaml.safe_load(Path(args.config).read_text())
    work = Path(args.work).expanduser()
    shards = int(spec.get("shards", 2))
    wall = {
        "unsharded_2_parallel": sweep(spec, work / "unsharded", 1, 2),
        "sharded_1_parallel": sweep(spec, work / "sharded1", shards, 1),
        "sharded_2_parallel": sweep(spec, work / "sharded2", shards, 2),
    }
    runs = {}
    for single in sorted((work / "unsharded" / "out").glob("*.json")):
        whole = json.loads(single.read_text())
        row: dict[str, Any] = {"n_cases": whole["n_cases"], "aggregates": whole["aggregates"]}
        for name in ("sharded1", "sharded2"):
            merged = json.loads((work / name / "out" / single.name).read_text())
            row[f"{name}_shards"] = [s["case_range"] for s in merged.get("shards", [])]
            row[f"{name}_equal"] = without(merged, TIMING | PROVENANCE) == without(whole, TIMING | {"run"})
        runs[single.stem] = row
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "code_version": code_version(),
        "environment": environment(),
        "sweep": spec,
        "compared_without": sorted(TIMING | PROVENANCE),
        "wall_seconds": wall,
        "runs": runs,
    }
    atomic_write(Path(args.out), json.dumps(results, indent=1))
    equal = {k: (v["sharded1_equal"], v["sharded2_equal"]) for k, v in runs.items()}
    print(json.dumps({"wall_seconds": wall, "equal": equal}))


if __name__ == "__main__":
    main()
