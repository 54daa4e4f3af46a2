"""zsRE records -> EditCase.

``zsre-mend``: zsRE in the MEND schema (``src, rephrase, alt, answers, loc, loc_ans``, optional
``portability``). The question ``src`` is the edit prompt, ``alt`` its new answer and ``answers`` (its first) the
request's true target; the edit and ``rephrase`` probes are in scope, without contrast; ``loc`` / ``loc_ans`` is
out of scope, and a ``portability`` question hard in scope.

``zsre-tf`` (QA-hard in kind, SERAC §4: named, never detected): the same edit, with true / false questions as
its hard in-scope inputs in place of the portability question, since their labels differ from the edit's answer
and reading the edit is the only way to them. Each is the question completed with an answer and asked as
``"{question} {answer}. True or false?"`` (a choice probe of :mod:`editkit.data.formats.factcheck`): the question
and the rephrase with ``alt`` (True) and with the old answer (False: the edit contradicts it). Out of scope: the
unrelated ``loc`` question, and the true / false questions of a record half the file away (the first from there
with another subject; its old answer True, its ``alt`` False): the same form as the edit's own, about a fact no
nearby edit touches (zsRE's files list a subject's edits in a row, so a group of neighbouring cases edited together
must not hold it). zsRE has no near-subject or same-subject questions, so these are hard only in form.
"""

from __future__ import annotations

from editkit.data.formats.factcheck import claim_probe
from editkit.data.formats.record import Record, edit_and_rephrase, space
from editkit.edits import EditCase, Probe, ProbeKind
from editkit.errors import ValidationError

# How many records zsre-tf tries, from half the file away, for one about another subject.
OTHER_SUBJECT_WINDOW = 50


def mend_case(r: Record) -> EditCase:
    req, probes = edit_and_rephrase(
        r, prompt="src", subject="subject", new="alt", true="answers", rephrase="rephrase", contrast=False
    )
    if loc := r.text("loc", optional=True):
        probes.append(Probe(loc, space(r.text("loc_ans")), ProbeKind.OUT))
    port = r.rec.get("portability")
    if isinstance(port, dict) and port.get("New Question"):
        sub = Record(r.path, r.index, port)
        probes.append(Probe(sub.text("New Question"), space(sub.text("New Answer")), ProbeKind.HARD_IN))
    return EditCase(req, tuple(probes))


def tf_case(r: Record) -> EditCase:
    req, probes = edit_and_rephrase(
        r, prompt="src", subject="subject", new="alt", true="answers", rephrase="rephrase", contrast=False
    )
    questions = [p.prompt for p in probes]
    new = req.target_new.strip()
    probes += [claim_probe(q, new, True, ProbeKind.HARD_IN) for q in questions]
    if req.target_true:
        probes += [claim_probe(q, req.target_true.strip(), False, ProbeKind.HARD_IN) for q in questions]
    if loc := r.text("loc", optional=True):
        probes.append(Probe(loc, space(r.text("loc_ans")), ProbeKind.OUT))
    if other := _other_subject(r):
        question, old = other.text("src"), other.answers("answers")[0].strip()
        probes.append(claim_probe(question, old, True, ProbeKind.OUT))
        if (alt := other.text("alt").strip()) != old:
            probes.append(claim_probe(question, alt, False, ProbeKind.OUT))
    first: dict[str, Probe] = {}
    for p in probes:  # a question that two roles make (rare) keeps its first, in-scope before out-of-scope
        first.setdefault(p.prompt, p)
    return EditCase(req, tuple(first.values()))


def _other_subject(r: Record) -> Record | None:
    """The first of :data:`OTHER_SUBJECT_WINDOW` records from half the file away (wrapping round) with another
    subject and the fields zsre-tf reads; None if there is none."""
    n, subject = len(r.file), str(r.rec.get("subject", "")).strip().lower()
    for step in range(min(OTHER_SUBJECT_WINDOW, n - 1)):
        j = (r.index + n // 2 + step) % n
        rec = r.file[j]
        if j == r.index or not isinstance(rec, dict) or str(rec.get("subject", "")).strip().lower() == subject:
            continue
        other = Record(r.path, j, rec, file=r.file)
        try:
            if other.text("src").strip() and other.text("alt").strip() and other.answers("answers"):
                return other
        except ValidationError:
            continue
    return None
