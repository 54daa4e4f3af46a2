#!/usr/bin/env bash
# ConvSent in kind: sentiment edits given as statements ("TOPIC: X SENTIMENT: positive", SERAC §5) on SmolLM2-135M,
# scored with ES_sent (SERAC eq. 6) and the KL drawdown (eq. 7); each results file also holds the unedited
# model's scores (aggregates "unedited_*").
#   bash benchmarks/convsent_in_kind.sh [method ...]    # default: rp serac, one after another
# N (default 30): the first N records of KnowEdit's ConvSent blender_test.json (alternately positive and negative
# edits; editkit.data.formats.convsent). One torch thread; about 15 minutes a method on one core.
# SET (optional): method settings, space-separated KEY=VALUE, each passed as --set (e.g. SET=artifacts=DIR for
# SERAC's ConvSent parts); TAG (optional): appended to the label and the results file's name.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${N:-30}
out=${OUT:-benchmarks/results/convsent}
data=${EDITKIT_DATA:-../shared/data}/knowedit/benchmark/Convsent/blender_test.json
tag=${TAG:+-$TAG}
sets=()
for kv in ${SET:-}; do sets+=(--set "$kv"); done
mkdir -p "$out"
for method in "${@:-rp serac}"; do
  for m in $method; do
    editkit eval --method "$m" --data "$data" --limit "$n" --threads 1 --label "$m$tag-convsent-test$n" \
      "${sets[@]}" --out "$out/${m}${tag//-/_}_smollm2_convsent_test$n.json"
  done
done
