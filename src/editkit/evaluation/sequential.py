"""The sequential protocol (the forgetting paper): edits accumulate on one model. After each step its immediate
scores and the weight drift; every N edits the retention of every earlier edit, downstream F1 and drift; a
disabling edit is flagged (:mod:`editkit.evaluation.flags`). With a state folder
(:mod:`editkit.evaluation.runstate`) state and partial results are written after every step, so a run resumes.

Generic over methods: it calls ``editor.apply``, reads ``handle.model``; what differs between methods is only
what their :class:`Capabilities` declare. The unedited model is scored on all cases first (``unedited_*``
aggregates); the case order is the same for every method, so methods compare case by case.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from editkit.data.formats import Dataset
from editkit.editors.base import EditHandle, Editor
from editkit.edits import EditCase
from editkit.errors import ValidationError
from editkit.evaluation.downstream import evaluate_task
from editkit.evaluation.drift import DriftTracker, edit_drift
from editkit.evaluation.flags import flag_collapse, flag_drift_jump
from editkit.evaluation.guard import EditGuard, EditRejected
from editkit.evaluation.metrics import IN_SCOPE, Reference, score_cases
from editkit.evaluation.replay import request_of
from editkit.evaluation.results import Header, canary_summary, header
from editkit.evaluation.runstate import RunState, extends, run_key, unedited_scores, with_new_defaults
from editkit.evaluation.shared import aggregate, apply_cases, calls, edit_success, guarded_apply, mean_f1, record_info
from editkit.models.lm import LanguageModel
from editkit.progress import progress_bar
from editkit.provenance import peak_memory_mb

log = logging.getLogger(__name__)


@dataclass
class _Run:
    """What every step of one sequential run works with."""

    lm: LanguageModel
    editor: Editor
    cases: Sequence[EditCase]
    reference: Reference
    tasks: dict[str, list[dict[str, Any]]]
    drift: DriftTracker
    guard: EditGuard | None
    batch_size: int


def sequential_edits(
    lm: LanguageModel,
    editor: Editor,
    cases: Sequence[EditCase],
    *,
    edits_per_step: int = 1,
    every: int = 20,
    downstream: dict[str, list[dict[str, Any]]] | None = None,
    state_dir: str | Path | None = None,
    drift_jump: float = 10.0,
    collapse: float = 0.5,
    batch_size: int = 16,
    progress: bool = True,
    datasets: Sequence[Dataset] = (),
    guard: EditGuard | None = None,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply the cases' edits one step (``edits_per_step`` cases) after another to ``lm`` and follow what happens.

    After each step: the step's immediate scores (all probes) and the drift of every changed weight. Every
    ``every`` edits (and after the last): the in-scope scores of all earlier edits (``forgotten`` counts those
    that succeeded when made and no longer do, ``forgotten_edits`` names them by their place in the run),
    downstream F1 on ``downstream`` tasks and drift. A step is flagged as disabling when its own drift
    (``edit_drift``: how far this step moved the weights) exceeds ``drift_jump`` times the median of the steps
    before it, or when mean downstream F1 falls below ``collapse`` times its unedited value (then the steps since
    the previous checkpoint are the suspects, and the one that moved the weights most is named).

    With ``guard``, every edit goes through :meth:`EditGuard.apply`; a rejected edit leaves the model as it
    was, is scored as it stands (it failed) and is listed in ``rejected_edits``.

    With ``state_dir``, state and partial results are written after every step and a rerun with the same
    arguments continues where it stopped. A rerun with more cases whose first ones are the saved run's (a
    higher ``--limit``) extends it: the new cases are scored on the unedited model, then edited after the
    saved ones; ``extended`` records each extension. ``lm`` stays edited when this returns.

    ``run`` (how the run was asked for: the CLI's run config) goes into the results as they are written, so a
    state folder's partial results carry the run's label; a resumed run keeps the latest.
    """
    if not cases:
        raise ValidationError("no cases to evaluate")
    several = [c.request.case_id for c in cases if c.also]
    if several:
        raise ValidationError(
            f"{len(several)} cases hold several edits (first: {several[0]}); the sequential protocol records one "
            "edit per case: evaluate them with --protocol batch"
        )
    if edits_per_step < 1 or every < 1:
        raise ValidationError("edits per step and evaluation interval must be at least 1")
    if guard is not None and editor.capabilities.storage != "weights":
        raise ValidationError(f"the guard checks weight edits; {editor.name} keeps its edits outside the weights")
    if state_dir is not None and editor.capabilities.storage != "weights":
        raise ValidationError(f"{editor.name} keeps edits outside the weights; resumable runs need a weight editor")
    tasks = downstream or {}
    editor.prepare(lm)
    head = header("sequential", lm, editor, cases, datasets)
    settings: dict[str, Any] = {"edits_per_step": edits_per_step, "every": every, "downstream_tasks": sorted(tasks)}
    if guard is not None:
        settings["guard"] = {"config": guard.config.to_dict(), "canary": canary_summary(guard.canary)}
    t_start = time.perf_counter()
    state = RunState(Path(state_dir)) if state_dir is not None else None
    with state.locked() if state is not None else contextlib.nullcontext():
        results, earlier_seconds, r = _start_or_resume(
            state, lm, editor, cases, head, settings, tasks, guard, batch_size=batch_size, progress=progress
        )
        if run is not None:
            results["run"] = run
        steps = [list(range(i, min(i + edits_per_step, len(cases)))) for i in range(0, len(cases), edits_per_step)]
        done_steps = results["n_edits"] // edits_per_step
        baseline_f1 = mean_f1(results["checkpoints"][0])
        with progress_bar(len(steps), f"{editor.name} sequential on {lm.name}", progress, start=done_steps) as bar:
            for step in steps[done_steps:]:
                t0 = time.perf_counter()
                model = _step(r, results, step)
                flag_drift_jump(results, drift_jump)
                if results["n_edits"] % every == 0 or results["n_edits"] == len(cases):
                    results["checkpoints"].append(_checkpoint(r, model, results))
                    flag_collapse(results, baseline_f1, collapse)
                results["seconds"] += time.perf_counter() - t0
                _account(results, earlier_seconds + time.perf_counter() - t_start)
                if state is not None:
                    t_save = time.perf_counter()
                    state.save(results, lm, r.drift, editor)
                    _spent(results, "saves", time.perf_counter() - t_save)
                bar.advance()
        results["aggregates"] = sequential_aggregates(results)
        results["provenance"] = editor.provenance()  # parts an editor loads at its first edit are known only now
        _account(results, earlier_seconds + time.perf_counter() - t_start)
        return results


