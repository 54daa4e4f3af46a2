#!/usr/bin/env bash
# The forgetting study at 1,000 CounterFact edits on SmolLM2: AlphaEdit, ROME, MEMIT (lambda 1,500) and FT-C.
# Every run keeps its state under $EDITKIT_CACHE/runs (default ~/.cache/editkit/runs), outside the work tree,
# so the same command resumes where it stopped, across sessions on one machine; a finished run only rewrites
# its results file. (A new machine starts with an empty cache: the runs then resume from their committed
# snapshots, below, or start afresh.)
#   bash benchmarks/forgetting_1000.sh [method ...]          # default: all four, one after another
#   JOBS=2 bash benchmarks/forgetting_1000.sh [method ...]   # two at a time, one torch thread each
# rome-guard (not among the default four) is ROME's run with the edit guard on.
# One after another with two threads each, the four take about 17 hours on 2 cores (AlphaEdit 5.3, ROME about
# 5). Editing SmolLM2 gains little from a second thread: two runs with one thread each make 1.4-1.6x the edits
# per hour of one run with two (benchmarks/thread_lanes.py), so JOBS=2 takes about 13 hours for all four.
#   bash benchmarks/forgetting_1000.sh snapshot              # copy unfinished runs' results into the work tree
#   bash benchmarks/forgetting_1000.sh report                # the four runs' report and span tables, in docs/
#                                                            # (and ROME's with the guard beside ROME's, once begun)
# A cache can be lost with its machine, and an unfinished run's records with it (ROME's first 800 edits were).
# `snapshot` copies each unfinished run's partial results (records and checkpoints, no weights) to
# benchmarks/results/running/, to commit: `editkit report` reads them as "n of 1,000 edits so far", and a run
# with no state resumes from its snapshot (below). A snapshot further along than the run is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${EDITKIT_CACHE:-$HOME/.cache/editkit}/runs"
mkdir -p "$runs"
edits() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["n_edits"])' "$1"; }
if [[ ${1:-} == snapshot ]]; then
  mkdir -p benchmarks/results/running
  for state in "$runs"/sequential_*_smollm2_cf1000.state; do
    name=$(basename "$state" .state)
    if [[ -e benchmarks/results/$name.json ]]; then  # finished: its results file replaces the snapshot
      rm -f "benchmarks/results/running/$name.json"
    elif [[ -e $state/results.json ]]; then
      if [[ -e benchmarks/results/running/$name.json ]] &&
        (($(edits "benchmarks/results/running/$name.json") > $(edits "$state/results.json"))); then
        echo "benchmarks/results/running/$name.json is further along than $state: kept" >&2
        continue
      fi
      cp "$state"/results.json "benchmarks/results/running/$name.json.tmp"
      mv "benchmarks/results/running/$name.json.tmp" "benchmarks/results/running/$name.json"
      echo "benchmarks/results/running/$name.json" >&2
    fi
  done
  exit 0
fi
if [[ ${1:-} == report ]]; then
  # Each method's finished results, else its committed snapshot ("n of 1,000 edits so far"): one report of all
  # four (plots, Table 3) and each run's span table beside AlphaEdit's, as docs/benchmarks.md quotes them.
  out=docs/report/sequential_1000
  alpha=benchmarks/results/sequential_alphaedit_smollm2_cf1000.json
  [[ -e $alpha ]] || { echo "$alpha is missing: the span tables set each run beside it" >&2; exit 2; }
  # prints method $1's finished results, else its snapshot, else nothing
  results_of() {
    local f
    for f in benchmarks/results/{,running/}sequential_"$1"_smollm2_cf1000.json; do
      [[ -e $f ]] && { echo "$f"; return; }
    done
  }
  files=()
  for m in alphaedit ft-c memit-l1500 rome; do
    f=$(results_of "$m")
    [[ -z $f ]] || files+=("$f")
  done
  .venv/bin/editkit report "${files[@]}" --out "$out"
  {
    echo "# Span tables of the 1,000-edit runs, beside AlphaEdit's"
    echo
    echo "Made by \`bash benchmarks/forgetting_1000.sh report\` (benchmarks/span_table.py) from:"
    echo
    for f in "${files[@]}"; do echo "- \`$f\`"; done
    for f in "${files[@]}"; do
      beside=(--beside "$alpha")
      [[ $f == "$alpha" ]] && beside=()
      echo
      .venv/bin/python benchmarks/span_table.py "$f" "${beside[@]}" --spans 200,400,600,800,1000
    done
  } > "$out/spans.md.tmp"
  mv "$out/spans.md.tmp" "$out/spans.md"
  echo "$out/report.md, $out/spans.md" >&2
  # ROME with the edit guard, when it has begun: its own report beside the unguarded run
  rome=$(results_of rome) guarded=$(results_of rome-guard)
  [[ -z $rome || -z $guarded ]] || .venv/bin/editkit report "$rome" "$guarded" --out docs/report/sequential_1000_guard
  exit 0
