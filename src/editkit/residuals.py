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
from typing import Any

from editkit.errors import ValidationError
from editkit.evaluation.runner import RunConfig, check_subjects, run_cases


def residual_folder(config: RunConfig) -> str | None:
    """The folder ``config``'s editor keeps its target residuals in, or None (no such editor, or no folder)."""
    from editkit.editors import create_editor
    from editkit.editors.locate import LocateEditor

    editor = create_editor(config.method, config.settings)
    return editor.config.residual_cache if isinstance(editor, LocateEditor) else None


def cache_residuals(config: RunConfig, part: tuple[int, int] = (1, 1)) -> dict[str, Any]:
    """Optimise the target residuals of the batch run ``config`` describes into its editor's ``residual_cache``:
    of the run's requests (:func:`~editkit.evaluation.batch.batch_requests`), the ``part[0]``-th of ``part[1]``
    equal ranges. Processes (or machines) sharing the folder split a large run's residuals this way, and the
    run itself then reads them (each process skips what another has written). Returns a summary."""
    import torch

    from editkit.editors import create_editor
    from editkit.editors.locate import LocateEditor
    from editkit.evaluation.batch import batch_requests
    from editkit.models.zoo import check_model_name, load

    i, n = part
    if not 1 <= i <= n:
        raise ValidationError(f"part {i}/{n}: the part must be between 1 and {n}")
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
    mine = requests[(i - 1) * len(requests) // n : i * len(requests) // n]
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    lm = load(config.model, device=config.device)
    t0 = time.perf_counter()
    found = editor.cache_residuals(lm, mine)
    return {
        "requests": len(requests),
        "part": f"{i}/{n}",
        "in_part": len(mine),
        "found": found,
        "seconds": time.perf_counter() - t0,
        "folder": editor.config.residual_cache,
    }