def _start_or_resume(
    state: RunState | None,
    lm: LanguageModel,
    editor: Editor,
    cases: Sequence[EditCase],
    head: Header,
    settings: dict[str, Any],
    tasks: dict[str, list[dict[str, Any]]],
    guard: EditGuard | None,
    *,
    batch_size: int,
    progress: bool,
) -> tuple[dict[str, Any], float, _Run]:
    """The run's results so far (fresh ones, or the state folder's with ``lm`` brought to their state), the wall
    time of the earlier invocations, and what its steps work with."""
    key = run_key(head, settings)
    saved = state.saved_results() if state is not None else None
    saved_key = saved.get("run_key") if saved is not None else None
    saved_key = with_new_defaults(saved_key, key, type(editor.config).defaults())
    if state is not None and saved is not None and saved_key != key and not extends(saved_key, key):
        raise ValidationError(
            f"{state.folder} holds a run with other settings (model, method, config, data or cases); "
            "use another --state folder or delete it"
        )
    # The unedited model's answers, kept in the state folder: a resumed run of many cases does not redo them,
    # nor does a rerun of one stopped before its first save of results (the reference is keyed by probe).
    reference = Reference.load(state.folder) if state is not None else Reference()
    if reference.extend(lm, cases, batch_size=batch_size, progress=progress) and state is not None:
        state.folder.mkdir(parents=True, exist_ok=True)
        reference.save(state.folder)
    r = _Run(lm, editor, cases, reference, tasks, DriftTracker(), guard, batch_size)
    if state is None or saved is None or saved_key is None:
        unedited = unedited_scores(state, lm, cases, reference, head, batch_size=batch_size, progress=progress)
        results = {
            **head,
            **settings,
            "run_key": key,
            "n_edits": 0,
            "unedited": unedited,
            "records": [],
            "checkpoints": [{"n_edits": 0, "downstream": _downstream(r, lm), "drift": {}}],
            "disabling_edits": [],
            "rejected_edits": [],
            "seconds": 0.0,
        }
        return results, 0.0, r
    extra: list[dict[str, Any]] = []
    if saved_key != key:
        # more cases than the saved run: their unedited scores come from the model before it is restored
        extra = score_cases(
            lm, cases[len(saved_key["case_ids"]) :], reference, batch_size=batch_size, progress=progress
        )
    # A state rebuilt from its results keeps their unedited scores too, before the replay (many minutes), so that
    # a run of another method on the same cases can start from a copy meanwhile.
    if not state.unedited.exists():
        state.keep_unedited(lm, head, saved["unedited"] + extra)  # the unedited model's, before the restore
    results = state.restore(lm, r.drift, editor, cases, environment=head["environment"], progress=progress)
    if extra:
        log.info("extending %s from %d to %d cases", state.folder, results["n_cases"], len(cases))
        results["extended"] = [
            *results.get("extended", []),
            {"from_cases": results["n_cases"], "to_cases": len(cases), "code_version": head["code_version"]},
        ]
        results.update(case_ids=head["case_ids"], n_cases=len(cases), run_key=key)
        results["unedited"] += extra
    log.info("resuming %s at edit %d", state.folder, results["n_edits"])
    if guard is not None:
        kept = [rec for rec in results["records"] if "rejected" not in rec]
        guard.resume(lm, [(request_of(rec, cases), rec["guard"]["drift"]) for rec in kept])
    return results, results["total_seconds"], r


