#!/usr/bin/env bash
# Fact checking in kind (docs/benchmarks.md, "Fact checking in kind"): SERAC (embedding and cross classifier), RP,
# FT and ROME on the first held-out CounterFact records (counterfact-val.json) as fact-checking cases, batch
# protocol, k = 1, SmolLM2-135M, one thread, one run after another. The memory editors edit with the evidence
# statement (--format counterfact-fc), the weight editors with the same fact as a rewrite
# (--format counterfact-fc-rewrite); every run is scored on the same claims and scores the unedited model too.
# A run whose results file exists is skipped (run the script again to finish what a stop left).
# Usage: benchmarks/fact_check_in_kind.sh [N] [M]   (N records for SERAC and RP, M <= N for FT and ROME, ~7 s
# an edit here; default M = N; from the repository root, data at $EDITKIT_DATA)
set -euo pipefail
n=${1:-100}
m=${2:-$n}
data=${EDITKIT_DATA:-../shared/data}/counterfact/easyedit/counterfact-val.json
out=benchmarks/results/fc
mkdir -p "$out"
run() {  # label format method cases [--set ...]
    local label=$1 format=$2 method=$3 cases=$4
    shift 4
    local file="$out/${label}_smollm2_cf-val${cases}.json"
    [[ -e $file ]] && return 0
    editkit eval --method "$method" --data "$data" --format "$format" --limit "$cases" --threads 1 \
        --label "$label" --out "$file" "$@"
}
run serac-embed counterfact-fc serac "$n"
run serac-cross counterfact-fc serac "$n" --set scope=cross
# SERAC with parts trained on claims as well (benchmarks/configs/train_serac_hard.yaml), when they are there
if [[ -d build/serac-hard-packed ]]; then
    run serac-hard counterfact-fc serac "$n" --set artifacts=build/serac-hard-packed
fi
run rp counterfact-fc rp "$n"
run ft counterfact-fc-rewrite ft "$m"
run rome counterfact-fc-rewrite rome "$m"
