"""The vocabulary every layer speaks: what a user asks for (`EditRequest`) and how it is judged (`EditCase`).

A request is either an input-output pair (a prompt, optionally a template with ``{}`` for the subject, and a new
target) or a statement: a free-form descriptor alone ("Boris Johnson is the UK PM.", "TOPIC: bananas SENTIMENT:
negative"), for edits that are not input-output pairs (:meth:`EditRequest.statement`, :attr:`EditRequest.is_statement`;
memory editors with ``capabilities.free_form`` take them, the others refuse them in one line). A statement is
any non-blank text of at most :data:`MAX_STATEMENT_CHARS` characters, in any language: it is stored verbatim, and
what reads it (a scope classifier on an English sentence encoder, a counterfactual model) decides how well it
routes and answers. Requests are validated on construction; methods that need more (a subject inside the prompt,
a prompt that fits the model) check it with :meth:`EditRequest.require_subject` and :func:`check_fits`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from editkit.errors import ValidationError

MAX_STATEMENT_CHARS = 2000  # a statement (free-form descriptor) at most; the edit memory stores no longer one


@dataclass(frozen=True)
class EditRequest:
    """One edit.

    Attributes:
        prompt: the input to edit. May contain ``{}`` where the subject goes (CounterFact style,
            ``"{} plays the sport of"``); otherwise the subject, if given, must occur in it verbatim.
        target_new: the answer the edited model should give (a continuation of the prompt).
        subject: the entity the fact is about; required by locate-and-edit methods (ROME, MEMIT).
        target_true: the answer the unedited model is believed to give, if known.
        descriptor: free-form description of the edit, for edits that are not input-output pairs; alone (no
            prompt) the request is a statement.
        case_id: identifier from the source dataset, carried through to results.
    """

    prompt: str = ""
    target_new: str = ""
    subject: str | None = None
    target_true: str | None = None
    descriptor: str | None = None
    case_id: str | None = None

    def __post_init__(self) -> None:
        if self.descriptor:
            _check_statement(self)
        if not self.descriptor:
            if not self.prompt.strip():
                raise ValidationError("edit request has an empty prompt (and no free-form descriptor)")
            if not self.target_new.strip():
                raise ValidationError(f"edit request for prompt {self.prompt!r} has an empty target_new")
        if self.prompt.count("{}") > 1:
            raise ValidationError(f"prompt {self.prompt!r} has more than one '{{}}' subject slot")
        if "{}" in self.prompt and not self.subject:
            raise ValidationError(f"prompt {self.prompt!r} has a '{{}}' slot but no subject was given")
        if self.subject is not None and "{}" not in self.prompt and self.prompt:
            if not self.subject.strip():
                raise ValidationError(f"edit request for prompt {self.prompt!r} has an empty subject")
            if self.subject not in self.prompt:
                raise ValidationError(
                    f"subject {self.subject!r} does not occur in prompt {self.prompt!r}; "
                    "write the prompt as a template with '{}' or include the subject verbatim"
                )
        if self.target_true is not None and self.target_true.strip() == self.target_new.strip():
            raise ValidationError(
                f"target_new equals target_true ({self.target_new!r}) for prompt {self.prompt!r}: nothing to edit"
            )

    @classmethod
    def statement(cls, text: str, *, case_id: str | None = None) -> EditRequest:
        """An edit that is only a free-form statement ("Boris Johnson is the UK PM."), no prompt or target."""
        if not isinstance(text, str):
            raise ValidationError(f"an edit statement must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValidationError("edit statement (descriptor) is empty")
        return cls(descriptor=text, case_id=case_id)

    @property
    def is_statement(self) -> bool:
        """Whether this edit is a free-form statement alone (no prompt): only editors with
        ``capabilities.free_form`` take it."""
        return bool(self.descriptor) and not self.prompt

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject or "") if "{}" in self.prompt else self.prompt

    @property
    def template(self) -> str:
        """The prompt as a template with ``{}`` where the subject goes (requires a subject)."""
        self.require_subject("this operation")
        assert self.subject is not None
        if "{}" in self.prompt:
            return self.prompt
        i = self.prompt.rfind(self.subject)
        return self.prompt[:i] + "{}" + self.prompt[i + len(self.subject) :]

    def require_subject(self, method: str) -> None:
        if not self.subject:
            raise ValidationError(
                f"{method} needs the subject of the edit (the entity whose fact changes); "
                f"the request for {self.prompt!r} has none"
            )

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EditRequest:
        known = {"prompt", "target_new", "subject", "target_true", "descriptor", "case_id"}
        unknown = set(d) - known
        if unknown:
            raise ValidationError(f"edit request has unknown fields {sorted(unknown)}; known: {sorted(known)}")
        for key, value in d.items():
            if value is not None and not isinstance(value, str):
                raise ValidationError(f"edit request field {key!r} must be a string, got {type(value).__name__}")
        return cls(**dict(d))


def _check_statement(r: EditRequest) -> None:
    """A descriptor must say something, within :data:`MAX_STATEMENT_CHARS`; alone (a statement) it carries no
    target, subject or old answer, which belong to a prompt."""
    assert r.descriptor
    if not r.descriptor.strip():
        raise ValidationError("edit statement (descriptor) is empty")
    if len(r.descriptor) > MAX_STATEMENT_CHARS:
        raise ValidationError(
            f"edit statement (descriptor) is {len(r.descriptor)} characters long; the limit is {MAX_STATEMENT_CHARS}"
        )
    if not r.prompt:
        given = [k for k in ("target_new", "subject", "target_true") if getattr(r, k)]
        if given:
            raise ValidationError(
                f"edit statement {r.descriptor[:60]!r} has {', '.join(given)} but no prompt; a statement stands "
                "alone (give a prompt too for an input-output edit)"
            )


class ProbeKind(StrEnum):
    """What a probe tests. In-scope probes should follow the edit; out-of-scope probes should not change."""

    EDIT = "edit"  # the edit prompt itself (efficacy)
    REPHRASE = "rephrase"  # paraphrases (generalisation, easy in-scope)
    HARD_IN = "hard_in"  # entailed / multi-hop / portability questions (hard in-scope)
    NEIGHBORHOOD = "neighborhood"  # related but different subjects (hard out-of-scope)
    OUT = "out"  # unrelated inputs (easy out-of-scope)

    @property
    def in_scope(self) -> bool:
        return self in (ProbeKind.EDIT, ProbeKind.REPHRASE, ProbeKind.HARD_IN)


@dataclass(frozen=True)
class Probe:
    """An input used to judge an edit, with the answer it should give after the edit.

    For CounterFact-style probability comparisons, ``expected`` is the answer that should win and ``contrast``
    the one that should lose (for in-scope probes: new vs. true target; for neighborhood probes the reverse).
    A ``choice`` probe is a two-way question (a claim to label " True" or " False"): the model's answer is
    whichever of ``expected`` and ``contrast`` it finds likelier, as a classifier's label, so edit success counts
    ``expected`` winning and drawdown counts the choice changing (:mod:`editkit.evaluation.metrics`).
    """

    prompt: str
    expected: str
    kind: ProbeKind
    contrast: str | None = None
    aliases: tuple[str, ...] = ()  # further answers that count as ``expected`` (exact match, likelihood sets)
    contrast_aliases: tuple[str, ...] = ()  # further answers that count as ``contrast``
    choice: bool = False  # the answer is whichever of expected / contrast is likelier (a two-way label)

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValidationError(f"{self.kind.value} probe has an empty prompt")
        if not self.expected.strip():
            raise ValidationError(f"{self.kind.value} probe {self.prompt!r} has an empty expected answer")
        if any(not isinstance(a, str) or not a.strip() for a in self.aliases + self.contrast_aliases):
            raise ValidationError(f"{self.kind.value} probe {self.prompt!r} has an empty alias")
        if self.contrast_aliases and self.contrast is None:
            raise ValidationError(f"{self.kind.value} probe {self.prompt!r} has contrast aliases but no contrast")
        if self.choice and self.contrast is None:
            raise ValidationError(f"{self.kind.value} probe {self.prompt!r} is a choice but has no contrast")

    @property
    def answers(self) -> tuple[str, ...]:
        """Every answer that counts as correct: ``expected`` first."""
        return (self.expected, *self.aliases)

    @property
    def contrasts(self) -> tuple[str, ...]:
        return () if self.contrast is None else (self.contrast, *self.contrast_aliases)


@dataclass(frozen=True)
class EditCase:
    """A request plus the probes that judge it. ``also``: further edits applied together with the request, for
    data whose probes need several facts changed at once (an MQuAKE case with several rewrites)."""

    request: EditRequest
    probes: tuple[Probe, ...] = field(default_factory=tuple)
    also: tuple[EditRequest, ...] = field(default_factory=tuple)

    @property
    def requests(self) -> tuple[EditRequest, ...]:
        """Every edit of the case, its request first."""
        return (self.request, *self.also)

    def of_kind(self, *kinds: ProbeKind) -> list[Probe]:
        return [p for p in self.probes if p.kind in kinds]


def requests_of(cases: Sequence[EditCase]) -> list[EditRequest]:
    return [c.request for c in cases]


_WORD = re.compile(r"\w+")


def words(text: str) -> tuple[str, ...]:
    """The text's words, lower-cased (punctuation and possessive marks separate them)."""
    return tuple(_WORD.findall(text.lower()))


def names_subject(text: str, subject: str) -> bool:
    """Whether ``text`` names ``subject`` as whole words, case-insensitively ("the eiffel tower's" names "The
    Eiffel Tower"; "Parisian" does not name "Paris")."""
    s, w = words(subject), words(text)
    return bool(s) and any(w[i : i + len(s)] == s for i in range(len(w) - len(s) + 1))
