"""What both evaluation protocols do alike: hand cases to an editor (one call, or one per case for an editor that
does not batch), optionally through the edit guard; roll back; keep what the handles tell of their edits in a
record; average the records' scores; decide whether an edit holds."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import mean
from typing import Any

from editkit.editors.base import EditHandle, Editor
from editkit.edits import EditCase
from editkit.evaluation.guard import EditGuard, EditRejected
from editkit.models.lm import LanguageModel


def aggregate(records: Sequence[dict[str, Any]], key: str) -> dict[str, float]:
    """Average every score over the records that have it."""
    names = sorted({n for r in records for n in r[key]})
    return {n: mean(r[key][n] for r in records if n in r[key]) for n in names}


def edit_success(scores: dict[str, float]) -> float:
    """Whether an edit holds: its efficacy where the data has contrasts (CounterFact), else its ES."""
    return scores.get("efficacy", scores.get("es", 0.0))


def mean_f1(checkpoint: dict[str, Any]) -> float | None:
    """The mean downstream F1 of a sequential run's checkpoint (``None`` without downstream tasks)."""
    f1 = [t["f1"] for t in checkpoint["downstream"].values()]
    return mean(f1) if f1 else None


def calls(editor: Editor, n: int) -> list[list[int]]:
    """How ``n`` requests edited together go to the editor: one call if it batches, else one call per request."""
    return [list(range(n))] if editor.capabilities.batch or n == 1 else [[i] for i in range(n)]


def apply_cases(lm: LanguageModel, editor: Editor, cases: Sequence[EditCase]) -> list[EditHandle]:
    """Edit every request of ``cases`` in (a case's ``also`` with its request), call by call (:func:`calls`)."""
    requests = [r for case in cases for r in case.requests]
    return [editor.apply(lm, [requests[i] for i in call]) for call in calls(editor, len(requests))]


def guarded_apply(
    lm: LanguageModel, editor: Editor, cases: Sequence[EditCase], guard: EditGuard
) -> tuple[list[EditHandle], dict[int, EditRejected], dict[int, dict[str, Any]]]:
    """As :func:`apply_cases`, each call through ``guard``: the handles of the kept edits and, by position in
    ``cases``, the rejections and the kept edits' guard checks (a batched call is kept or rejected whole)."""
    requests = [c.request for c in cases]
    handles: list[EditHandle] = []
    rejected: dict[int, EditRejected] = {}
    checks: dict[int, dict[str, Any]] = {}
    for call in calls(editor, len(cases)):
        try:
            handles.append(guard.apply(editor, lm, [requests[i] for i in call]))
            checks.update(dict.fromkeys(call, handles[-1].info["guard"]))
        except EditRejected as exc:
            rejected.update(dict.fromkeys(call, exc))
    return handles, rejected, checks


def rollback(handles: Sequence[EditHandle]) -> None:
    """Roll the handles back, the latest first."""
    for h in reversed(handles):
        h.rollback()


def _scalar(v: Any) -> bool:
    return isinstance(v, int | float | str | bool)


def record_info(handles: Sequence[EditHandle]) -> dict[str, Any]:
    """What the handles tell of their edits, for a record: scalars and lists of scalars (MEMIT's optimisation
    steps, one per edit of a call); tensors and payloads (``replay``) stay out."""
    return {
        k: list(v) if isinstance(v, list | tuple) else v
        for h in handles
        for k, v in h.info.items()
        if _scalar(v) or (isinstance(v, list | tuple) and all(_scalar(x) for x in v))
    }
