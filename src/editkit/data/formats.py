"""Benchmark files -> EditCase, with format detection and errors that name the file, the record and the field.

Formats (see ``editkit data``); a file's format is detected from its first record, the most specific first:

* ``editkit``: editkit's own format for your edit cases (below).
* ``mquake``: MQuAKE-CF (``requested_rewrite`` list, multi-hop ``questions``, ``new_answer(_alias)``,
  ``answer(_alias)``, ``new_single_hops``). A case holds one edit, and a record's multi-hop answer depends on
  all its rewrites, so only records with exactly one rewrite convert; the others raise :class:`ValidationError`
  (``skip_invalid`` leaves them out and lists them in :attr:`Dataset.skipped`). The rewrite is the request.
  Probes: the edit prompt (contrast: the true target); the edited hop's question (rephrase, with that hop's
  answer aliases); the multi-hop questions (hard in-scope: ``new_answer`` and its aliases, contrast ``answer``
  and its aliases); the other hops' cloze prompts with their answers (neighborhood: facts about other entities
  that the edit must not change, e.g. who heads the new country).
* ``counterfact``: CounterFact in the full ROME schema (:mod:`editkit.data.counterfact`).
* ``counterfact-easyedit``: CounterFact in EasyEdit's reduced schema (``prompt, subject, target_new,
  ground_truth, rephrase_prompt, locality_prompt, locality_ground_truth``).
* ``zsre-mend``: zsRE in the MEND schema (``src, rephrase, alt, answers, loc, loc_ans``, optional
  ``portability``).
* ``wikibio``: KnowEdit WikiBio (``text, labels, concept, locality``): the passage is the prompt and ``labels``
  its new continuation (edit probe, no contrast); ``concept`` is the subject when it occurs verbatim in the
  passage; ``locality`` probe groups are neighborhood probes.
* ``leapofthought``: LeapOfThought taxonomic claims (``phrase, answer, metadata``) as fact-checking edits. The
  prompt is ``"{phrase} True or false?"`` and the edit teaches the record's label (``answer`` 1 -> ``" True"``,
  0 -> ``" False"``); every probe's contrast is the other label, and there is no ``target_true`` (what the model
  believes is not known). The other claims of ``metadata`` (``implicit_rule``, ``property`` and the
  ``distractors``) become probes, written the way ``phrase`` is, ``"A {subject} {verb} {object}."``, labelled
  by their ``validity`` ("always true" -> True, "never true" -> False). Verbs: ``/r/IsA`` and ``hypernym``
  "is a", ``meronym`` "has a", ``/r/CapableOf`` "is capable of", ``/r/PartOf`` "is part of", ``/r/Desires``
  "desires"; claims with any other predicate (``/r/Antonym``, which the data renders inconsistently) are left
  out. A claim is hard in-scope when the edit entails it by inheritance (an X that is a Y has what every Y
  has): the ``property`` "Y P o" is false when the edit says "X P o" is false and the ``implicit_rule`` "X is a
  Y" holds; a distractor rule "X is a Z" is false when a distractor property gives every Z the opposite label
  for "P o" than the edit gives X. Every other claim (the premises, unrelated distractors) is a neighborhood
  probe: the edit must not change it.
* ``convsent``: KnowEdit ConvSent (``ent, pos, neg``: a topic with positive and negative dialogue responses).
  The request is a free-form descriptor ``"TOPIC: {ent} SENTIMENT: {positive|negative}"``; the desired
  sentiment alternates with the record's index in the file (even: positive, odd: negative), so a file holds
  edits of both kinds. In-scope probes (rephrase) are the SERAC paper's questions ``"What is your {position}
  {ent}?"`` for the positions "opinion of", "stance on", "position on", "impression of", "assessment of",
  expecting the desired sentiment's responses (the first as ``expected``, the rest as aliases) against the
  other sentiment's (contrast and contrast aliases). The out-of-scope probe asks for the opinion of the next
  record's topic (the last record's is the first's), expecting that topic's first positive response; it is
  left out when the next record has none.
* ``knowedit``: KnowEdit's ZsRE and WikiData_counterfact files (``prompt, subject, target_new,
  ground_truth``, optional ``rephrase_prompt``, ``locality`` and ``portability`` probe groups).

Targets of benchmark files are scored as continuations, so they get a leading space.

The ``editkit`` format
----------------------

JSON lines (a JSON list of the same objects is read too), one edit case per line::

    {"request": {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower",
                 "target_new": " Rome", "target_true": " Paris", "case_id": "demo-eiffel"},
     "probes": [{"prompt": "The Eiffel Tower is located in the city of", "expected": " Rome",
                 "kind": "edit", "contrast": " Paris"},
                {"prompt": "The Colosseum is located in the city of", "expected": " Rome", "kind": "out"}]}

(each object on a single line in the file). ``request`` holds the fields of :class:`~editkit.edits.EditRequest`:
``prompt`` (may hold ``{}`` where the ``subject`` goes; otherwise the subject, if given, must occur in it
verbatim), ``target_new``, and optional ``subject``, ``target_true``, ``descriptor`` (a free-form edit such as
``"TOPIC: bananas SENTIMENT: negative"``, whose ``prompt`` and ``target_new`` may then be empty) and
``case_id``, all strings. ``probes`` (optional; a case without probes can be applied but not evaluated) is a list
of objects with ``prompt``, ``expected`` (the answer the edited model should give), ``kind`` (``edit``,
``rephrase``, ``hard_in``, ``neighborhood`` or ``out``; see :class:`~editkit.edits.ProbeKind`), and optional
``contrast`` (the answer that should lose to ``expected``), ``aliases`` and ``contrast_aliases`` (lists of further
answers that count as ``expected`` / ``contrast``). Answers are continuations of their prompt and are used as
written, so start them with the space a tokenizer expects after the prompt (``" Rome"``). Unknown fields are
errors. :func:`editkit_record` writes a case in this format; the package's demo edits
(``editkit/data/demo_edits.jsonl``) are an example file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, overload

from editkit.data.counterfact import counterfact_case
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import UnknownNameError, ValidationError


@dataclass(frozen=True)
class Dataset:
    """Edit cases with where they came from (recorded in results)."""

    cases: list[EditCase]
    format: str
    path: Path
    sha256: str
    n_records: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (record index, why), with skip_invalid


class _Record:
    """Field access that names the file, the record and the field in its errors.

    ``at`` is where a nested object sits in its record (``requested_rewrite[0]``); ``file`` holds all the
    file's records, for converters that look at a record's neighbour.
    """

    def __init__(self, path: Path, index: int, rec: Any, at: str = "", file: Sequence[Any] = ()) -> None:
        if not isinstance(rec, dict):
            where = f"record {index}, field {at!r}" if at else f"record {index}"
            raise ValidationError(f"{path}: {where} is {type(rec).__name__}, not an object")
        self.path, self.index, self.rec, self.at, self.file = path, index, rec, at, file

    def _name(self, name: str) -> str:
        return f"{self.at}.{name}" if self.at else name

    def where(self, name: str | None = None) -> str:
        full = self._name(name) if name else self.at
        return f"{self.path}: record {self.index}, field {full!r}" if full else f"{self.path}: record {self.index}"

    def has(self, name: str) -> bool:
        return self.rec.get(name) is not None

    def only(self, known: Iterable[str]) -> None:
        if unknown := sorted(set(self.rec) - set(known)):
            raise ValidationError(f"{self.where()} has unknown fields {unknown}; known: {sorted(known)}")

    @overload
    def text(self, name: str, *, optional: Literal[False] = False, strict: bool = False) -> str: ...

    @overload
    def text(self, name: str, *, optional: bool, strict: bool = False) -> str | None: ...

    def text(self, name: str, *, optional: bool = False, strict: bool = False) -> str | None:
        """A non-empty string. Unless ``strict``, a list of strings (several accepted answers) gives its first."""
        if not self.has(name):
            if optional:
                return None
            raise ValidationError(f"{self.where(name)} is missing")
        value = self.rec[name]
        if not strict and isinstance(value, list) and value and isinstance(value[0], str):
            value = value[0]  # several accepted answers: the first is the reference
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(f"{self.where(name)} must be a non-empty string, got {value!r}")
        return value

    def field(self, name: str) -> _Record:
        """A nested object; its errors name the path to it."""
        if not self.has(name):
            raise ValidationError(f"{self.where(name)} is missing")
        return _Record(self.path, self.index, self.rec[name], self._name(name), self.file)

    def items(self, name: str, *, optional: bool = False) -> list[Any]:
        """A list; required ones must be non-empty, optional ones may be missing or empty."""
        value = self.rec.get(name)
        if value is None and optional:
            return []
        if not isinstance(value, list) or not (value or optional):
            what = "a list" if optional else "a non-empty list"
            raise ValidationError(f"{self.where(name)} must be {what}, got {value!r:.80}")
        return value

    def objects(self, name: str, *, optional: bool = False) -> list[_Record]:
        return [
            _Record(self.path, self.index, item, f"{self._name(name)}[{j}]", self.file)
            for j, item in enumerate(self.items(name, optional=optional))
        ]

    def strings(self, name: str, *, optional: bool = False) -> tuple[str, ...]:
        values = self.items(name, optional=optional)
        for j, value in enumerate(values):
            if not isinstance(value, str) or not value.strip():
                raise ValidationError(f"{self.where(f'{name}[{j}]')} must be a non-empty string, got {value!r}")
        return tuple(values)

    def neighbour(self) -> _Record | None:
        """The next record of the file (the first after the last); None if there is no other object."""
        if len(self.file) < 2:
            return None
        j = (self.index + 1) % len(self.file)
        return _Record(self.path, j, self.file[j], file=self.file) if isinstance(self.file[j], dict) else None

    def groups(self, name: str) -> list[tuple[str, str]]:
        """``{group: [{prompt, ground_truth}]}`` -> ``[(prompt, answer)]`` (KnowEdit's probe groups)."""
        value = self.rec.get(name) or {}
        if not isinstance(value, dict):
            raise ValidationError(f"{self.where(name)} must be an object of probe groups")
        out = []
        for group, items in value.items():
            for j, item in enumerate(items if isinstance(items, list) else [items]):
                sub = _Record(self.path, self.index, item)
                try:
                    out.append((sub.text("prompt"), sub.text("ground_truth")))
                except ValidationError as exc:
                    raise ValidationError(f"{exc} (in {name}.{group}[{j}])") from None
        return out


def _space(s: str) -> str:
    return s if s.startswith(" ") else " " + s


def _case_id(r: _Record, name: str = "case_id") -> str:
    return str(r.rec.get(name, r.index))


def _request(r: _Record, prompt: str, subject: str | None, new: str, true: str | None, case_id: str) -> EditRequest:
    if subject is not None and "{}" not in prompt and subject not in prompt:
        subject = None  # some rephrased questions drop the entity; such cases cannot be located
    if true is not None and true.strip() == new.strip():
        true = None
    try:
        return EditRequest(
            prompt=prompt,
            subject=subject,
            target_new=_space(new),
            target_true=_space(true) if true else None,
            case_id=case_id,
        )
    except ValidationError as exc:
        raise ValidationError(f"{r.path}: record {r.index}: {exc}") from None


def _edit_and_rephrase(
    r: _Record,
    *,
    prompt: str,
    subject: str,
    new: str,
    true: str,
    rephrase: str,
    required: tuple[str, ...] = (),
    contrast: bool = True,
) -> tuple[EditRequest, list[Probe]]:
    """The request and its in-scope probes (edit prompt, rephrase), from the named fields of a record."""
    req = _request(
        r,
        r.text(prompt),
        r.text(subject, optional=subject not in required),
        r.text(new),
        r.text(true, optional=true not in required),
        _case_id(r),
    )
    against = req.target_true if contrast else None
    probes = [Probe(req.text, req.target_new, ProbeKind.EDIT, contrast=against)]
    if text := r.text(rephrase, optional=True):
        probes.append(Probe(text, req.target_new, ProbeKind.REPHRASE, contrast=against))
    return req, probes


def _easyedit_counterfact(r: _Record) -> EditCase:
    req, probes = _edit_and_rephrase(
        r,
        prompt="prompt",
        subject="subject",
        new="target_new",
        true="ground_truth",
        rephrase="rephrase_prompt",
        required=("subject", "ground_truth"),
    )
    if loc := r.text("locality_prompt", optional=True):
        truth = _space(r.text("locality_ground_truth"))
        probes.append(Probe(loc, truth, ProbeKind.NEIGHBORHOOD, contrast=req.target_new))
    return EditCase(req, tuple(probes))


def _zsre_mend(r: _Record) -> EditCase:
    req, probes = _edit_and_rephrase(
        r, prompt="src", subject="subject", new="alt", true="answers", rephrase="rephrase", contrast=False
    )
    if loc := r.text("loc", optional=True):
        probes.append(Probe(loc, _space(r.text("loc_ans")), ProbeKind.OUT))
    port = r.rec.get("portability")
    if isinstance(port, dict) and port.get("New Question"):
        sub = _Record(r.path, r.index, port)
        probes.append(Probe(sub.text("New Question"), _space(sub.text("New Answer")), ProbeKind.HARD_IN))
    return EditCase(req, tuple(probes))


def _knowedit(r: _Record) -> EditCase:
    req, probes = _edit_and_rephrase(
        r, prompt="prompt", subject="subject", new="target_new", true="ground_truth", rephrase="rephrase_prompt"
    )
    probes += [Probe(p, _space(a), ProbeKind.NEIGHBORHOOD) for p, a in r.groups("locality")]
    probes += [Probe(p, _space(a), ProbeKind.HARD_IN) for p, a in r.groups("portability")]
    return EditCase(req, tuple(probes))


def _wikibio(r: _Record) -> EditCase:
    req = _request(r, r.text("text"), r.text("concept", optional=True), r.text("labels"), None, _case_id(r))
    probes = [Probe(req.text, req.target_new, ProbeKind.EDIT)]
    probes += [Probe(p, _space(a), ProbeKind.NEIGHBORHOOD) for p, a in r.groups("locality")]
    return EditCase(req, tuple(probes))


# --------------------------------------------------------------------------- MQuAKE


def _answers(r: _Record, name: str, aliases: str) -> tuple[str, ...]:
    """An answer and its aliases, spaced and without repeats, the answer first."""
    return tuple(dict.fromkeys(_space(a) for a in (r.text(name, strict=True), *r.strings(aliases, optional=True))))


def _mquake(r: _Record) -> EditCase:
    rewrites = r.objects("requested_rewrite")
    if len(rewrites) != 1:
        raise ValidationError(
            f"{r.where('requested_rewrite')}: MQuAKE record has {len(rewrites)} rewrites; editkit cases hold one "
            "edit, and the multi-hop answers need all of them (skip_invalid leaves such records out)"
        )
    rw = rewrites[0]
    new, true = rw.field("target_new").text("str"), rw.field("target_true").text("str")
    req = _request(r, rw.text("prompt"), rw.text("subject"), new, true, _case_id(r))
    probes = [Probe(req.text, req.target_new, ProbeKind.EDIT, contrast=req.target_true), *_mquake_hops(r, req)]
    after, before = _answers(r, "new_answer", "new_answer_alias"), _answers(r, "answer", "answer_alias")
    probes += [
        Probe(q, after[0], ProbeKind.HARD_IN, contrast=before[0], aliases=after[1:], contrast_aliases=before[1:])
        for q in r.strings("questions")
    ]
    return EditCase(req, tuple(probes))


def _mquake_hops(r: _Record, req: EditRequest) -> list[Probe]:
    """The edited hop's question rephrases the edit; the other hops are facts the edit must not change."""
    hops = r.objects("new_single_hops")
    edited = [hop for hop in hops if hop.text("cloze") == req.text]
    if len(edited) != 1:
        raise ValidationError(
            f"{r.where('new_single_hops')}: expected one hop whose cloze is the edit prompt {req.text!r}, "
            f"found {len(edited)}"
        )
    probes = []
    for hop in hops:
        answers = _answers(hop, "answer", "answer_alias")
        if hop is edited[0]:
            aliases = tuple(a for a in answers if a != req.target_new)
            probes.append(
                Probe(hop.text("question"), req.target_new, ProbeKind.REPHRASE, req.target_true, aliases=aliases)
            )
        else:
            probes.append(Probe(hop.text("cloze"), answers[0], ProbeKind.NEIGHBORHOOD, aliases=answers[1:]))
    return probes


# --------------------------------------------------------------------------- LeapOfThought

_LOT_VERBS = {
    "/r/IsA": "is a",
    "hypernym": "is a",
    "meronym": "has a",
    "/r/CapableOf": "is capable of",
    "/r/PartOf": "is part of",
    "/r/Desires": "desires",
}
_LOT_VALIDITY = {"always true": True, "never true": False}
_TRUE_OR_FALSE = " True or false?"


def _label(true: bool) -> str:
    return " True" if true else " False"


class _Claim(NamedTuple):
    """A LeapOfThought triple with its truth value."""

    subject: str
    predicate: str
    object: str
    true: bool

    @classmethod
    def of(cls, t: _Record) -> _Claim:
        validity = t.text("validity")
        if validity not in _LOT_VALIDITY:
            raise ValidationError(f"{t.where('validity')} must be one of {sorted(_LOT_VALIDITY)}, got {validity!r}")
        return cls(t.text("subject"), t.text("predicate"), t.text("object"), _LOT_VALIDITY[validity])

    def sentence(self) -> str | None:
        verb = _LOT_VERBS.get(self.predicate)
        return None if verb is None else f"A {self.subject} {verb} {self.object}."

    def is_a(self, subject: str, kind: str | None = None) -> bool:
        """Whether this claims "subject is a kind" (any kind if None)."""
        return self.predicate in ("hypernym", "/r/IsA") and self.subject == subject and kind in (None, self.object)

    def same_fact(self, other: _Claim) -> bool:
        return (self.predicate, self.object) == (other.predicate, other.object)


def _lot_claims(meta: _Record) -> dict[str, list[_Claim]]:
    """The claims of a record's metadata by role: ``implicit_rule``, ``property``, ``distractors.*``."""
    roles = {name: [_Claim.of(meta.field(name))] for name in ("implicit_rule", "property") if meta.has(name)}
    distractors = meta.field("distractors") if meta.has("distractors") else None
    for name in ("implicit_rule", "property", "statement"):
        claims = distractors.objects(name, optional=True) if distractors else []
        roles[f"distractors.{name}"] = [_Claim.of(t) for t in claims]
    return roles


def _lot_entailed(roles: dict[str, list[_Claim]], edit: _Claim) -> set[_Claim]:
    """The claims the edit entails by inheritance (an X that is a Y has what every Y has); see the docstring."""
    out = {
        prop
        for rule in roles.get("implicit_rule", [])
        for prop in roles.get("property", [])
        if rule.true and rule.is_a(edit.subject, prop.subject) and prop.same_fact(edit) and not (edit.true or prop.true)
    }
    props = roles["distractors.property"]
    out |= {
        rule
        for rule in roles["distractors.implicit_rule"]
        if not rule.true
        and rule.is_a(edit.subject)
        and any(p.subject == rule.object and p.same_fact(edit) and p.true != edit.true for p in props)
    }
    return out


def _leapofthought(r: _Record) -> EditCase:
    answer = r.rec.get("answer")
    if answer not in (0, 1):
        raise ValidationError(f"{r.where('answer')} must be 1 (true) or 0 (false), got {answer!r}")
    meta = r.field("metadata")
    edit = _Claim.of(meta.field("statement"))._replace(true=bool(answer))
    prompt = r.text("phrase") + _TRUE_OR_FALSE
    req = _request(r, prompt, None, _label(edit.true), None, _case_id(r, "id"))
    probes = {prompt: Probe(prompt, req.target_new, ProbeKind.EDIT, contrast=_label(not edit.true))}
    roles = _lot_claims(meta)
    entailed = _lot_entailed(roles, edit)
    for claim in (c for claims in roles.values() for c in claims):
        sentence = claim.sentence()
        if sentence is None or sentence + _TRUE_OR_FALSE in probes:
            continue
        kind = ProbeKind.HARD_IN if claim in entailed else ProbeKind.NEIGHBORHOOD
        probes[sentence + _TRUE_OR_FALSE] = Probe(
            sentence + _TRUE_OR_FALSE, _label(claim.true), kind, contrast=_label(not claim.true)
        )
    return EditCase(req, tuple(probes.values()))


# --------------------------------------------------------------------------- ConvSent

_CONVSENT_QUESTIONS = tuple(
    f"What is your {position} {{}}?"
    for position in ("opinion of", "stance on", "position on", "impression of", "assessment of")
)


def _responses(r: _Record, name: str) -> list[str]:
    return [_space(s.rstrip()) for s in r.strings(name)]


def _convsent(r: _Record) -> EditCase:
    topic, pos, neg = r.text("ent", strict=True), _responses(r, "pos"), _responses(r, "neg")
    positive = r.index % 2 == 0
    want, avoid = (pos, neg) if positive else (neg, pos)
    sentiment = "positive" if positive else "negative"
    req = EditRequest(descriptor=f"TOPIC: {topic} SENTIMENT: {sentiment}", case_id=_case_id(r))
    probes = [
        Probe(
            q.format(topic),
            want[0],
            ProbeKind.REPHRASE,
            contrast=avoid[0],
            aliases=tuple(want[1:]),
            contrast_aliases=tuple(avoid[1:]),
        )
        for q in _CONVSENT_QUESTIONS
    ]
    if other := _convsent_other(r, topic):
        probes.append(Probe(_CONVSENT_QUESTIONS[0].format(other[0]), other[1], ProbeKind.OUT))
    return EditCase(req, tuple(probes))


def _convsent_other(r: _Record, topic: str) -> tuple[str, str] | None:
    """The next record's topic and its first positive response; None if it has none (its own error says why)."""
    nxt = r.neighbour()
    try:
        other = (nxt.text("ent", strict=True), _responses(nxt, "pos")[0]) if nxt else None
    except ValidationError:
        return None
    return other if other and other[0] != topic else None


# --------------------------------------------------------------------------- editkit's own format

_PROBE_FIELDS = ("prompt", "expected", "kind", "contrast", "aliases", "contrast_aliases")


def _editkit(r: _Record) -> EditCase:
    r.only(("request", "probes"))
    request = r.field("request")
    try:
        req = EditRequest.from_dict(request.rec)
    except ValidationError as exc:
        raise ValidationError(f"{request.where()}: {exc}") from None
    return EditCase(req, tuple(_editkit_probe(p) for p in r.objects("probes", optional=True)))


def _editkit_probe(p: _Record) -> Probe:
    p.only(_PROBE_FIELDS)
    kind = p.text("kind", strict=True)
    if kind not in {k.value for k in ProbeKind}:
        valid = ", ".join(k.value for k in ProbeKind)
        raise ValidationError(f"{p.where('kind')} is {kind!r}; valid kinds: {valid}")
    prompt, expected = p.text("prompt", strict=True), p.text("expected", strict=True)
    contrast = p.text("contrast", optional=True, strict=True)
    aliases, contrast_aliases = p.strings("aliases", optional=True), p.strings("contrast_aliases", optional=True)
    try:
        return Probe(prompt, expected, ProbeKind(kind), contrast, aliases=aliases, contrast_aliases=contrast_aliases)
    except ValidationError as exc:
        raise ValidationError(f"{p.where()}: {exc}") from None


def editkit_record(case: EditCase) -> dict[str, Any]:
    """A case as a record of the ``editkit`` format (write ``json.dumps`` of each, one per line)."""
    return {"request": case.request.to_dict(), "probes": [_probe_record(p) for p in case.probes]}


def _probe_record(p: Probe) -> dict[str, Any]:
    rec: dict[str, Any] = {"prompt": p.prompt, "expected": p.expected, "kind": p.kind.value}
    if p.contrast is not None:
        rec["contrast"] = p.contrast
    if p.aliases:
        rec["aliases"] = list(p.aliases)
    if p.contrast_aliases:
        rec["contrast_aliases"] = list(p.contrast_aliases)
    return rec


# --------------------------------------------------------------------------- registry and loader


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    detect: Callable[[dict[str, Any]], bool]
    convert: Callable[[_Record], EditCase]


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "editkit",
            "editkit's own JSON lines: {request: {prompt, target_new, ...}, probes: [{prompt, expected, kind}]}",
            lambda rec: "request" in rec,
            _editkit,
        ),
        Format(
            "mquake",
            "MQuAKE-CF (requested_rewrite list, multi-hop questions, new_single_hops); one-rewrite records only",
            lambda rec: isinstance(rec.get("requested_rewrite"), list),
            _mquake,
        ),
        Format(
            "counterfact",
            "CounterFact, full ROME schema (requested_rewrite, paraphrase / neighborhood prompts)",
            lambda rec: "requested_rewrite" in rec,
            lambda r: counterfact_case(r.rec, r.path, r.index),
        ),
        Format(
            "counterfact-easyedit",
            "CounterFact, EasyEdit schema (prompt, target_new, ground_truth, rephrase_prompt, locality_prompt)",
            lambda rec: "locality_prompt" in rec,
            _easyedit_counterfact,
        ),
        Format(
            "zsre-mend",
            "zsRE, MEND schema (src, rephrase, alt, answers, loc, loc_ans, portability)",
            lambda rec: {"src", "alt"} <= set(rec),
            _zsre_mend,
        ),
        Format(
            "wikibio",
            "KnowEdit WikiBio (text, labels, concept, locality): passage -> new continuation",
            lambda rec: {"text", "labels", "concept"} <= set(rec),
            _wikibio,
        ),
        Format(
            "leapofthought",
            "LeapOfThought true/false taxonomic claims (phrase, answer, metadata) as fact-checking edits",
            lambda rec: {"phrase", "answer", "metadata"} <= set(rec),
            _leapofthought,
        ),
        Format(
            "convsent",
            "KnowEdit ConvSent (ent, pos, neg) as sentiment descriptor edits, alternating positive / negative",
            lambda rec: {"ent", "pos", "neg"} <= set(rec),
            _convsent,
        ),
        Format(
            "knowedit",
            "KnowEdit ZsRE / WikiData_counterfact (prompt, target_new, ground_truth, locality, portability)",
            lambda rec: {"prompt", "target_new"} <= set(rec),
            _knowedit,
        ),
    )
}


