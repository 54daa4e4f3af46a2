"""Rebuilding a model from a sequential run's records: each call's record keeps its handle's ``info["replay"]``,
from which :meth:`Editor.replay` makes the same edit again without the search that found it.

* :func:`replay_steps` replays the records step by step as the run made them and yields, per step, how far the
  replayed edits moved the weights beside the drift the run recorded (``edit_drift``);
* :func:`replay_records` brings a model (and its editor) to the state after a run's recorded edits, and stops
  when a step's drift differs from the recorded one by more than :data:`REPLAY_TOLERANCE` (another base model,
  editor config or arithmetic: going on would mix two runs).

Records name their case by ``case_id`` only (results carry no data set text): :func:`request_of` takes each
request from the run's cases at its position, checking the id.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from editkit.editors.base import EditHandle, Editor
from editkit.edits import EditCase, EditRequest
from editkit.errors import ValidationError
from editkit.evaluation.drift import DriftTracker, edit_drift
from editkit.evaluation.shared import calls
from editkit.models.lm import LanguageModel
from editkit.progress import progress_bar

REPLAY_TOLERANCE = 1e-4  # relative difference from a recorded step drift at which a rebuild stops
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayedStep:
    """One step of a run, replayed: the record of its last edit's ``n_edits``, the drift the run recorded for the
    step and the drift of the replayed edits (0.0 for a step whose edits the guard rejected: nothing to replay),
    and the handles of the replayed calls."""

    n_edits: int
    recorded: float
    replayed: float
    handles: list[EditHandle]

    @property
    def relative(self) -> float:
        """The relative difference between the replayed and the recorded drift."""
        return abs(self.replayed - self.recorded) / max(abs(self.recorded), 1e-12)


def request_of(record: dict[str, Any], cases: Sequence[EditCase]) -> EditRequest:
    """The request a sequential record edited: the run's case at its position. Records name their case by id
    only (results carry no data set text); the id must match, else the cases are not the run's."""
    case = cases[record["n_edits"] - 1]
    if case.request.case_id != record["case_id"]:
        raise ValidationError(
            f"edit {record['n_edits']} of the run was case {record['case_id']!r}, the data gives "
            f"{case.request.case_id!r} there: not the run's cases"
        )
    return case.request


def replay_steps(
    results: dict[str, Any],
    lm: LanguageModel,
    editor: Editor,
    cases: Sequence[EditCase],
    *,
    limit: int | None = None,
    progress: bool = True,
) -> Iterator[ReplayedStep]:
    """Replay the first ``limit`` (default: all) recorded edits of a sequential run's ``results`` (as returned by
    :func:`~editkit.evaluation.results.load_results`) on ``lm``, step by step as the run made them, yielding each
    step as it is replayed. ``cases`` are the run's cases, in its order."""
    n = results["n_edits"] if limit is None else min(limit, results["n_edits"])
    records = results["records"][:n]
    if n and not editor.capabilities.replay:
        raise ValidationError(
            f"the run's state holds results but no weights, and {editor.name} cannot rebuild its edits from "
            "records: start afresh (delete the state folder)"
        )
    per = results["edits_per_step"]
    with progress_bar(n, f"replaying {editor.name}'s edits on {lm.name}", progress) as bar:
        for start in range(0, n, per):
            step = records[start : start + per]
            handles = []
            for call in calls(editor, len(step)):
                first = step[call[0]]
                if "rejected" in first:
                    continue
                if "replay" not in first:
                    raise ValidationError(
                        f"the record of edit {first['n_edits']} holds nothing to replay it from (written before "
                        "editkit kept it): start afresh (delete the state folder)"
                    )
                requests = [request_of(step[i], cases) for i in call]
                handles.append(editor.replay(lm, requests, first["replay"]))
            own = sum(edit_drift(lm.model, h) for h in handles)
            yield ReplayedStep(step[-1]["n_edits"], step[-1]["edit_drift"], own, handles)
            bar.advance(len(step))


def replay_records(
    results: dict[str, Any],
    lm: LanguageModel,
    editor: Editor,
    cases: Sequence[EditCase],
    *,
    drift: DriftTracker | None = None,
    progress: bool = True,
) -> float:
    """Bring ``lm`` and ``editor`` to the state after a run's recorded edits by replaying each call from its
    record (:func:`replay_steps`), with ``drift`` tracking the replayed handles. Each step must move the weights
    as far as the run recorded (relative :data:`REPLAY_TOLERANCE`), else the base model, the editor or the
    arithmetic differs from the run's and going on would mix two runs. Returns the largest relative difference
    between a step's replayed and recorded drift (0.0 when the arithmetic is the run's to the last bit)."""
    log.info("rebuilding the weights after %d edits from their records", results["n_edits"])
    largest = 0.0
    for step in replay_steps(results, lm, editor, cases, progress=progress):
        if drift is not None:
            for h in step.handles:
                drift.track(h)
        if not math.isclose(step.replayed, step.recorded, rel_tol=REPLAY_TOLERANCE, abs_tol=1e-12):
            raise ValidationError(
                f"replayed, edit {step.n_edits} moved the weights by {step.replayed:.6g} where the run recorded "
                f"{step.recorded:.6g}: another base model, editor config or arithmetic; start afresh"
            )
        largest = max(largest, step.relative)
    log.info(
        "replayed %d edits; largest relative difference from the recorded drift: %.2g", results["n_edits"], largest
    )
    return largest
