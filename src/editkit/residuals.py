"""Target residuals optimised ahead of a batch run, in parts (``editkit residuals --part I/N``).

A locate editor (ROME, MEMIT, AlphaEdit) with ``residual_cache=FOLDER`` spends a batch run's time on one
optimisation per request; MEMIT's 10,000 edits at once is one group, which no case range can split. Here the
run's requests (:func:`~editkit.evaluation.batch.batch_requests`) are cut into N equal ranges and one range's
residuals are written to the folder; the run, and every part sharing the folder, reads it again before each
residual, so processes or machines split the work. This sits outside :mod:`editkit.evaluation`, which talks to
editors through their contract only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from editkit.errors import ValidationError
from editkit.evaluation.runner import RunConfig, check_subjects, run_cases


def residual_folder(config: RunConfig) -> str | None:
    """The folder ``config``'s editor keeps its target residuals in, or None (no such editor, or no folder)."""
    from editkit.editors import create_editor
    from editkit.editors.locate import LocateEditor

    editor = create_editor(config.method, config.settings)
    return editor.config.residual_cache if isinstance(editor, LocateEditor) else None


def _run_requests(config: RunConfig) -> tuple[Any, list[Any]]:
    """The locate editor ``config`` describes and every request its batch run edits, in the run's order (bad
    input refused in one line)."""
    from editkit.editors import create_editor
    from editkit.editors.locate import LocateEditor
    from editkit.evaluation.batch import batch_requests
    from editkit.models.zoo import check_model_name

    check_model_name(config.model)
    editor = create_editor(config.method, config.settings)
    if not isinstance(editor, LocateEditor):
        raise ValidationError(f"{editor.name} optimises no target residuals (rome, memit and alphaedit do)")
    if not editor.config.residual_cache:
        raise ValidationError(f"{editor.name}: give the folder to keep the residuals in (residual_cache=FOLDER)")
    if config.protocol != "batch":
        raise ValidationError("residuals are shared ahead of batch runs only (a sequential run edits edited weights)")
    cases = run_cases(config).cases
    check_subjects(editor, cases)
    requests = batch_requests(
        cases,
        config.edits_per_step,
        max_groups=config.max_groups,
        distinct_subjects=config.distinct_subjects,
        span=config.positions(),
    )
    return editor, requests


def _check_part(part: tuple[int, int]) -> None:
    if not 1 <= part[0] <= part[1]:
        raise ValidationError(f"part {part[0]}/{part[1]}: the part must be between 1 and {part[1]}")


def _part_range(i: int, n: int, total: int) -> slice:
    return slice((i - 1) * total // n, i * total // n)


def cache_residuals(config: RunConfig, part: tuple[int, int] = (1, 1)) -> dict[str, Any]:
    """Optimise the target residuals of the batch run ``config`` describes into its editor's ``residual_cache``:
    of the run's requests (:func:`~editkit.evaluation.batch.batch_requests`), the ``part[0]``-th of ``part[1]``
    equal ranges. Processes (or machines) sharing the folder split a large run's residuals this way, and the
    run itself then reads them (each process skips what another has written). Returns a summary."""
    import torch

    from editkit.models.zoo import load

    _check_part(part)
    editor, requests = _run_requests(config)
    mine = requests[_part_range(*part, len(requests))]
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    lm = load(config.model, device=config.device)
    t0 = time.perf_counter()
    found = editor.cache_residuals(lm, mine)
    return {
        "requests": len(requests),
        "part": f"{part[0]}/{part[1]}",
        "in_part": len(mine),
        "found": found,
        "seconds": time.perf_counter() - t0,
        "folder": editor.config.residual_cache,
    }


def residual_files(config: RunConfig) -> list[Path]:
    """The file that keeps each residual of the batch run ``config`` describes, in the run's order, there
    already or not: what :func:`count_residuals` and a sweep's progress count. The names hash the model's
    weights, so the model is loaded (on the CPU: the bytes are those of any device) and let go."""
    from editkit.models.zoo import load

    editor, requests = _run_requests(config)
    return editor.residual_files(load(config.model, device="cpu"), requests)


def count_residuals(config: RunConfig, parts: int = 1) -> dict[str, Any]:
    """How many of the batch run's residuals are in its editor's ``residual_cache`` already, in all and in each
    of ``parts`` equal ranges (those :func:`cache_residuals` would optimise), optimising nothing. A file counts
    if it is there; one that is damaged is optimised again when read."""
    _check_part((1, parts))
    there = [path.is_file() for path in residual_files(config)]
    by_part = [there[_part_range(i, parts, len(there))] for i in range(1, parts + 1)]
    return {
        "requests": len(there),
        "found": sum(there),
        "parts": [{"part": f"{i}/{parts}", "in_part": len(p), "found": sum(p)} for i, p in enumerate(by_part, 1)],
        "folder": residual_folder(config),
    }
