"""Evaluation protocols. Generic over methods: they call ``editor.apply``, read ``handle.model`` and roll back
through the handle; what differs between methods is only what their :class:`Capabilities` declare.

* :func:`batch_edits`: for each k, consecutive groups of k cases are edited into the unedited model together,
  scored and rolled back (k = 1 is the independent-edit protocol of ROME's CounterFact table; k > 1 is SERAC's
  Figure 3). An editor that cannot take several requests in one call gets them one after another.
* :func:`sequential_edits`: edits accumulate on one model (the forgetting paper). After each edit its immediate
  scores and the weight drift; every N edits the retention of every earlier edit, downstream F1 and drift; a
  disabling edit is flagged. State and partial results are written after every edit, so a run resumes.

Every run scores the unedited model on all cases first (``unedited_*`` aggregates) and uses the same case order
for every method, so methods compare case by case.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from statistics import mean, median
from typing import Any

import torch
from safetensors.torch import load_file

from editkit.data.formats import Dataset
from editkit.editors.base import EditHandle, Editor
from editkit.edits import EditCase, EditRequest
from editkit.errors import ValidationError
from editkit.evaluation.downstream import evaluate_task
from editkit.evaluation.drift import DriftTracker, edit_drift
from editkit.evaluation.guard import EditGuard, EditRejected
from editkit.evaluation.metrics import IN_SCOPE, Reference, score_cases
from editkit.files import atomic_save_tensors, atomic_write, tensor_sha256
from editkit.models.lm import LanguageModel
from editkit.progress import progress_bar
from editkit.provenance import code_version, environment, peak_memory_mb

RESULTS_VERSION = 2
log = logging.getLogger(__name__)


def aggregate(records: Sequence[dict[str, Any]], key: str) -> dict[str, float]:
    """Average every score over the records that have it."""
    names = sorted({n for r in records for n in r[key]})
    return {n: mean(r[key][n] for r in records if n in r[key]) for n in names}


def _header(
    protocol: str, lm: LanguageModel, editor: Editor, cases: Sequence[EditCase], datasets: Sequence[Dataset]
) -> dict[str, Any]:
    return {
        "version": RESULTS_VERSION,
        "protocol": protocol,
        "code_version": code_version(),
        "model": lm.name,
        "method": editor.name,
        "config": editor.config.to_dict(),
        "provenance": editor.provenance(),
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
        "case_ids": [c.request.case_id for c in cases],
        "n_cases": len(cases),
        "environment": environment(lm.device),
    }


def _calls(editor: Editor, n: int) -> list[list[int]]:
    """How ``n`` cases edited together go to the editor: one call if it batches, else one call per case."""
    return [list(range(n))] if editor.capabilities.batch or n == 1 else [[i] for i in range(n)]


def _apply(lm: LanguageModel, editor: Editor, cases: Sequence[EditCase]) -> list[EditHandle]:
    """Edit ``cases`` in, call by call (:func:`_calls`)."""
    return [editor.apply(lm, [cases[i].request for i in call]) for call in _calls(editor, len(cases))]


def _guarded_apply(
    lm: LanguageModel, editor: Editor, cases: Sequence[EditCase], guard: EditGuard
) -> tuple[list[EditHandle], dict[int, EditRejected], dict[int, dict[str, Any]]]:
    """As :func:`_apply`, each call through ``guard``: the handles of the kept edits and, by position in
    ``cases``, the rejections and the kept edits' guard checks (a batched call is kept or rejected whole)."""
    requests = [c.request for c in cases]
    handles: list[EditHandle] = []
    rejected: dict[int, EditRejected] = {}
    checks: dict[int, dict[str, Any]] = {}
    for call in _calls(editor, len(cases)):
        try:
            handles.append(guard.apply(editor, lm, [requests[i] for i in call]))
            checks.update(dict.fromkeys(call, handles[-1].info["guard"]))
        except EditRejected as exc:
            rejected.update(dict.fromkeys(call, exc))
    return handles, rejected, checks


def _rollback(handles: Sequence[EditHandle]) -> None:
    for h in reversed(handles):
        h.rollback()


def _scalar(v: Any) -> bool:
    return isinstance(v, int | float | str | bool)


