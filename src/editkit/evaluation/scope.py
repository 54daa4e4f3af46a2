"""Component-wise breakdown of a memory-based editor (SERAC Table 4): how often the scope classifier routes an
input where it belongs, and how often the answering model is right when it is given the right edit.

For groups of k edits in memory, every probe of every case is routed. An in-scope probe (edit, rephrase, hard
in-scope) is routed correctly when it goes to its own case's edit; an out-of-scope probe (neighborhood,
unrelated) when it goes to the base model. The answerer's accuracy is its exact match with the probe's
expected answer when it reads the probe's *own* edit, whatever the classifier said (on a choice probe, whether it
finds the expected label likelier than its contrast, as :mod:`~editkit.evaluation.metrics` scores it). Splits
follow the paper: in (easy) = edit prompt and rephrases, in (hard) = hard in-scope, out (easy) = unrelated, out (hard) =
neighborhood. Defined for any editor whose edited model routes (:class:`~editkit.editors.routing.RoutingModel`)
and whose handle names the records of its edits (:class:`~editkit.editors.routing.RecordedEditHandle`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from statistics import mean
from typing import Any

from editkit.editors.base import Editor
from editkit.editors.routing import RecordedEditHandle, RoutingModel
from editkit.edits import EditCase, ProbeKind
from editkit.errors import ValidationError
from editkit.evaluation.batch import edit_groups
from editkit.models.lm import LanguageModel
from editkit.progress import progress_bar

SPLITS = {
    ProbeKind.EDIT: "in_easy",
    ProbeKind.REPHRASE: "in_easy",
    ProbeKind.HARD_IN: "in_hard",
    ProbeKind.OUT: "out_easy",
    ProbeKind.NEIGHBORHOOD: "out_hard",
}


def scope_breakdown(
    lm: LanguageModel,
    editor: Editor,
    cases: Sequence[EditCase],
    k: int,
    *,
    max_groups: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
    thresholds: Sequence[float] = (),
    distinct_subjects: bool = False,
) -> dict[str, Any]:
    """Classifier and answerer accuracy per split, plus routing latency, over groups of ``k`` edits. The
    classifier is read at the editor's own threshold and, for a sensitivity analysis, at each of
    ``thresholds`` (``classifier_accuracy_by_threshold``)."""
    if k < 1 or k > len(cases):
        raise ValidationError(f"k must be between 1 and the number of cases ({len(cases)}), got {k}")
    groups = edit_groups(cases, k, distinct_subjects=distinct_subjects)[:max_groups]
    n_groups = len(groups)
    levels = sorted({*thresholds})
    cls_hits: dict[str, list[float]] = {}
    by_level: dict[float, dict[str, list[float]]] = {t: {} for t in levels}
    threshold: float | None = None
    h_hits: dict[str, list[float]] = {}
    route_seconds: list[float] = []
    with progress_bar(n_groups, f"{editor.name} scope breakdown (k={k})", progress) as bar:
        for positions in groups:
            group = [cases[i] for i in positions]
            handle = editor.apply(lm, [c.request for c in group])
            try:
                model = handle.model
                if not isinstance(model, RoutingModel) or not isinstance(handle, RecordedEditHandle):
                    raise ValidationError(f"{editor.name} does not route inputs through a memory")
                store = model.memory.store
                threshold = model.threshold
                own = {c.request: store.get(i) for c, i in zip(group, handle.record_ids, strict=True)}
                probes = [(c, p) for c in group for p in c.probes if p.kind in SPLITS]
                t0 = time.perf_counter()
                raw = model.memory.lookup([p.prompt for _, p in probes])  # best edit and score, no threshold
                route_seconds.append((time.perf_counter() - t0) / max(1, len(probes)))
                for (case, probe), route in zip(probes, raw, strict=True):
                    split = SPLITS[probe.kind]
                    wanted = own[case.request].id if probe.kind.in_scope else None
                    best = route.record.id if route.record is not None else None
                    for level, hits in ((threshold, cls_hits), *((t, by_level[t]) for t in levels)):
                        got = best if route.score >= level else None
                        hits.setdefault(split, []).append(float(got == wanted))
                pairs = [(own[c.request], p.prompt) for c, p in probes]
                scores = model.answerer.score_tokens(
                    pairs,
                    [lm.encode(p.expected, special=False) for _, p in probes],
                    batch_size=batch_size,
                    first_distribution=False,
                )
                right = [float(s.exact_match) for s in scores]
                chosen = [i for i, (_, p) in enumerate(probes) if p.choice]  # a choice probe always has a contrast
                against = model.answerer.score_tokens(  # a choice probe: the likelier label is h's answer
                    [pairs[i] for i in chosen],
                    [lm.encode(probes[i][1].contrast or "", special=False) for i in chosen],
                    batch_size=batch_size,
                    first_distribution=False,
                )
                for i, a in zip(chosen, against, strict=True):
                    right[i] = float(float(scores[i].logprobs.mean()) > float(a.logprobs.mean()))
                for (_, probe), hit in zip(probes, right, strict=True):
                    h_hits.setdefault(SPLITS[probe.kind], []).append(hit)
            finally:
                handle.rollback()
            bar.advance()
    return {
        "k": k,
        "groups": n_groups,
        "threshold": threshold,
        "classifier_accuracy": {s: mean(v) for s, v in sorted(cls_hits.items())},
        "classifier_accuracy_by_threshold": {
            str(t): {s: mean(v) for s, v in sorted(hits.items())} for t, hits in by_level.items()
        },
        "answerer_accuracy": {s: mean(v) for s, v in sorted(h_hits.items())},
        "probes": {s: len(v) for s, v in sorted(cls_hits.items())},
        "route_seconds_per_input": mean(route_seconds) if route_seconds else 0.0,
    }