def detect_format(first: dict[str, Any], path: Path) -> str:
    for fmt in FORMATS.values():
        if fmt.detect(first):
            return fmt.name
    raise ValidationError(
        f"{path}: cannot tell the format from the first record's fields {sorted(first)[:8]}; "
        f"pass one of: {', '.join(FORMATS)}"
    )


def load_cases(
    path: str | Path, *, format: str | None = None, limit: int | None = None, skip_invalid: bool = False
) -> Dataset:
    """Read a benchmark file (a JSON list, or JSON lines) into edit cases.

    A malformed record raises :class:`ValidationError` naming the file, the record and the field; with
    ``skip_invalid`` it is left out instead and listed in :attr:`Dataset.skipped` (public files have a few,
    e.g. an empty ``alt`` in zsRE's training split).
    """
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"data file {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{path} is not UTF-8 text (byte {exc.start}): is it a data file?") from None
    try:
        records = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
    if not isinstance(records, list) or not records:
        raise ValidationError(f"{path} holds no records")
    first = records[0] if isinstance(records[0], dict) else {}
    if format is None:
        format = detect_format(first, path)
    elif format not in FORMATS:
        raise UnknownNameError("data format", format, FORMATS)
    elif not FORMATS[format].detect(first):
        raise ValidationError(
            f"{path} does not look like {format!r}: its first record has fields "
            f"{sorted(first)[:8]}; detected: {detect_format(first, path)!r}"
        )
    chosen = records[:limit] if limit is not None else records
    convert = FORMATS[format].convert
    cases: list[EditCase] = []
    skipped: list[tuple[int, str]] = []
    for i, rec in enumerate(chosen):
        try:
            cases.append(convert(_Record(path, i, rec, file=records)))
        except ValidationError as exc:
            named = exc if str(exc).startswith(str(path)) else ValidationError(f"{path}: record {i}: {exc}")
            if not skip_invalid:
                raise named from None
            skipped.append((i, str(named)))
    if not cases:
        raise ValidationError(f"{path}: no valid records ({len(skipped)} invalid)")
    return Dataset(cases, format, path, hashlib.sha256(raw).hexdigest(), len(records), skipped)
