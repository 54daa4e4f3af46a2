"""CounterFact records -> fact-checking cases (SERAC's FC task in kind: evidence statements as edits, claims
labelled true or false under them).

The shared data has no VitaminC split, so the cases are made from CounterFact in EasyEdit's schema (``prompt,
subject, target_new, ground_truth, rephrase_prompt, locality_prompt, locality_ground_truth``). A claim is a
prompt completed into a sentence, ``"{prompt} {object}."``, asked as ``"{claim} True or false?"`` and answered
``" True"`` or ``" False"``: every probe is a choice probe (:attr:`~editkit.edits.Probe.choice`), the model's
label the likelier of the two continuations. Per record:

* the evidence is the rewrite as a sentence, ``"{prompt} {target_new}."`` ("BBC One, by Sega.");
* in scope: the evidence's own claim (``edit``, True), the rephrase completed with the new object
  (``rephrase``, True), and the prompt and the rephrase completed with the old object ``ground_truth``
  (``hard_in``, False: the evidence contradicts them);
* out of scope, the same relation about another subject: the locality prompt completed with its true object
  (``neighborhood``, True) and, when that differs from the new object, with the new object (``neighborhood``,
  False: the claim that a reader who confuses the subjects would accept);
* out of scope, another record's fact: the next record's prompt (the last record's is the first's) completed
  with its old object (``out``, True) and its new one (``out``, False), left out when the next record is
  malformed or about the same subject.

Two formats, never detected (a CounterFact file is read as ``counterfact-easyedit`` unless one is named with
``--format``), differ only in the request, so that every method is scored on the same claims:
``counterfact-fc`` edits with the evidence as a statement (``EditRequest.statement``; the memory editors, SERAC
and RP, read it), ``counterfact-fc-rewrite`` with the same fact as CounterFact's prompt / target edit (subject,
``target_new``, ``target_true``: how weight editors such as FT and ROME take part).
"""

from __future__ import annotations

from editkit.data.formats.record import Record, case_id
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import ValidationError

QUESTION = " True or false?"
TRUE, FALSE = " True", " False"


def claim(prompt: str, obj: str) -> str:
    """The sentence a prompt and an object make: ``"BBC One, by" + "Sega" -> "BBC One, by Sega."``."""
    sentence = f"{prompt.strip()} {obj.strip()}"
    return sentence if sentence.endswith((".", "!", "?")) else sentence + "."


def claim_probe(prompt: str, obj: str, true: bool, kind: ProbeKind) -> Probe:
    return Probe(
        claim(prompt, obj) + QUESTION, TRUE if true else FALSE, kind, contrast=FALSE if true else TRUE, choice=True
    )


class _Fact:
    """One record's fields, checked: the objects must differ (else there is no fact to check)."""

    def __init__(self, r: Record) -> None:
        self.prompt, self.subject = r.text("prompt", strict=True), r.text("subject", strict=True)
        self.new, self.old = r.text("target_new").strip(), r.text("ground_truth").strip()
        if self.new == self.old:
            raise ValidationError(f"{r.where('target_new')} equals ground_truth ({self.new!r}): nothing to check")


def _probes(r: Record, fact: _Fact) -> list[Probe]:
    probes = [claim_probe(fact.prompt, fact.new, True, ProbeKind.EDIT)]
    rephrase = r.text("rephrase_prompt", optional=True, strict=True)
    if rephrase:
        probes.append(claim_probe(rephrase, fact.new, True, ProbeKind.REPHRASE))
    probes += [claim_probe(p, fact.old, False, ProbeKind.HARD_IN) for p in (fact.prompt, rephrase) if p]
    if local := r.text("locality_prompt", optional=True, strict=True):
        truth = r.text("locality_ground_truth").strip()
        probes.append(claim_probe(local, truth, True, ProbeKind.NEIGHBORHOOD))
        if truth != fact.new:
            probes.append(claim_probe(local, fact.new, False, ProbeKind.NEIGHBORHOOD))
    nxt = r.neighbour()
    try:
        other = _Fact(nxt) if nxt else None
    except ValidationError:
        other = None  # the next record's own error says why
    if other and other.subject != fact.subject:
        probes += [
            claim_probe(other.prompt, other.old, True, ProbeKind.OUT),
            claim_probe(other.prompt, other.new, False, ProbeKind.OUT),
        ]
    first: dict[str, Probe] = {}
    for p in probes:  # a claim that two roles make (rare) keeps its first, in-scope before out-of-scope
        first.setdefault(p.prompt, p)
    return list(first.values())


def evidence_case(r: Record) -> EditCase:
    """``counterfact-fc``: the evidence sentence as a statement edit."""
    fact = _Fact(r)
    request = EditRequest.statement(claim(fact.prompt, fact.new), case_id=case_id(r))
    return EditCase(request, tuple(_probes(r, fact)))


def rewrite_case(r: Record) -> EditCase:
    """``counterfact-fc-rewrite``: the same fact as a prompt / target edit."""
    fact = _Fact(r)
    try:
        request = EditRequest(
            prompt=fact.prompt,
            subject=fact.subject if fact.subject in fact.prompt else None,
            target_new=" " + fact.new,
            target_true=" " + fact.old,
            case_id=case_id(r),
        )
    except ValidationError as exc:
        raise ValidationError(f"{r.where()}: {exc}") from None
    return EditCase(request, tuple(_probes(r, fact)))
