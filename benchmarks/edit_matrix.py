"""Every run of a matrix (methods x data sets) through the batch protocol, one results JSON per pair: SERAC's
Table 3 (k = 10) and Figure 3 (ES - DD against k) in kind.

The matrix is a YAML file (``editkit.evaluation.runner.matrix_configs``)::

    out_dir: benchmarks/results/table3
    model: smollm2-135m
    edits_per_step: [10]
    datasets:
      zsre: {data: ../shared/data/zsre/mend_format/zsre_mend_eval_portability_gpt4.json, limit: 200}
    runs:
      - {label: serac-embed, method: serac, settings: {scope: embed}}
      - {label: rome, method: rome, settings: {corpus: ...}, limit: 50}   # a run may lower the limit

Each pair writes ``OUT_DIR/DATASET_LABEL.json``; pairs whose file exists are skipped unless --force, so an
interrupted matrix continues where it stopped. Runs go one after another (one CPU-heavy job at a time).

    python benchmarks/edit_matrix.py --config benchmarks/configs/matrix_table3.yaml [--only serac-embed,rp]
    editkit report benchmarks/results/table3/*.json --out docs/report/table3
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from editkit.evaluation.runner import matrix_configs, run

log = logging.getLogger("edit_matrix")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="the matrix (YAML)")
    ap.add_argument("--only", help="comma-separated run labels to run (default: all)")
    ap.add_argument("--force", action="store_true", help="rerun pairs whose results file exists")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    only = set(args.only.split(",")) if args.only else None
    for config in matrix_configs(args.config):
        if only and config.label not in only:
            continue
        if Path(config.out).exists() and not args.force:
            log.info("skip %s (exists)", config.out)
            continue
        started = time.perf_counter()
        results = run(config)
        agg = results["aggregates"]
        log.info(
            "%s: es %.3f dd %.3f in %.0f s",
            config.out,
            agg.get("es", float("nan")),
            agg.get("dd", float("nan")),
            time.perf_counter() - started,
        )


if __name__ == "__main__":
    main()
