"""LeapOfThought records -> EditCase.

``leapofthought``: LeapOfThought taxonomic claims (``phrase, answer, metadata``) as fact-checking edits. The
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
"""

from __future__ import annotations

from typing import NamedTuple

from editkit.data.formats.record import Record, case_id, request
from editkit.edits import EditCase, Probe, ProbeKind
from editkit.errors import ValidationError

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
    def of(cls, t: Record) -> _Claim:
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


def _lot_claims(meta: Record) -> dict[str, list[_Claim]]:
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


def leapofthought_case(r: Record) -> EditCase:
    answer = r.rec.get("answer")
    if answer not in (0, 1):
        raise ValidationError(f"{r.where('answer')} must be 1 (true) or 0 (false), got {answer!r}")
    meta = r.field("metadata")
    edit = _Claim.of(meta.field("statement"))._replace(true=bool(answer))
    prompt = r.text("phrase") + _TRUE_OR_FALSE
    req = request(r, prompt, None, _label(edit.true), None, case_id(r, "id"))
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