def _info(handles: Sequence[EditHandle]) -> dict[str, Any]:
    """What the handles tell of their edits, for a record: scalars and lists of scalars (MEMIT's optimisation
    steps, one per edit of a call); tensors and payloads (``replay``) stay out."""
    return {
        k: list(v) if isinstance(v, list | tuple) else v
        for h in handles
        for k, v in h.info.items()
        if _scalar(v) or (isinstance(v, list | tuple) and all(_scalar(x) for x in v))
    }


def edit_groups(cases: Sequence[EditCase], k: int, *, distinct_subjects: bool = False) -> list[list[int]]:
    """Groups of ``k`` case positions: consecutive, or with ``distinct_subjects`` such that no two edits of a
    group are about the same subject (the request's subject, else its prompt). Some data files list several
    edits of one subject in a row (zsRE's eval file: five manufacturers of one ship), and edits that contradict
    each other in one group test nothing a user would ask for. Cases are taken in file order; one that would
    repeat a subject waits for the next group; what finds no full group is left out."""
    if not distinct_subjects:
        return [list(range(g * k, (g + 1) * k)) for g in range(len(cases) // k)]
    waiting = list(range(len(cases)))
    groups = []
    while len(waiting) >= k:
        group: list[int] = []
        seen: set[str] = set()
        for i in waiting:
            key = (cases[i].request.subject or cases[i].request.text).strip().lower()
            if key not in seen:
                group.append(i)
                seen.add(key)
                if len(group) == k:
                    break
        if len(group) < k:
            break
        groups.append(group)
        taken = set(group)
        waiting = [i for i in waiting if i not in taken]
    return groups


def batch_edits(
    lm: LanguageModel,
    editor: Editor,
    cases: Sequence[EditCase],
    ks: Sequence[int] = (1,),
    *,
    max_groups: int | None = None,
    distinct_subjects: bool = False,
    batch_size: int = 16,
    progress: bool = True,
    datasets: Sequence[Dataset] = (),
) -> dict[str, Any]:
    """For each k in ``ks``: edit groups of k cases (:func:`edit_groups`) together into the unedited model,
    score every case of the group, roll back. ``aggregates`` are those of the largest k; ``aggregates_by_k``
    has them all."""
    if not cases:
        raise ValidationError("no cases to evaluate")
    bad = [k for k in ks if k < 1 or k > len(cases)]
    if bad:
        raise ValidationError(f"edits per batch must be between 1 and the number of cases ({len(cases)}), got {bad}")
    editor.prepare(lm)
    t_start = time.perf_counter()
    reference = Reference.build(lm, cases, batch_size=batch_size, progress=progress)
    unedited = score_cases(lm, cases, reference, batch_size=batch_size, progress=progress)
    records: list[dict[str, Any]] = []
    by_k: dict[str, dict[str, float]] = {}
    plan = {k: edit_groups(cases, k, distinct_subjects=distinct_subjects)[:max_groups] for k in ks}
    if not all(plan.values()):
        raise ValidationError(f"no group of {min(k for k, g in plan.items() if not g)} edits with distinct subjects")
    with progress_bar(sum(len(g) for g in plan.values()), f"{editor.name} on {lm.name}", progress) as bar:
        for k, groups in plan.items():
            k_records: list[dict[str, Any]] = []
            for g, group in enumerate(groups):
                t0 = time.perf_counter()
                handles = _apply(lm, editor, [cases[i] for i in group])
                edit_seconds = time.perf_counter() - t0
                try:
                    post = score_cases(handles[-1].model, [cases[i] for i in group], reference, batch_size=batch_size)
                finally:
                    _rollback(handles)
                for i, scores in zip(group, post, strict=True):
                    k_records.append(
                        {
                            "case_id": cases[i].request.case_id,
                            "k": k,
                            "group": g,
                            "pre": unedited[i],
                            "post": scores,
                            "edit_seconds": edit_seconds / k,
                            "info": _info(handles),
                        }
                    )
                bar.advance()
            by_k[str(k)] = {
                **aggregate(k_records, "post"),
                "seconds_per_edit": mean(r["edit_seconds"] for r in k_records),
                "n_cases": len(k_records),
            }
            records += k_records
    return {
        **_header("batch", lm, editor, cases, datasets),
        "ks": list(ks),
        "distinct_subjects": distinct_subjects,
        "aggregates": {
            **by_k[str(max(ks))],
            **{f"unedited_{k}": v for k, v in aggregate([{"pre": u} for u in unedited], "pre").items()},
        },
        "aggregates_by_k": by_k,
        "total_seconds": time.perf_counter() - t_start,
        "peak_memory_mb": peak_memory_mb(),
        "records": records,
    }


# --------------------------------------------------------------------------- sequential


def edit_success(scores: dict[str, float]) -> float:
    """Whether an edit holds: its efficacy where the data has contrasts (CounterFact), else its ES."""
    return scores.get("efficacy", scores.get("es", 0.0))


def _downstream(lm: LanguageModel, tasks: dict[str, list[dict[str, Any]]], batch_size: int) -> dict[str, Any]:
    return {name: evaluate_task(lm, name, examples, batch_size=batch_size) for name, examples in tasks.items()}


class _RunState:
    """A sequential run's folder: ``results.json`` (partial results) and, for the state after edit n,
    ``weights-n.safetensors`` (the current value of every parameter the run changed, with the original's
    sha256 in ``weights-n.json``) and ``editor-n.safetensors`` (what the editor remembers of its edits,
    :meth:`Editor.export_state`, if anything). The tensors are written before ``results.json``, which is
    written last and says which n to read, so a run killed at any moment leaves a complete state: the
    previous step's or the new one. Older files are removed once the new results are written."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.results = folder / "results.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock file for the run: a second process on the same folder (a rerun while the first
        still runs) would interleave its saves with the first's."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValidationError(f"{self.folder} is in use by another running editkit process") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _files(self, n_edits: int) -> tuple[Path, Path, Path]:
        return (
            self.folder / f"weights-{n_edits}.safetensors",
            self.folder / f"editor-{n_edits}.safetensors",
            self.folder / f"weights-{n_edits}.json",
        )

    def save(self, results: dict[str, Any], lm: LanguageModel, drift: DriftTracker, editor: Editor) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        weights, remembered_file, meta_file = self._files(results["n_edits"])
        params = dict(lm.model.named_parameters())
        if drift.originals:
            atomic_save_tensors({n: params[n] for n in drift.originals}, weights)
        remembered = editor.export_state(lm)
        if remembered:
            atomic_save_tensors(remembered, remembered_file)
        meta = {
            "original_sha256": {n: tensor_sha256(t) for n, t in drift.originals.items()},
            "editor_state": sorted(remembered),
            "n_edits": results["n_edits"],
        }
        atomic_write(meta_file, json.dumps(meta))
        atomic_write(self.results, json.dumps(results))
        current = {weights, remembered_file, meta_file}
        for pattern in ("weights*.safetensors", "editor*.safetensors", "weights*.json"):
            for old in self.folder.glob(pattern):
                if old not in current:
                    old.unlink()

    @torch.no_grad()
    def restore(
        self,
        lm: LanguageModel,
        drift: DriftTracker,
        editor: Editor,
        cases: Sequence[EditCase],
        *,
        environment: dict[str, Any],
        progress: bool,
    ) -> dict[str, Any]:
        """The saved results, with ``lm`` (and ``editor``) brought to their state: from the saved weights, else by
        replaying the records. The results list every resume under ``resumes``, with the ``environment`` the run
        goes on in (another CPU or thread count changes the last bits of its arithmetic) and, for a replay, how
        far the replayed edits' drift came from the recorded one."""
        results: dict[str, Any] = json.loads(self.results.read_text())
        weights, remembered_file, meta_file = self._files(results["n_edits"])
        if not meta_file.exists():  # a folder written before the file names carried the edit count
            weights, remembered_file, meta_file = (
                self.folder / "weights.safetensors",
                self.folder / "editor.safetensors",
                self.folder / "weights.json",
            )
        if not meta_file.exists():  # results alone (copied from another machine): rebuild the weights
            deviation = _replay_records(results, lm, drift, editor, cases, progress=progress)
            resumed = {"n_edits": results["n_edits"], "from": "records", "largest_relative_deviation": deviation}
            results["resumes"] = [*results.get("resumes", []), {**resumed, "environment": environment}]
            return results
        meta = json.loads(meta_file.read_text())
        if meta["n_edits"] != results["n_edits"]:
            raise ValidationError(f"{self.folder}: weights and results were saved at different edits; start afresh")
        if "editor_state" not in meta and type(editor).export_state is not Editor.export_state:
            raise ValidationError(
                f"{self.folder} was saved by an editkit that did not keep what {editor.name} remembers of its "
                "edits; resumed, its next edits would ignore the earlier ones: start afresh"
            )
        params = dict(lm.model.named_parameters())
        saved = load_file(str(weights)) if meta["original_sha256"] else {}
        for name, sha in meta["original_sha256"].items():
            if name not in params or tensor_sha256(params[name]) != sha:
                raise ValidationError(f"{self.folder}: saved state was made from another base model ({name})")
            drift.originals[name] = params[name].detach().cpu().clone()
            params[name].copy_(saved[name].to(params[name].device))
        if meta.get("editor_state"):
            editor.import_state(lm, load_file(str(remembered_file)))
        resumed = {"n_edits": results["n_edits"], "from": "weights", "environment": environment}
        results["resumes"] = [*results.get("resumes", []), resumed]
        return results


def _replay_records(
    results: dict[str, Any],
    lm: LanguageModel,
    drift: DriftTracker,
    editor: Editor,
    cases: Sequence[EditCase],
    *,
    progress: bool,
) -> float:
    """Bring ``lm`` and ``editor`` to the state after a run's recorded edits by replaying each call from its
    record (:meth:`Editor.replay`), step by step as the run made them. Each step must move the weights as far as
    the run recorded (``edit_drift``), else the base model, the editor or the arithmetic differs from the run's
    and going on would mix two runs. Returns the largest relative difference between a step's replayed and
    recorded drift (0.0 when the arithmetic is the run's to the last bit)."""
    n = results["n_edits"]
    records = results["records"][:n]
    if n and not editor.capabilities.replay:
        raise ValidationError(
            f"the run's state holds results but no weights, and {editor.name} cannot rebuild its edits from "
            "records: start afresh (delete the state folder)"
        )
    per = results["edits_per_step"]
    log.info("rebuilding the weights after %d edits from their records", n)
    largest = 0.0
    with progress_bar(n, f"replaying {editor.name}'s edits on {lm.name}", progress) as bar:
        for start in range(0, n, per):
            step = records[start : start + per]
            handles = []
            for call in _calls(editor, len(step)):
                first = step[call[0]]
                if "rejected" in first:
                    continue
                if "replay" not in first:
                    raise ValidationError(
                        f"the record of edit {first['n_edits']} holds nothing to replay it from (written before "
                        "editkit kept it): start afresh (delete the state folder)"
                    )
                requests = [_request_of(step[i], cases) for i in call]
                handles.append(editor.replay(lm, requests, first["replay"]))
                drift.track(handles[-1])
            own = sum(edit_drift(lm.model, h) for h in handles)
            recorded = step[-1]["edit_drift"]
            if not math.isclose(own, recorded, rel_tol=1e-4, abs_tol=1e-12):
                raise ValidationError(
                    f"replayed, edit {step[-1]['n_edits']} moved the weights by {own:.6g} where the run recorded "
                    f"{recorded:.6g}: another base model, editor config or arithmetic; start afresh"
                )
            largest = max(largest, abs(own - recorded) / max(abs(recorded), 1e-12))
            bar.advance(len(step))
    log.info("replayed %d edits; largest relative difference from the recorded drift: %.2g", n, largest)
    return largest


def _canary_summary(canary: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """What results keep of the guard's canary examples: per task their count, a digest of the examples (for the
    run key) and the data set's ``idx`` of each where it has one; never their text."""
    summary = {}
    for task, examples in canary.items():
        digest = hashlib.sha256(json.dumps(examples, sort_keys=True).encode()).hexdigest()
        summary[task] = {"n": len(examples), "sha256": digest}
        if all("idx" in e for e in examples):
            summary[task]["idx"] = [e["idx"] for e in examples]
    return summary


def _request_of(record: dict[str, Any], cases: Sequence[EditCase]) -> EditRequest:
    """The request a sequential record edited: the run's case at its position. Records name their case by id
    only (results carry no data set text); the id must match, else the cases are not the run's."""
    case = cases[record["n_edits"] - 1]
    if case.request.case_id != record["case_id"]:
        raise ValidationError(
            f"edit {record['n_edits']} of the run was case {record['case_id']!r}, the data gives "
            f"{case.request.case_id!r} there: not the run's cases"
        )
    return case.request


def _unedited_scores(
    state: _RunState | None,
    lm: LanguageModel,
    cases: Sequence[EditCase],
    reference: Reference,
    header: dict[str, Any],
    *,
    batch_size: int,
    progress: bool,
) -> list[dict[str, float]]:
    """The unedited model's scores of every case, kept in the state folder's ``unedited.json`` with what they
    were computed on (model, data, cases): a run stopped before its first edit, or a run of another method on
    the same cases given a copy of the file, does not recompute them (15 minutes for 1,000 CounterFact cases)."""
    made_on = _made_on(lm, header)
    path = state.folder / "unedited.json" if state is not None else None
    if path is not None and path.exists():
        saved = json.loads(path.read_text())
        if {k: saved.get(k) for k in made_on} == made_on:
            scores: list[dict[str, float]] = saved["scores"]
            return scores
    scores = score_cases(lm, cases, reference, batch_size=batch_size, progress=progress)
    if path is not None:
        atomic_write(path, json.dumps({**made_on, "scores": scores}))
    return scores


def _made_on(lm: LanguageModel, header: dict[str, Any]) -> dict[str, Any]:
    """What unedited scores were computed on: the model's fingerprint, the data and the cases."""
    return {"model": lm.fingerprint(), "data": [d["sha256"] for d in header["data"]], "case_ids": header["case_ids"]}


def _run_key(header: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    keep = ("model", "method", "config", "case_ids")
    return {**{k: header[k] for k in keep}, "data": [d["sha256"] for d in header["data"]], **settings}


def _extends(saved: dict[str, Any] | None, key: dict[str, Any]) -> bool:
    """Whether ``key`` is the saved run's key with more cases appended (same data, model, method, settings)."""
    if saved is None or saved.keys() != key.keys():
        return False
    ids, more = saved["case_ids"], key["case_ids"]
    same = all(saved[k] == key[k] for k in key if k != "case_ids")
    return same and len(more) > len(ids) and more[: len(ids)] == ids


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
    if edits_per_step < 1 or every < 1:
        raise ValidationError("edits per step and evaluation interval must be at least 1")
    if guard is not None and editor.capabilities.storage != "weights":
        raise ValidationError(f"the guard checks weight edits; {editor.name} keeps its edits outside the weights")
    if state_dir is not None and editor.capabilities.storage != "weights":
        raise ValidationError(f"{editor.name} keeps edits outside the weights; resumable runs need a weight editor")
    tasks = downstream or {}
    editor.prepare(lm)
    header = _header("sequential", lm, editor, cases, datasets)
    settings: dict[str, Any] = {"edits_per_step": edits_per_step, "every": every, "downstream_tasks": sorted(tasks)}
    if guard is not None:
        settings["guard"] = {"config": guard.config.to_dict(), "canary": _canary_summary(guard.canary)}
    key = _run_key(header, settings)
    t_start = time.perf_counter()
    drift = DriftTracker()
    state = _RunState(Path(state_dir)) if state_dir is not None else None
    with state.locked() if state is not None else contextlib.nullcontext():
        saved_key = None
        saved_unedited: list[dict[str, float]] = []
        if state is not None and state.results.exists():
            saved = json.loads(state.results.read_text())
            saved_key, saved_unedited = saved.get("run_key"), saved["unedited"]
            if saved_key != key and not _extends(saved_key, key):
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
        if state is not None and saved_key is not None:
            extra: list[dict[str, Any]] = []
            if saved_key != key:
                # more cases than the saved run: their unedited scores come from the model before it is restored
                extra = score_cases(
                    lm, cases[len(saved_key["case_ids"]) :], reference, batch_size=batch_size, progress=progress
                )
            # A state rebuilt from its results keeps their unedited scores too, before the replay (many minutes),
            # so that a run of another method on the same cases can start from a copy meanwhile.
            if not (state.folder / "unedited.json").exists():
                made_on = _made_on(lm, header)  # the unedited model's, before the state is restored
                atomic_write(state.folder / "unedited.json", json.dumps({**made_on, "scores": saved_unedited + extra}))
            results = state.restore(lm, drift, editor, cases, environment=header["environment"], progress=progress)
            if extra:
                log.info("extending %s from %d to %d cases", state.folder, results["n_cases"], len(cases))
                results["extended"] = [
                    *results.get("extended", []),
                    {"from_cases": results["n_cases"], "to_cases": len(cases), "code_version": header["code_version"]},
                ]
                results.update(case_ids=header["case_ids"], n_cases=len(cases), run_key=key)
                results["unedited"] += extra
            log.info("resuming %s at edit %d", state.folder, results["n_edits"])
            # wall time of the earlier invocations (a folder saved before it was kept: their steps' time)
            earlier_seconds = results.get("total_seconds", results["seconds"])
            if guard is not None:
                kept = [r for r in results["records"] if "rejected" not in r]
                guard.resume(lm, [(_request_of(r, cases), r["guard"]["drift"]) for r in kept])
        else:
            unedited = _unedited_scores(state, lm, cases, reference, header, batch_size=batch_size, progress=progress)
            results = {
                **header,
                **settings,
                "run_key": key,
                "n_edits": 0,
                "unedited": unedited,
                "records": [],
                "checkpoints": [{"n_edits": 0, "downstream": _downstream(lm, tasks, batch_size), "drift": {}}],
                "disabling_edits": [],
                "rejected_edits": [],
                "seconds": 0.0,
            }
            earlier_seconds = 0.0
        if run is not None:
            results["run"] = run
        steps = [list(range(i, min(i + edits_per_step, len(cases)))) for i in range(0, len(cases), edits_per_step)]
        done_steps = results["n_edits"] // edits_per_step
        baseline_f1 = _mean_f1(results["checkpoints"][0])
        with progress_bar(len(steps), f"{editor.name} sequential on {lm.name}", progress, start=done_steps) as bar:
            for step in steps[done_steps:]:
                t0 = time.perf_counter()
                step_cases = [cases[i] for i in step]
                rejected: dict[int, EditRejected] = {}
                checks: dict[int, dict[str, Any]] = {}
                if guard is None:
                    handles = _apply(lm, editor, step_cases)
                else:
                    handles, rejected, checks = _guarded_apply(lm, editor, step_cases, guard)
                edit_seconds = time.perf_counter() - t0
                for h in handles:
                    drift.track(h)
                # the edited model: ``lm`` itself for weight edits, a router for memories
                model = handles[-1].model if handles else lm
                immediate = score_cases(model, step_cases, reference, batch_size=batch_size)
                total_drift = sum(drift.measure(lm.model).values())
                own_drift = sum(edit_drift(lm.model, h) for h in handles)
                # what replays each call (on its first case's record): a run rebuilt on another machine
                kept_calls = [call for call in _calls(editor, len(step)) if call[0] not in rejected]
                replays = {
                    call[0]: h.info["replay"] for call, h in zip(kept_calls, handles, strict=True) if "replay" in h.info
                }
                for j, (i, scores) in enumerate(zip(step, immediate, strict=True)):
                    record = {
                        "n_edits": i + 1,
                        "case_id": cases[i].request.case_id,
                        "pre": results["unedited"][i],
                        "post": scores,
                        "edit_seconds": edit_seconds / len(step),
                        "drift": total_drift,
                        "edit_drift": own_drift,
                        "info": _info(handles),
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
                _flag_drift_jump(results, drift_jump)
                if results["n_edits"] % every == 0 or results["n_edits"] == len(cases):
                    results["checkpoints"].append(
                        _checkpoint(model, cases, reference, results, tasks, drift, batch_size=batch_size)
                    )
                    _flag_collapse(results, baseline_f1, collapse)
                results["seconds"] += time.perf_counter() - t0
                _account(results, earlier_seconds + time.perf_counter() - t_start)
                if state is not None:
                    state.save(results, lm, drift, editor)
                bar.advance()
        results["aggregates"] = sequential_aggregates(results)
        _account(results, earlier_seconds + time.perf_counter() - t_start)
        return results


def _account(results: dict[str, Any], total_seconds: float) -> None:
    """The run's wall time so far and the highest memory of any process that worked on it."""
    results["total_seconds"] = total_seconds
    results["peak_memory_mb"] = max(results.get("peak_memory_mb", 0.0), peak_memory_mb())


def _mean_f1(checkpoint: dict[str, Any]) -> float | None:
    f1 = [t["f1"] for t in checkpoint["downstream"].values()]
    return mean(f1) if f1 else None


def _checkpoint(
    lm: LanguageModel,
    cases: Sequence[EditCase],
    reference: Reference,
    results: dict[str, Any],
    tasks: dict[str, list[dict[str, Any]]],
    drift: DriftTracker,
    *,
    batch_size: int,
) -> dict[str, Any]:
    n = results["n_edits"]
    now = score_cases(lm, cases[:n], reference, batch_size=batch_size, kinds=IN_SCOPE)
    # An edit the guard rejected was never applied: neither succeeded nor forgotten, whatever its scores.
    records = results["records"][:n]
    succeeded = [i for i, r in enumerate(records) if "rejected" not in r and edit_success(r["post"]) > 0.5]
    forgotten = [i for i in succeeded if edit_success(now[i]) <= 0.5]
    return {
        "n_edits": n,
        "retention": aggregate([{"post": s} for s in now], "post"),
        "succeeded": len(succeeded),
        "forgotten": len(forgotten),
        "forgotten_fraction": len(forgotten) / len(succeeded) if succeeded else 0.0,
        "forgotten_edits": [i + 1 for i in forgotten],  # which: by their place in the run, from 1
        "downstream": _downstream(lm, tasks, batch_size),
        "drift": drift.measure(lm.model),
    }


def _step_drift(records: Sequence[dict[str, Any]], i: int) -> float:
    """How far record ``i``'s step moved the weights: its own drift (``edit_drift``) or, in records written
    before editkit kept it, the increment of the total drift (which shrinks as the total grows)."""
    if "edit_drift" in records[i]:
        own: float = records[i]["edit_drift"]
        return own
    return records[i]["drift"] - (records[i - 1]["drift"] if i else 0.0)


def _flag_drift_jump(results: dict[str, Any], factor: float) -> None:
    """Flag the latest step if it moved the weights more than ``factor`` times the median step before it (its
    own drift against the other steps' own drift, where the records have it)."""
    records = results["records"]
    own = "edit_drift" in records[-1]
    sizes = [_step_drift(records, i) for i in range(len(records)) if ("edit_drift" in records[i]) == own]
    if len(sizes) < 6:
        return
    typical = median(sizes[:-1])
    if typical > 0 and sizes[-1] > factor * typical:
        what = "its own drift was" if own else "drift jumped"
        results["disabling_edits"].append(
            {
                "n_edits": records[-1]["n_edits"],
                "case_id": records[-1]["case_id"],
                "reason": f"{what} {sizes[-1] / typical:.1f}x the median {'edit' if own else 'increment'}",
            }
        )


def _flag_collapse(results: dict[str, Any], baseline: float | None, fraction: float) -> None:
    ckpt = results["checkpoints"][-1]
    now = _mean_f1(ckpt)
    if baseline is None or now is None or now >= fraction * baseline:
        return
    previous = results["checkpoints"][-2]["n_edits"]
    if any(d["reason"].startswith("downstream") for d in results["disabling_edits"]):
        return  # report the first collapse only
    records = results["records"]
    window = [i for i, r in enumerate(records) if r["n_edits"] > previous]
    suspect = records[max(window, key=lambda i: _step_drift(records, i))]
    results["disabling_edits"].append(
        {
            "n_edits": suspect["n_edits"],
            "case_id": suspect["case_id"],
            "reason": f"downstream F1 fell to {now:.2f} from {baseline:.2f} between edits {previous} and "
            f"{ckpt['n_edits']}; this edit moved the weights most in that window",
        }
    )


def sequential_aggregates(results: dict[str, Any]) -> dict[str, Any]:
    """A sequential run's ``aggregates`` from its records and checkpoints (also of a run still going on)."""
    records = results["records"]
    last = results["checkpoints"][-1]
    out: dict[str, Any] = {
        **aggregate(records, "post"),
        **{f"unedited_{k}": v for k, v in aggregate([{"pre": u} for u in results["unedited"]], "pre").items()},
        **{f"final_{k}": v for k, v in last.get("retention", {}).items()},
        "forgotten_fraction": last.get("forgotten_fraction", 0.0),
        "seconds_per_edit": mean(r["edit_seconds"] for r in records) if records else 0.0,
        "disabling_edits": len(results["disabling_edits"]),
    }
    if "guard" in results:
        out["rejected_edits"] = len(results.get("rejected_edits", []))
        guarded = [r["guard"]["seconds"] for r in records if "seconds" in r.get("guard", {})]
        out["guard_seconds_per_edit"] = mean(guarded) if guarded else 0.0
    if (f1 := _mean_f1(last)) is not None:
        out["final_downstream_f1"] = f1
        out["unedited_downstream_f1"] = _mean_f1(results["checkpoints"][0])
        # F1 of the positive label also moves with a model's label bias; AUC reads the ranking only.
        for when, ckpt in (("final", last), ("unedited", results["checkpoints"][0])):
            for task, scores in ckpt["downstream"].items():
                out[f"{when}_{task}_auc"] = scores["auc"]
    return out
