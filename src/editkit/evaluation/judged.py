"""ES_sent on generated text: greedy generations to a sentiment edit's in-scope questions, judged by a classifier.

SERAC (§5, eq. 6) scores a ConvSent edit by the sentiment of what the edited model says about the topic. The
likelihood version (``es`` / ``z_sent`` in :mod:`editkit.evaluation.metrics`) compares the labelled responses'
likelihoods; this module asks the model instead. For every in-scope question of a case whose request is a
ConvSent statement (``"TOPIC: X SENTIMENT: positive|negative"``,
:func:`editkit.data.formats.convsent.sentiment_of`), the model (the unedited one, or an edited one: a
``LanguageModel`` or a memory editor's routed model) generates ``max_new_tokens`` tokens greedily; a
:class:`Judge` gives each generation's probability of being positive, and ``score`` is that of the requested
sentiment (``p`` for a positive edit, ``1 - p`` for a negative one). Per case:

* ``es_sent_judged``: the share of its questions whose generation has the requested sentiment (``score > 0.5``),
  SERAC's z_sent on generated text;
* ``es_sent_judged_p``: the mean ``score``;
* ``judged_blank``: the share of blank generations (nothing but white space: a base language model often ends
  the text right after a bare question). A blank generation says nothing, so its ``score`` is 0.5 (never a
  success) whatever the judge would make of an empty string.

``cue`` is text appended to every question before generating (e.g. ``" I think"``, which gets a base model to
answer); the recorded prompt includes it.

Nothing here checks the topic (eq. 6's z_topic): a generation off the topic counts by its sentiment alone. The
judge is :class:`editkit.training.judge.SentimentJudge` (``editkit train judge``); any object with
``positive(texts)`` serves (tests use stubs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import mean
from typing import Protocol

from editkit.data.formats.convsent import sentiment_of
from editkit.edits import EditCase
from editkit.errors import ValidationError
from editkit.evaluation.metrics import IN_SCOPE
from editkit.models.lm import LanguageModel

BLANK = 0.5  # the score of a blank generation: no sentiment
ByCase = dict[int, tuple[dict[str, float], list["Judged"]]]  # position in the cases -> (scores, generations)


class Judge(Protocol):
    def positive(self, texts: list[str]) -> list[float]:
        """Each text's probability of being positive."""
        ...


@dataclass(frozen=True)
class Judged:
    """One in-scope question: the generation and its score (the requested sentiment's probability)."""

    prompt: str
    text: str
    score: float
    sentiment: str  # the requested one


def judged_cases(cases: Sequence[EditCase]) -> list[int]:
    """The positions of the cases that :func:`judge_generations` scores: those whose request is a ConvSent
    statement. A case among them without in-scope questions is an error."""
    if not cases:
        raise ValidationError("no cases to judge: the generation judge needs sentiment edits (ConvSent statements)")
    chosen = [i for i, c in enumerate(cases) if sentiment_of(c.request.descriptor or "") is not None]
    if not chosen:
        raise ValidationError(
            "no case is a sentiment edit ('TOPIC: X SENTIMENT: positive|negative', ConvSent): nothing to judge"
        )
    empty = [cases[i].request.case_id or str(i) for i in chosen if not cases[i].of_kind(*IN_SCOPE)]
    if empty:
        raise ValidationError(f"sentiment edit {empty[0]} has no in-scope question to generate an answer to")
    return chosen


def generate(model: LanguageModel, prompts: Sequence[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations of ``max_new_tokens`` tokens (fewer where the model ends the text), in batches."""
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        out += model.generate(prompts[i : i + batch_size], max_new_tokens)
    return out


def judge_texts(judge: Judge, texts: Sequence[str]) -> list[float | None]:
    """Each text's probability of being positive, ``None`` for a blank one (the judge never sees it)."""
    said = [i for i, t in enumerate(texts) if t.strip()]
    scores = judge.positive([texts[i] for i in said]) if said else []
    if len(scores) != len(said):
        raise ValueError(f"the judge scored {len(scores)} of {len(said)} texts")
    out: list[float | None] = [None] * len(texts)
    for i, p in zip(said, scores, strict=True):
        out[i] = float(p)
    return out


def judge_generations(
    model: LanguageModel,
    cases: Sequence[EditCase],
    judge: Judge,
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    cue: str = "",
) -> ByCase:
    """For each case of :func:`judged_cases`, by its position in ``cases``: its scores (module docstring) and its
    questions' judged generations, from ``model`` as it is now."""
    if max_new_tokens < 1:
        raise ValidationError(f"the judged generations need at least one new token, got {max_new_tokens}")
    positions = judged_cases(cases)
    chosen = [cases[i] for i in positions]
    questions = [(c, p.prompt + cue) for c in chosen for p in c.of_kind(*IN_SCOPE)]
    texts = generate(model, [q for _, q in questions], max_new_tokens, batch_size)
    judged = judge_texts(judge, texts)
    per_case: dict[int, list[Judged]] = {id(c): [] for c in chosen}
    for (case, prompt), text, positive in zip(questions, texts, judged, strict=True):
        wanted = sentiment_of(case.request.descriptor or "") or ""
        p = BLANK if positive is None else positive
        score = p if wanted == "positive" else 1.0 - p
        per_case[id(case)].append(Judged(prompt, text, float(score), wanted))
    return {
        i: (
            {
                "es_sent_judged": mean(float(j.score > 0.5) for j in per_case[id(cases[i])]),
                "es_sent_judged_p": mean(j.score for j in per_case[id(cases[i])]),
                "judged_blank": mean(float(not j.text.strip()) for j in per_case[id(cases[i])]),
            },
            per_case[id(cases[i])],
        )
        for i in positions
    }


@dataclass(frozen=True)
class GenerationJudge:
    """What a protocol needs to judge generations: the judge, how many tokens to generate, the batch size and the
    cue appended to each question."""

    judge: Judge
    max_new_tokens: int = 24
    batch_size: int = 16
    cue: str = ""

    def __call__(self, model: LanguageModel, cases: Sequence[EditCase]) -> ByCase:
        return judge_generations(
            model, cases, self.judge, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, cue=self.cue
        )


def paired(before: Sequence[Judged], after: Sequence[Judged]) -> list[dict[str, str | float]]:
    """A case's questions with the requested sentiment, the generation before and after its edit and their scores
    (a results record's ``generations``: SERAC's Table 7)."""
    return [
        {
            "prompt": b.prompt,
            "sentiment": b.sentiment,
            "before": b.text,
            "after": a.text,
            "score_before": b.score,
            "score_after": a.score,
        }
        for b, a in zip(before, after, strict=True)
    ]
