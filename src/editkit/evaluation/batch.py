"""The batch protocol: for each k, groups of k cases are edited into the unedited model together, scored and
rolled back (k = 1 is the independent-edit protocol of ROME's CounterFact table; k > 1 is SERAC's Figure 3). An
editor that cannot take several requests in one call gets them one after another. Generic over methods: it
calls ``editor.apply``, reads ``handle.model`` and rolls back through the handle.

The unedited model is scored on all cases first (``unedited_*`` aggregates); the case order is the same for
every method, so methods compare case by case. Each record holds one case's scores; what the editor told of a
group's edits (its handles' ``info``) is kept once per group in ``groups``.

A memory editor can be evaluated with its memory already holding other edits (``prefill``, distractors that a
deployed memory would hold; :mod:`editkit.evaluation.prefill`): they are added once, before the first group, stay
while every group is edited, scored and rolled back, and are removed at the end. Memory editors' runs split
drawdown by cause (the ``dd_*_subject`` scores of :mod:`editkit.evaluation.metrics`).

With a generation judge (:mod:`editkit.evaluation.judged`) the sentiment edits' in-scope questions are also
answered by generation before and after each edit and judged (``es_sent_judged``, ``es_sent_judged_p``); each
such record keeps its ``generations`` (question, before, after, scores). ``kinds`` limits the probes scored by
:func:`~editkit.evaluation.metrics.score_cases` (the judged generations do not depend on it).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from editkit.data.formats import Dataset
from editkit.editors.base import EditHandle, Editor
from editkit.edits import EditCase, EditRequest, ProbeKind
from editkit.errors import ValidationError
from editkit.evaluation.judged import ByCase, GenerationJudge, judged_cases, paired
from editkit.evaluation.metrics import Reference, cached_scores, score_cases
from editkit.evaluation.prefill import SubjectIndex
from editkit.evaluation.results import header
from editkit.evaluation.shared import aggregate, apply_cases, record_info, rollback
from editkit.models.lm import LanguageModel
from editkit.progress import progress_bar
from editkit.provenance import peak_memory_mb


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


def plan_groups(
    cases: Sequence[EditCase],
    ks: Sequence[int],
    *,
    max_groups: int | None = None,
    distinct_subjects: bool = False,
    span: tuple[int, int] | None = None,
) -> dict[int, list[tuple[int, list[int]]]]:
    """For each k, the numbered groups a batch run edits (:func:`edit_groups`, the first ``max_groups``); with
    ``span``, a shard's: those that begin in its case range (numbered as in the whole run)."""
    groups = {k: list(enumerate(edit_groups(cases, k, distinct_subjects=distinct_subjects)[:max_groups])) for k in ks}
    if not all(groups.values()):
        raise ValidationError(f"no group of {min(k for k, g in groups.items() if not g)} edits with distinct subjects")
    return {k: [(g, grp) for g, grp in gs if span is None or span[0] <= grp[0] < span[1]] for k, gs in groups.items()}


def batch_requests(
    cases: Sequence[EditCase],
    ks: Sequence[int],
    *,
    max_groups: int | None = None,
    distinct_subjects: bool = False,
    span: tuple[int, int] | None = None,
) -> list[EditRequest]:
    """Every request a batch run (or with ``span`` a shard, :func:`plan_groups`) edits, each once, in the order
    the run first edits it."""
    seen: dict[str, EditRequest] = {}
    plan = plan_groups(cases, ks, max_groups=max_groups, distinct_subjects=distinct_subjects, span=span)
    for groups in plan.values():
        for _, group in groups:
            for req in (r for i in group for r in cases[i].requests):
                seen.setdefault(json.dumps(req.to_dict(), sort_keys=True), req)
    return list(seen.values())


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
    prefill: Sequence[EditRequest] = (),
    prefill_summary: dict[str, Any] | None = None,
    reference_cache: Path | None = None,
    span: tuple[int, int] | None = None,
    judge: GenerationJudge | None = None,
    kinds: Sequence[ProbeKind] = tuple(ProbeKind),
) -> dict[str, Any]:
    """For each k in ``ks``: edit groups of k cases (:func:`edit_groups`) together into the unedited model (a
    memory editor's memory holding the ``prefill`` edits), score every case of the group, roll back.
    ``aggregates`` are those of the largest k; ``aggregates_by_k`` has them all. With ``reference_cache`` the
    unedited model's reference and scores are kept there and reused (:meth:`Reference.cached`,
    :func:`~editkit.evaluation.metrics.cached_scores`). With ``span = (start, end)``
    only the groups whose first case lies at a position in ``[start, end)`` are edited (one shard of a sweep):
    the unedited model is still scored on every case, in the batches the whole run scores them in, and groups
    keep their numbers, so the shards' records are the whole run's (:mod:`editkit.sweep.merge`). With ``judge``
    the sentiment edits' generations are judged too (module docstring); ``kinds`` are the probe kinds scored."""
    if not cases:
        raise ValidationError("no cases to evaluate")
    if judge is not None:
        judged_cases(cases)  # no sentiment edit, or one without questions: fail before any work
    memory = editor.capabilities.storage != "weights"
    if prefill and not memory:
        raise ValidationError(f"{editor.name} edits weights; a prefilled memory is for memory editors")
    bad = [k for k in ks if k < 1 or k > len(cases)]
    if bad:
        raise ValidationError(f"edits per batch must be between 1 and the number of cases ({len(cases)}), got {bad}")
    editor.prepare(lm)
    t_start = time.perf_counter()
    # the reference of the probes scored only: with some kinds left out it skips what they would need (the
    # unedited likelihoods of ConvSent's responses take minutes)
    probed = cases if set(ProbeKind) <= set(kinds) else [_of_kinds(c, kinds) for c in cases]
    reference = (
        Reference.cached(lm, probed, reference_cache, batch_size=batch_size, progress=progress)
        if reference_cache is not None
        else Reference.build(lm, probed, batch_size=batch_size, progress=progress)
    )
    unedited = (
        cached_scores(lm, cases, reference, reference_cache, batch_size=batch_size, kinds=kinds, progress=progress)
        if reference_cache is not None
        else score_cases(lm, cases, reference, batch_size=batch_size, kinds=kinds, progress=progress)
    )
    before = judge(lm, cases) if judge is not None else {}
    for i, (scores, _) in before.items():
        unedited[i].update(scores)
    if span is not None and not 0 <= span[0] < span[1] <= len(cases):
        raise ValidationError(f"case range {span[0]}:{span[1]} is not within the {len(cases)} cases")
    plan = plan_groups(cases, ks, max_groups=max_groups, distinct_subjects=distinct_subjects, span=span)
    prefilled = _prefill(lm, editor, prefill, progress)
    subjects = SubjectIndex.of(prefill) if memory else None
    try:
        records, by_k, group_infos = _run_groups(
            lm, editor, cases, plan, reference, unedited, subjects, batch_size, progress, judge, before, kinds
        )
    finally:
        rollback(prefilled)
    return {
        **header("batch", lm, editor, cases, datasets),
        "ks": list(ks),
        "distinct_subjects": distinct_subjects,
        **({"prefill": prefill_summary or {"added": len(prefill)}} if prefill else {}),
        "aggregates": {
            **by_k[str(max(ks))],
            **{f"unedited_{k}": v for k, v in aggregate([{"pre": u} for u in unedited], "pre").items()},
        },
        "aggregates_by_k": by_k,
        "total_seconds": time.perf_counter() - t_start,
        "peak_memory_mb": peak_memory_mb(),
        "groups": group_infos,
        "records": records,
    }


