"""CounterFact probability comparisons (ROME §3 / MEMIT §5.2).

For each probe the model's mean per-token log-probability of the ``expected`` continuation is compared with
that of the ``contrast`` continuation (ROME compares length-normalised NLLs):

* efficacy score: on the edit prompt, P(new) > P(true);
* paraphrase score: the same on each rephrased prompt, averaged within a case;
* neighborhood score: on prompts about other subjects with the same true answer, P(true) > P(new).

Each case contributes one number per score; aggregates average over cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import mean
from typing import Any

from editkit.edits import EditCase, ProbeKind
from editkit.models.lm import LanguageModel

SCORE_OF_KIND = {
    ProbeKind.EDIT: "efficacy",
    ProbeKind.REPHRASE: "paraphrase",
    ProbeKind.NEIGHBORHOOD: "neighborhood",
}


def probe_margins(lm: LanguageModel, case: EditCase, batch_size: int = 32) -> dict[str, list[float]]:
    """Per probe kind, the margins ``mean log p(expected) - mean log p(contrast)`` (positive = success)."""
    probes = [p for p in case.probes if p.kind in SCORE_OF_KIND and p.contrast is not None]
    prompts = [p.prompt for p in probes for _ in (0, 1)]
    conts = [c for p in probes for c in (p.expected, p.contrast or "")]
    scores = lm.score(prompts, conts, batch_size=batch_size)
    out: dict[str, list[float]] = {}
    for i, p in enumerate(probes):
        margin = float(scores[2 * i].mean() - scores[2 * i + 1].mean())
        out.setdefault(SCORE_OF_KIND[p.kind], []).append(margin)
    return out


def case_scores(margins: dict[str, list[float]]) -> dict[str, float]:
    """Success rate per score for one case, plus the mean margin (the "magnitude")."""
    out: dict[str, float] = {}
    for name, ms in margins.items():
        out[name] = mean(1.0 if m > 0 else 0.0 for m in ms)
        out[f"{name}_margin"] = mean(ms)
    return out


def aggregate(records: Sequence[dict[str, Any]], key: str = "post") -> dict[str, float]:
    """Average every score over the cases that have it."""
    names = sorted({n for r in records for n in r[key]})
    return {n: mean(r[key][n] for r in records if n in r[key]) for n in names}
