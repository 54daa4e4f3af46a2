"""Batch-protocol results of case-range shards merged into the results of the whole run.

The batch protocol edits each group of cases into the unedited model, scores it and rolls back, so a group's
records do not depend on the other groups. A shard (``case_range``) edits the groups that begin in its range and
scores the unedited model on every case of the run, in the batches the whole run scores them in (a case's
scores depend on the last bits of its batch's padding), so its records and ``unedited_*`` aggregates are the
whole run's. The merged file has the shards' common header, every record and every group's ``info`` in group
order, and the edited aggregates recomputed from the records as the batch protocol computes them: scores and
aggregates equal a single-process run's. What differs is provenance: ``total_seconds`` is the sum of the
shards', ``peak_memory_mb`` the largest shard's, ``environment`` the first shard's, and ``shards`` (added) lists
each shard's case range, time and environment; timings (``edit_seconds``, ``seconds_per_edit``, a group's
``info.seconds``) differ between any two runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from editkit.errors import ValidationError
from editkit.evaluation.batch import k_aggregates
from editkit.evaluation.runner import RunConfig

# what the shards of one run share: the run's header, cases and the unedited model's scores of every case
SAME_IN_EVERY_SHARD = ("protocol", "model", "method", "config", "data", "case_ids", "ks", "distinct_subjects")


def merge_batch(config: RunConfig, shards: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The results of the batch run ``config`` from its shards' results, given in case order."""
    if not shards:
        raise ValidationError("no shard results to merge")
    first = shards[0]
    for s in shards:
        if any(s[key] != first[key] for key in SAME_IN_EVERY_SHARD):
            raise ValidationError(f"shard {s['run']['case_range']} is not a shard of the same run as the first")
    ks = first["ks"]
    records: list[dict[str, Any]] = []
    by_k: dict[str, dict[str, float]] = {}
    for k in ks:
        k_records = sorted((r for s in shards for r in s["records"] if r["k"] == k), key=lambda r: r["group"])
        by_k[str(k)] = k_aggregates(k_records)
        records += k_records
    unedited = {k: v for k, v in first["aggregates"].items() if k.startswith("unedited_")}
    groups = sorted((g for s in shards for g in s["groups"]), key=lambda g: (ks.index(g["k"]), g["group"]))
    head = {k: v for k, v in first.items() if k not in ("records", "groups", "aggregates", "aggregates_by_k")}
    return {
        **head,
        "aggregates": {**by_k[str(max(ks))], **unedited},
        "aggregates_by_k": by_k,
        "total_seconds": sum(s["total_seconds"] for s in shards),
        "peak_memory_mb": max(s["peak_memory_mb"] for s in shards),
        "groups": groups,
        "records": records,
        "run": config.to_dict(),
        "shards": [
            {
                "case_range": s["run"]["case_range"],
                "total_seconds": s["total_seconds"],
                "environment": s["environment"],
            }
            for s in shards
        ],
    }
