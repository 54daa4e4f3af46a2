#!/usr/bin/env bash
# The forgetting study at 1,000 CounterFact edits on SmolLM2: AlphaEdit, ROME, MEMIT (lambda 1,500) and FT-C,
# one run after another (one CPU-heavy job at a time; about 17 hours in all on 2 cores: AlphaEdit 5.3, ROME about 5).
# Every run keeps its state under $EDITKIT_CACHE/runs (default ~/.cache/editkit/runs), outside the work tree,
# so the same command resumes where it stopped, across sessions; a finished run only rewrites its results file.
#   bash benchmarks/forgetting_1000.sh [method ...]      # default: all four, in this order
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${EDITKIT_CACHE:-$HOME/.cache/editkit}/runs"
mkdir -p "$runs"
# The four runs edit the same cases of the same model: a new run's state folder starts with a copy of the
# unedited model's reference and scores from one made before (editkit checks the model, data and cases they
# were made on and recomputes them if those differ), which saves it about half an hour.
methods=("$@")
[[ ${#methods[@]} -gt 0 ]] || methods=(alphaedit rome memit-l1500 ft-c)
for m in "${methods[@]}"; do
  config="benchmarks/configs/sequential_${m/memit-l1500/memit_l1500}_1000.yaml"
  [[ -f $config ]] || { echo "no config $config for '$m' (alphaedit, memit-l1500, rome, ft-c)" >&2; exit 2; }
  state="$runs/sequential_${m}_smollm2_cf1000.state"
  if [[ ! -e $state/reference.json ]]; then
    for other in "$runs"/sequential_*_smollm2_cf1000.state; do
      if [[ -e $other/reference.json && -e $other/unedited.json ]]; then
        mkdir -p "$state"
        cp "$other"/reference.safetensors "$other"/unedited.json "$state"/
        cp "$other"/reference.json "$state"/  # last: the pair is complete once it is there
        break
      fi
    done
  fi
  echo "== $m: $config" >&2
  .venv/bin/editkit eval --config "$config" --state "$state"
done
