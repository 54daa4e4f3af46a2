"""Evaluating a memory editor whose memory already holds other edits, and telling drawdown's causes apart.

* :func:`load_prefill` reads the distractor edits of ``editkit eval --prefill FILE --prefill-limit N``: edits a
  deployed memory would hold besides the run's own. None of them may touch what the run measures, so a distractor
  is left out when it shares a case id, a prompt or a subject with any of the run's cases; the first ``N`` that
  remain are kept, and the results record the file's hash, ``N`` and how many were left out and why.
* :class:`SubjectIndex` finds which edited subjects a text names (whole words, case-insensitive), so that the
  drawdown of an out-of-scope probe can be split by cause (:func:`subject_cause`): a probe about the edit's own
  subject asked of another fact (KnowEdit's relation specificity: an edit must not rewrite what else the model
  knows about its subject), a probe about a subject that has an edit of its own in memory (it may legitimately be
  in that edit's scope: scored against that edit's answer too), and a probe about a subject no edit touches
  (every change there is an error). A probe about the edit's own subject whose expected answer is the very answer
  the edit replaced, asked without naming the new one, asks the edited fact itself (:func:`asks_edited_fact`: some
  of KnowEdit ZsRE's relation-specificity prompts are the edit's question reworded, "The publisher of X is" after
  "What business published X?"): its drawdown is counted apart from the subject's other facts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editkit.data.formats import load_cases
from editkit.edits import EditCase, EditRequest, Probe, names_subject, words
from editkit.errors import ValidationError

MAX_SUBJECT_WORDS = 12

OWN_SUBJECT = "own_subject"
EDITED_SUBJECT = "edited_subject"
UNEDITED_SUBJECT = "unedited_subject"


def subject_key(request: EditRequest) -> str:
    """What makes two edits "about the same subject": the subject's words, else the edit's prompt."""
    return " ".join(words(request.subject or request.text))


@dataclass
class SubjectIndex:
    """The edits of a memory by the words of their subjects; :meth:`named` finds the edits whose subject a text
    names as whole words. Subjects shorter than ``min_chars`` characters are not indexed (too many false
    hits)."""

    min_chars: int = 3
    by_words: dict[tuple[str, ...], list[EditRequest]] = field(default_factory=dict)

    @classmethod
    def of(cls, requests: Iterable[EditRequest], min_chars: int = 3) -> SubjectIndex:
        index = cls(min_chars)
        index.add(requests)
        return index

    def add(self, requests: Iterable[EditRequest]) -> None:
        for r in requests:
            key = words(r.subject or "")
            if key and len(" ".join(key)) >= self.min_chars and len(key) <= MAX_SUBJECT_WORDS:
                self.by_words[key] = [*self.by_words.get(key, []), r]  # a new list: copies share the old ones

    def extended(self, requests: Iterable[EditRequest]) -> SubjectIndex:
        """A copy with ``requests`` added (this index is left as it was)."""
        index = SubjectIndex(self.min_chars, dict(self.by_words))
        index.add(requests)
        return index

    def named(self, text: str) -> list[EditRequest]:
        """The indexed edits whose subject ``text`` names, longest subjects first."""
        w = words(text)
        found: list[EditRequest] = []
        for n in range(min(MAX_SUBJECT_WORDS, len(w)), 0, -1):
            for i in range(len(w) - n + 1):
                found += self.by_words.get(w[i : i + n], [])
        return list(dict.fromkeys(found))


def subject_cause(case: EditCase, prompt: str, index: SubjectIndex) -> tuple[str, EditRequest | None]:
    """Why an out-of-scope probe of ``case`` might change: it names the case's own subject (``own_subject``),
    else a subject with another edit in the memory (``edited_subject``, with that edit), else neither
    (``unedited_subject``)."""
    if case.request.subject and names_subject(prompt, case.request.subject):
        return OWN_SUBJECT, None
    ours = {id(r) for r in case.requests}
    others = [r for r in index.named(prompt) if id(r) not in ours]
    return (EDITED_SUBJECT, others[0]) if others else (UNEDITED_SUBJECT, None)


def asks_edited_fact(request: EditRequest, probe: Probe) -> bool:
    """Whether an out-of-scope ``probe`` of ``request``'s case asks the edited fact itself: it names the edit's
    subject, its expected answer (or an alias) is the edit's old answer ``target_true``, and it does not name the
    new answer (a prompt such as "X's occupation, which is not NEW, is" asks for the old value beside the new one,
    and stays a question about what the edit must not touch)."""
    if not request.subject or request.target_true is None or not names_subject(probe.prompt, request.subject):
        return False
    old = " ".join(words(request.target_true))
    if old not in {" ".join(words(a)) for a in (probe.expected, *probe.aliases)}:
        return False
    return not names_subject(probe.prompt, request.target_new.strip())


@dataclass(frozen=True)
class Prefill:
    """Distractor edits for a memory, and what the results record of them."""

    requests: list[EditRequest]
    summary: dict[str, Any]


def load_prefill(
    path: str, limit: int | None, cases: Sequence[EditCase], run_data: str | Path, *, format: str | None = None
) -> Prefill:
    """The first ``limit`` edits of ``path`` (all if ``None``) that share no prompt or subject with ``cases``,
    nor (when ``path`` is the run's own data file ``run_data``) a case id. Fails if fewer than ``limit``
    remain."""
    dataset = load_cases(path, format=format, skip_invalid=True)
    same_file = dataset.path.resolve() == Path(run_data).resolve()
    ids = {c.request.case_id for c in cases if c.request.case_id is not None} if same_file else set()
    prompts = {" ".join(words(r.text)) for c in cases for r in c.requests}
    subjects = {subject_key(r) for c in cases for r in c.requests if r.subject}
    kept: list[EditRequest] = []
    dropped = {"case_id": 0, "prompt": 0, "subject": 0}
    for c in dataset.cases:
        if limit is not None and len(kept) == limit:
            break
        if c.request.case_id in ids:
            dropped["case_id"] += 1
        elif " ".join(words(c.request.text)) in prompts:
            dropped["prompt"] += 1
        elif c.request.subject and subject_key(c.request) in subjects:
            dropped["subject"] += 1
        else:
            kept.append(c.request)
    if limit is not None and len(kept) < limit:
        raise ValidationError(
            f"--prefill {path}: only {len(kept)} of its {len(dataset.cases)} edits share no case id, prompt or "
            f"subject with the run's cases; --prefill-limit {limit} asks for more"
        )
    summary = {
        "path": str(dataset.path),
        "format": dataset.format,
        "sha256": dataset.sha256,
        "limit": limit,
        "added": len(kept),
        "left_out_overlapping": dropped,
        "invalid_records_skipped": len(dataset.skipped),
    }
    return Prefill(kept, summary)
