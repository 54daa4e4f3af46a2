"""Evaluation protocols. Generic over methods: they call ``editor.apply`` and read ``handle.model``.

* :func:`independent_edits`: every case is edited into the *unedited* model, scored, and rolled back (the
  protocol of ROME's CounterFact table). The unedited scores of each case are recorded beside the edited ones.
"""

from __future__ import annotations

import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import editkit
from editkit.data.formats import Dataset
from editkit.editors.base import Editor
from editkit.edits import EditCase
from editkit.evaluation.counterfact import aggregate, case_scores, probe_margins
from editkit.models.lm import LanguageModel

RESULTS_VERSION = 1


def code_version() -> str:
    """editkit's version plus the git commit of its source tree, when there is one."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "src" / "editkit").is_dir():  # installed from a wheel: no source tree to ask
        return editkit.__version__
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "src"], capture_output=True, text=True)
        return f"{editkit.__version__}+{commit}{'.dirty' if dirty.stdout.strip() else ''}"
    except (OSError, subprocess.CalledProcessError):
        return editkit.__version__


def independent_edits(
    lm: LanguageModel,
    editor: Editor,
    cases: Sequence[EditCase],
    *,
    progress: bool = True,
    datasets: Sequence[Dataset] = (),
) -> dict[str, Any]:
    """Edit each case into the unedited model, score it, roll it back. Returns a results dict."""
    records: list[dict[str, Any]] = []
    iterator: Any = cases
    if progress:
        from rich.progress import track

        iterator = track(cases, description=f"{editor.name} on {lm.name}")
    t_start = time.perf_counter()
    for case in iterator:
        pre = case_scores(probe_margins(lm, case))
        t0 = time.perf_counter()
        handle = editor.apply(lm, [case.request])
        edit_seconds = time.perf_counter() - t0
        try:
            post = case_scores(probe_margins(handle.model, case))
        finally:
            handle.rollback()
        records.append(
            {
                "case_id": case.request.case_id,
                "request": case.request.to_dict(),
                "pre": pre,
                "post": post,
                "edit_seconds": edit_seconds,
                "info": {k: v for k, v in handle.info.items() if isinstance(v, int | float | str | bool)},
            }
        )
    seconds = [r["edit_seconds"] for r in records]
    return {
        "version": RESULTS_VERSION,
        "protocol": "independent",
        "code_version": code_version(),
        "model": lm.name,
        "method": editor.name,
        "config": editor.config.to_dict(),
        "data": [
            {
                "path": str(d.path),
                "format": d.format,
                "sha256": d.sha256,
                "records": d.n_records,
                "invalid_records_skipped": len(d.skipped),
            }
            for d in datasets
        ],
        "n_cases": len(records),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(lm.device),
        },
        "aggregates": {
            **aggregate(records, "post"),
            **{f"unedited_{k}": v for k, v in aggregate(records, "pre").items()},
            "seconds_per_edit": sum(seconds) / max(len(seconds), 1),
        },
        "total_seconds": time.perf_counter() - t_start,
        "records": records,
    }
