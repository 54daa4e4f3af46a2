"""Training data for reading statements: input-output edit cases turned into statement edits.

SERAC's scope classifier and counterfactual model read an edit's descriptor z_e; trained on ``[x_e ; y_e]`` only,
they meet statements ("The mother tongue of Danielle Darrieux is French.") as text of another shape. These
functions make statement edits from the training splits, for a trainer to mix with the question-answer cases; the
probes stay as they are (the in-scope ones still expect the new answer), so a statement case trains the scope on
(statement, in-scope input) pairs and h on ``template(statement, input) -> answer`` exactly as a pair case does.

* :func:`sentence` says an input-output edit as one declarative sentence:
  - a sentence prefix and its target (CounterFact: ``"The mother tongue of {} is"`` + ``" French"``) are the
    sentence, closed with a full stop: "The mother tongue of Danielle Darrieux is French.";
  - a question of the shape ``What / Who / Which [NOUN] is / was / are / were the ... / X's ...?`` becomes
    "The ... is ANSWER.": "What is the product made by UniFirst?" + "unmanned aircraft" -> "The product made by
    UniFirst is unmanned aircraft.", "Who was Lady Sarah Lennox's father?" -> "Lady Sarah Lennox's father was
    ...";
  - any other question: 'The answer to "QUESTION" is ANSWER.';
  - a question followed by the start of its answer (CounterFact's "What is the twin city of Wellington? It is")
    is said from its question when that has the shape above, else kept whole: "... It is Sheffield.".
* :func:`statement_case` / :func:`statement_cases`: the case with its request (and ``also`` requests) replaced
  by :meth:`~editkit.edits.EditRequest.statement` of the sentence; a case that is a statement already (ConvSent's
  ``"TOPIC: X SENTIMENT: positive"``: its validation topics are statement edits as loaded) is kept as it is.
* :func:`mixed_cases`: a seeded share of the cases as statements, the rest as they were.

A sentence longer than :data:`~editkit.edits.MAX_STATEMENT_CHARS` is refused by ``EditRequest`` (one line naming
the limit).
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Sequence

from editkit.edits import EditCase, EditRequest

# "What / Who / Which [NOUN] is / was / are / were the ... / X's ...?"
_COPULA_QUESTION = re.compile(
    r"^(?:what|who|which)(?:\s+\w+)?\s+(is|was|are|were)\s+(the\s.+?|.+?'s\s.+?)\s*\?$", re.IGNORECASE
)


def _close(text: str) -> str:
    """``text`` ending with a full stop (or the end mark it has)."""
    return text if text.endswith((".", "!", "?")) else text + "."


def _from_question(question: str, answer: str) -> str | None:
    """The copula question said as a sentence with its answer, or None when it has another shape."""
    m = _COPULA_QUESTION.match(" ".join(question.split()))
    if m is None:
        return None
    verb, rest = m.group(1).lower(), m.group(2)
    return _close(f"{rest[0].upper()}{rest[1:]} {verb} {answer}")


def sentence(request: EditRequest) -> str:
    """An input-output edit said as one declarative sentence (module docstring: the rules)."""
    if request.is_statement:
        return request.descriptor or ""
    text, answer = " ".join(request.text.split()), request.target_new.strip()
    if text.endswith("?"):
        return _from_question(text, answer) or _close(f'The answer to "{text}" is {answer}')
    question, mark, _ = text.rpartition("? ")
    if mark:
        said = _from_question(question + "?", answer)
        if said is not None:
            return said
    return _close(f"{text} {answer}")


def statement_of(request: EditRequest) -> EditRequest:
    """The request as a statement edit (:func:`sentence`), keeping its ``case_id``; a statement is returned as is."""
    if request.is_statement:
        return request
    return EditRequest.statement(sentence(request), case_id=request.case_id)


def statement_case(case: EditCase) -> EditCase:
    """The case with every request said as a statement; its probes unchanged."""
    return dataclasses.replace(case, request=statement_of(case.request), also=tuple(statement_of(r) for r in case.also))


def statement_cases(cases: Sequence[EditCase]) -> list[EditCase]:
    """:func:`statement_case` of each case, in order."""
    return [statement_case(c) for c in cases]


def mixed_cases(cases: Sequence[EditCase], share: float, *, seed: int = 0) -> list[EditCase]:
    """The cases in order, ``share`` of them (rounded, drawn with ``seed``) said as statements."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    chosen = set(random.Random(seed).sample(range(len(cases)), round(share * len(cases))))
    return [statement_case(c) if i in chosen else c for i, c in enumerate(cases)]
