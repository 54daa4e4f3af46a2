#!/usr/bin/env bash
# The forgetting study at 1,000 CounterFact edits on SmolLM2: AlphaEdit, MEMIT (lambda 1,500), ROME and FT-C,
# one run after another (one CPU-heavy job at a time; about 11 CPU hours in all on 2 cores). Every run keeps
# its state under $EDITKIT_CACHE/runs (default ~/.cache/editkit/runs), outside the work tree, so the same
# command resumes where it stopped, across sessions; a finished run only rewrites its results file.
#   bash benchmarks/forgetting_1000.sh [method ...]      # default: all four, in this order
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${EDITKIT_CACHE:-$HOME/.cache/editkit}/runs"
mkdir -p "$runs"
methods=("$@")
[[ ${#methods[@]} -gt 0 ]] || methods=(alphaedit memit-l1500 rome ft-c)
for m in "${methods[@]}"; do
  config="benchmarks/configs/sequential_${m/memit-l1500/memit_l1500}_1000.yaml"
  [[ -f $config ]] || { echo "no config $config for '$m' (alphaedit, memit-l1500, rome, ft-c)" >&2; exit 2; }
  echo "== $m: $config" >&2
  .venv/bin/editkit eval --config "$config" --state "$runs/sequential_${m}_smollm2_cf1000.state"
done