def _of_kinds(case: EditCase, kinds: Sequence[ProbeKind]) -> EditCase:
    return dataclasses.replace(case, probes=tuple(p for p in case.probes if p.kind in kinds))


def k_aggregates(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The aggregates of one k's records: their mean scores, mean seconds per edit and count (none: empty)."""
    if not records:
        return {"n_cases": 0}
    return {
        **aggregate(records, "post"),
        "seconds_per_edit": mean(r["edit_seconds"] for r in records),
        "n_cases": len(records),
    }


PREFILL_CHUNK = 500
SCORING_PROGRESS_FROM = 500  # a group of this many cases or more shows its scoring's progress (minutes)


def _prefill(lm: LanguageModel, editor: Editor, requests: Sequence[EditRequest], progress: bool) -> list[EditHandle]:
    """Add ``requests`` to the editor's memory in chunks; the handles roll them back."""
    handles: list[EditHandle] = []
    with progress_bar(len(requests), f"prefilling {editor.name}'s memory", progress and bool(requests)) as bar:
        try:
            for start in range(0, len(requests), PREFILL_CHUNK):
                chunk = requests[start : start + PREFILL_CHUNK]
                handles.append(editor.apply(lm, chunk))
                bar.advance(len(chunk))
        except BaseException:
            rollback(handles)
            raise
    return handles


def _run_groups(
    lm: LanguageModel,
    editor: Editor,
    cases: Sequence[EditCase],
    plan: dict[int, list[tuple[int, list[int]]]],
    reference: Reference,
    unedited: list[dict[str, float]],
    subjects: SubjectIndex | None,
    batch_size: int,
    progress: bool,
    judge: GenerationJudge | None,
    before: ByCase,
    kinds: Sequence[ProbeKind],
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Each group edited, scored and rolled back: the records (one per case), the aggregates by k, and what the
    editor told of each group's edits (``info``, once per group: a batch of 10,000 lists 10,000 steps)."""
    records: list[dict[str, Any]] = []
    by_k: dict[str, dict[str, float]] = {}
    group_infos: list[dict[str, Any]] = []
    with progress_bar(sum(len(g) for g in plan.values()), f"{editor.name} on {lm.name}", progress) as bar:
        for k, groups in plan.items():
            k_records: list[dict[str, Any]] = []
            for g, group in groups:
                t0 = time.perf_counter()
                edited = [cases[i] for i in group]
                handles = apply_cases(lm, editor, edited)
                edit_seconds = time.perf_counter() - t0
                in_memory = subjects.extended(r for c in edited for r in c.requests) if subjects else None
                try:
                    post = score_cases(
                        handles[-1].model,
                        edited,
                        reference,
                        batch_size=batch_size,
                        kinds=kinds,
                        subjects=in_memory,
                        progress=progress and k >= SCORING_PROGRESS_FROM,
                    )
                    after = judge(handles[-1].model, edited) if judge is not None and before.keys() & set(group) else {}
                finally:
                    rollback(handles)
                group_infos.append({"k": k, "group": g, "edit_seconds": edit_seconds, "info": record_info(handles)})
                for j, (i, scores) in enumerate(zip(group, post, strict=True)):
                    record: dict[str, Any] = {
                        "case_id": cases[i].request.case_id,
                        "k": k,
                        "group": g,
                        "pre": unedited[i],
                        "post": {**scores, **(after[j][0] if j in after else {})},
                        "edit_seconds": edit_seconds / k,
                    }
                    if j in after:
                        record["generations"] = paired(before[i][1], after[j][1])
                    k_records.append(record)
                bar.advance()
            by_k[str(k)] = k_aggregates(k_records)
            records += k_records
    return records, by_k, group_infos
