#!/usr/bin/env bash
# Fact checking in kind (docs/benchmarks.md, "Fact checking in kind"): SERAC (embedding and cross classifier), RP,
# FT and ROME on the first N held-out CounterFact records (counterfact-val.json) as fact-checking cases, batch
# protocol, k = 1, SmolLM2-135M, one thread, one run after another. The memory editors edit with the evidence
# statement (--format counterfact-fc), the weight editors with the same fact as a rewrite
# (--format counterfact-fc-rewrite); every run is scored on the same claims and scores the unedited model too.
# Usage: benchmarks/fact_check_in_kind.sh [N]   (from the repository root; data at $EDITKIT_DATA)
set -euo pipefail
n=${1:-100}
data=${EDITKIT_DATA:-../shared/data}/counterfact/easyedit/counterfact-val.json
out=benchmarks/results/fc
mkdir -p "$out"
run() {  # label format method [--set ...]
    local label=$1 format=$2 method=$3
    shift 3
    editkit eval --method "$method" --data "$data" --format "$format" --limit "$n" --threads 1 \
        --label "$label" --out "$out/${label}_smollm2_cf-val${n}.json" "$@"
}
run serac-embed counterfact-fc serac
run serac-cross counterfact-fc serac --set scope=cross
run rp counterfact-fc rp
run ft counterfact-fc-rewrite ft
run rome counterfact-fc-rewrite rome
