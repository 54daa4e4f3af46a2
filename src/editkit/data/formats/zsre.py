"""zsRE records -> EditCase.

``zsre-mend``: zsRE in the MEND schema (``src, rephrase, alt, answers, loc, loc_ans``, optional
``portability``). The question ``src`` is the edit prompt, ``alt`` its new answer and ``answers`` (its first) the
request's true target; the edit and ``rephrase`` probes are in scope, without contrast; ``loc`` / ``loc_ans`` is
out of scope, and a ``portability`` question hard in scope."""

from __future__ import annotations

from editkit.data.formats.record import Record, edit_and_rephrase, space
from editkit.edits import EditCase, Probe, ProbeKind


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
