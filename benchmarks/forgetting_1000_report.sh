#!/usr/bin/env bash
# The forgetting study's report at 1,000 edits (docs/benchmarks.md, "The forgetting study at 1,000 edits"):
# `editkit report` over the four methods' results (Table 3 and the plots) and each run's span table beside
# AlphaEdit's, into docs/report/sequential_1000; ROME with the edit guard beside unguarded ROME, once the guard's
# run has begun, into docs/report/sequential_1000_guard.
# A method's results are the committed file (benchmarks/results/sequential_METHOD_smollm2_cf1000.json, made by
# configs/sequential_METHOD_1000.yaml), else the sweep's (configs/sweep_forgetting_1000*.yaml), else the sweep's
# snapshot of the unfinished run ("n of 1,000 edits so far" in the report).
#   bash benchmarks/forgetting_1000_report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/report/sequential_1000
alpha=benchmarks/results/sequential_alphaedit_smollm2_cf1000.json
[[ -e $alpha ]] || { echo "$alpha is missing: the span tables set each run beside it" >&2; exit 2; }
results_of() {  # prints method $1's results file, else nothing
  local f
  for f in benchmarks/results/sequential_"$1"_smollm2_cf1000.json \
           benchmarks/results/{sweep,running}/forgetting_1000/"$1"_smollm2-135m_file_seed0_sequential.json; do
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
  echo "Made by \`bash benchmarks/forgetting_1000_report.sh\` (benchmarks/span_table.py) from:"
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
rome=$(results_of rome) guarded=$(results_of rome-guard)
[[ -z $rome || -z $guarded ]] || .venv/bin/editkit report "$rome" "$guarded" --out docs/report/sequential_1000_guard