def _step(r: _Run, results: dict[str, Any], step: list[int]) -> LanguageModel:
    """Edit the cases at positions ``step`` in (through the guard, if any), score them and record each; returns
    the edited model: ``lm`` itself for weight edits, a router for memories."""
    t0 = time.perf_counter()
    step_cases = [r.cases[i] for i in step]
    rejected: dict[int, EditRejected] = {}
    checks: dict[int, dict[str, Any]] = {}
    handles: list[EditHandle]
    if r.guard is None:
        handles = apply_cases(r.lm, r.editor, step_cases)
    else:
        handles, rejected, checks = guarded_apply(r.lm, r.editor, step_cases, r.guard)
    edit_seconds = time.perf_counter() - t0
    _spent(results, "edits", edit_seconds)
    t0 = time.perf_counter()
    for h in handles:
        r.drift.track(h)
    model = handles[-1].model if handles else r.lm
    immediate = score_cases(model, step_cases, r.reference, batch_size=r.batch_size)
    _spent(results, "immediate_scores", time.perf_counter() - t0)
    t0 = time.perf_counter()
    total_drift = sum(r.drift.measure(r.lm.model).values())
    own_drift = sum(edit_drift(r.lm.model, h) for h in handles)
    _spent(results, "drift", time.perf_counter() - t0)
    # what replays each call (on its first case's record): a run rebuilt on another machine
    kept_calls = [call for call in calls(r.editor, len(step)) if call[0] not in rejected]
    replays = {call[0]: h.info["replay"] for call, h in zip(kept_calls, handles, strict=True) if "replay" in h.info}
    for j, (i, scores) in enumerate(zip(step, immediate, strict=True)):
        record = {
            "n_edits": i + 1,
            "case_id": r.cases[i].request.case_id,
            "pre": results["unedited"][i],
            "post": scores,
            "edit_seconds": edit_seconds / len(step),
            "drift": total_drift,
            "edit_drift": own_drift,
            "info": record_info(handles),
        }
        if j in replays:
            record["replay"] = replays[j]
        if j in rejected:
            record["rejected"] = rejected[j].reasons
            record["guard"] = rejected[j].checks
            results["rejected_edits"].append(
                {"n_edits": i + 1, "case_id": record["case_id"], "reasons": rejected[j].reasons}
            )
        elif j in checks:
            record["guard"] = checks[j]
        results["records"].append(record)
    results["n_edits"] = step[-1] + 1
    return model


