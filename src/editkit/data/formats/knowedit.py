"""KnowEdit records -> EditCase: its ZsRE, WikiData_counterfact and WikiBio files (ConvSent:
:mod:`editkit.data.formats.convsent`).

``knowedit``: KnowEdit's ZsRE and WikiData_counterfact files (``prompt, subject, target_new,
ground_truth``, optional ``rephrase_prompt``, ``locality`` and ``portability`` probe groups).
The edit prompt and the rephrase are in scope, each ``locality`` probe group's prompts are neighborhood probes
and each ``portability`` group's are hard in-scope probes. A probe's ground truth may be one answer, a list of
answers or a list of alias lists (WikiData_recent); every alias counts as correct.

``wikibio``: KnowEdit WikiBio (``text, labels, concept, locality``): the passage is the prompt and ``labels``
its new continuation (edit probe, no contrast); ``concept`` is the subject when it occurs verbatim in the
passage; ``locality`` probe groups are neighborhood probes.
"""

from __future__ import annotations

from editkit.data.formats.record import Record, case_id, edit_and_rephrase, request, space
from editkit.edits import EditCase, Probe, ProbeKind


def knowedit_case(r: Record) -> EditCase:
    req, probes = edit_and_rephrase(
        r, prompt="prompt", subject="subject", new="target_new", true="ground_truth", rephrase="rephrase_prompt"
    )
    probes += _probes(r, "locality", ProbeKind.NEIGHBORHOOD) + _probes(r, "portability", ProbeKind.HARD_IN)
    return EditCase(req, tuple(probes))


def _probes(r: Record, group: str, kind: ProbeKind) -> list[Probe]:
    """A probe per prompt of the record's probe groups ``group``: the first answer expected, the others aliases."""
    probes = []
    for prompt, answers in r.groups(group):
        spaced = tuple(dict.fromkeys(space(a) for a in answers))
        probes.append(Probe(prompt, spaced[0], kind, aliases=spaced[1:]))
    return probes


def wikibio_case(r: Record) -> EditCase:
    req = request(r, r.text("text"), r.text("concept", optional=True), r.text("labels"), None, case_id(r))
    probes = [Probe(req.text, req.target_new, ProbeKind.EDIT)]
    probes += _probes(r, "locality", ProbeKind.NEIGHBORHOOD)
    return EditCase(req, tuple(probes))