fi
at_once="${JOBS:-1}"
[[ $at_once =~ ^[1-9][0-9]*$ ]] || { echo "JOBS must be a positive number, got '$at_once'" >&2; exit 2; }
threads=()
[[ $at_once -eq 1 ]] || threads=(--threads 1)
methods=("$@")
[[ ${#methods[@]} -gt 0 ]] || methods=(alphaedit rome memit-l1500 ft-c)
for m in "${methods[@]}"; do
  [[ -f "benchmarks/configs/sequential_${m/memit-l1500/memit_l1500}_1000.yaml" ]] ||
    { echo "no config for '$m' (alphaedit, memit-l1500, rome, ft-c; rome-guard: ROME with the edit guard)" >&2; exit 2; }
done

# A run whose state is gone (a new machine) starts from its committed snapshot when the snapshot's records can
# be replayed (ROME, MEMIT and AlphaEdit keep each edit's optimised target in its record): editkit rebuilds the
# weights from them, edit by edit, in a fraction of the time the edits took, checks every step against the
# drift the run recorded, and goes on. A snapshot written before records kept their targets cannot be replayed.
seed_results() {
  local state=$1 snapshot
  snapshot=benchmarks/results/running/$(basename "$state" .state).json
  [[ ! -e $state/results.json && -e $snapshot ]] || return 0
  if grep -q '"replay"' "$snapshot"; then
    mkdir -p "$state"
    cp "$snapshot" "$state/results.json"
    echo "$(basename "$state"): resuming from $snapshot" >&2
  else
    echo "$(basename "$state"): $snapshot cannot be replayed (written before records kept their targets)" >&2
  fi
}

# The runs edit the same cases of the same model: a new run's state folder starts with a copy of the unedited
# model's reference and scores from one made before (editkit checks the model, data and cases they were made
# on and recomputes them if those differ), which saves it 15-30 minutes. Prints whether it found one.
seed_state() {
  local state=$1 other
  [[ -e $state/reference.json ]] && { echo yes; return; }
  for other in "$runs"/sequential_*_smollm2_cf1000.state; do
    if [[ $other != "$state" && -e $other/reference.json && -e $other/unedited.json ]]; then
      mkdir -p "$state"
      cp "$other"/reference.safetensors "$other"/unedited.json "$state"/
      cp "$other"/reference.json "$state"/  # last: the pair is complete once it is there
      echo yes
      return
    fi
  done
  echo no
}

failed=0
for m in "${methods[@]}"; do
  config="benchmarks/configs/sequential_${m/memit-l1500/memit_l1500}_1000.yaml"
  state="$runs/sequential_${m}_smollm2_cf1000.state"
  seed_results "$state"
  seeded=$(seed_state "$state")
  # Side by side, a run with nothing to start from waits while another builds the reference, rather than
  # building its own on the other core.
  while [[ $seeded == no && -n $(jobs -rp) ]]; do
    sleep 30
    seeded=$(seed_state "$state")
  done
  while [[ $(jobs -rp | wc -l) -ge $at_once ]]; do
    wait -n || failed=1
  done
  echo "== $m: $config" >&2
  .venv/bin/editkit eval --config "$config" --state "$state" "${threads[@]}" &
  [[ $at_once -gt 1 ]] || { wait $! || failed=1; }
done
while [[ -n $(jobs -rp) ]]; do
  wait -n || failed=1
done
exit $failed