def _spent(results: dict[str, Any], phase: str, seconds: float) -> None:
    """Add to the run's wall time by phase (``phase_seconds``: edits, immediate_scores, drift, retention,
    downstream, saves): where a sequential run's time goes besides the edits."""
    phases = results.setdefault("phase_seconds", {})
    phases[phase] = phases.get(phase, 0.0) + seconds


def _account(results: dict[str, Any], total_seconds: float) -> None:
    """The run's wall time so far and the highest memory of any process that worked on it."""
    results["total_seconds"] = total_seconds
    results["peak_memory_mb"] = max(results.get("peak_memory_mb", 0.0), peak_memory_mb())


def _downstream(r: _Run, model: LanguageModel) -> dict[str, Any]:
    return {name: evaluate_task(model, name, examples, batch_size=r.batch_size) for name, examples in r.tasks.items()}


def _checkpoint(r: _Run, model: LanguageModel, results: dict[str, Any]) -> dict[str, Any]:
    """Retention of every earlier edit (which succeeded when made and are forgotten now), downstream scores and
    the drift of every edited weight, on the edited ``model``."""
    n = results["n_edits"]
    t0 = time.perf_counter()
    now = score_cases(model, r.cases[:n], r.reference, batch_size=r.batch_size, kinds=IN_SCOPE)
    retention_seconds = time.perf_counter() - t0
    _spent(results, "retention", retention_seconds)
    # An edit the guard rejected was never applied: neither succeeded nor forgotten, whatever its scores.
    records = results["records"][:n]
    succeeded = [i for i, rec in enumerate(records) if "rejected" not in rec and edit_success(rec["post"]) > 0.5]
    forgotten = [i for i in succeeded if edit_success(now[i]) <= 0.5]
    t0 = time.perf_counter()
    downstream = _downstream(r, model)
    downstream_seconds = time.perf_counter() - t0
    _spent(results, "downstream", downstream_seconds)
    return {
        "n_edits": n,
        "retention": aggregate([{"post": s} for s in now], "post"),
        "succeeded": len(succeeded),
        "forgotten": len(forgotten),
        "forgotten_fraction": len(forgotten) / len(succeeded) if succeeded else 0.0,
        "forgotten_edits": [i + 1 for i in forgotten],  # which: by their place in the run, from 1
        "downstream": downstream,
        "drift": r.drift.measure(model.model),
        "seconds": {"retention": retention_seconds, "downstream": downstream_seconds},
        "phase_seconds": dict(results["phase_seconds"]),  # the run's so far: per-window costs are differences
    }


def sequential_aggregates(results: dict[str, Any]) -> dict[str, Any]:
    """A sequential run's ``aggregates`` from its records and checkpoints (also of a run still going on)."""
    records = results["records"]
    last = results["checkpoints"][-1]
    out: dict[str, Any] = {
        **aggregate(records, "post"),
        **{f"unedited_{k}": v for k, v in aggregate([{"pre": u} for u in results["unedited"]], "pre").items()},
        **{f"final_{k}": v for k, v in last.get("retention", {}).items()},
        "forgotten_fraction": last.get("forgotten_fraction", 0.0),
        "seconds_per_edit": mean(rec["edit_seconds"] for rec in records) if records else 0.0,
        "disabling_edits": len(results["disabling_edits"]),
    }
    if "guard" in results:
        out["rejected_edits"] = len(results.get("rejected_edits", []))
        guarded = [rec["guard"]["seconds"] for rec in records if "seconds" in rec.get("guard", {})]
        out["guard_seconds_per_edit"] = mean(guarded) if guarded else 0.0
    if (f1 := mean_f1(last)) is not None:
        out["final_downstream_f1"] = f1
        out["unedited_downstream_f1"] = mean_f1(results["checkpoints"][0])
        # F1 of the positive label also moves with a model's label bias; AUC reads the ranking only.
        for when, ckpt in (("final", last), ("unedited", results["checkpoints"][0])):
            for task, scores in ckpt["downstream"].items():
                out[f"{when}_{task}_auc"] = scores["auc"]
    return out
