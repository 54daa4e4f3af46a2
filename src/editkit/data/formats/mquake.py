"""MQuAKE records -> EditCase.

``mquake``: MQuAKE-CF (``requested_rewrite`` list, multi-hop ``questions``, ``new_answer(_alias)``,
``answer(_alias)``, ``new_single_hops``). MQuAKE's protocol applies all of a case's rewrites, then asks the
multi-hop questions: the first rewrite is the case's request, the others its ``also`` (applied with it). Probes:
each rewrite's prompt (edit, contrast: its true target); the question of each edited hop (rephrase, with that
hop's answer aliases); the multi-hop questions (hard in-scope: ``new_answer`` and its aliases, contrast ``answer``
and its aliases); the other hops' cloze prompts with their answers (neighborhood: facts about other entities that
the edits must not change, e.g. who heads the new country). The number of hops is ``len(new_single_hops)``.
"""

from __future__ import annotations

from editkit.data.formats.record import Record, case_id, request, space
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import ValidationError


def _answers(r: Record, name: str, aliases: str) -> tuple[str, ...]:
    """An answer and its aliases, spaced and without repeats, the answer first."""
    return tuple(dict.fromkeys(space(a) for a in (r.text(name, strict=True), *r.strings(aliases, optional=True))))


def mquake_case(r: Record) -> EditCase:
    requests = []
    for j, rw in enumerate(r.objects("requested_rewrite")):
        new, true = rw.field("target_new").text("str"), rw.field("target_true").text("str")
        name = case_id(r) + (f"/{j}" if j else "")  # the first rewrite's id is the case's
        requests.append(request(r, rw.text("prompt"), rw.text("subject"), new, true, name))
    probes = [Probe(q.text, q.target_new, ProbeKind.EDIT, contrast=q.target_true) for q in requests]
    probes += _mquake_hops(r, requests)
    after, before = _answers(r, "new_answer", "new_answer_alias"), _answers(r, "answer", "answer_alias")
    probes += [
        Probe(q, after[0], ProbeKind.HARD_IN, contrast=before[0], aliases=after[1:], contrast_aliases=before[1:])
        for q in r.strings("questions")
    ]
    return EditCase(requests[0], tuple(probes), also=tuple(requests[1:]))


def _mquake_hops(r: Record, requests: list[EditRequest]) -> list[Probe]:
    """Each edited hop's question rephrases its edit; the other hops are facts the edits must not change."""
    hops = r.objects("new_single_hops")
    edited: dict[int, EditRequest] = {}
    for req in requests:
        matches = [j for j, hop in enumerate(hops) if hop.text("cloze") == req.text]
        if len(matches) != 1:
            raise ValidationError(
                f"{r.where('new_single_hops')}: expected one hop whose cloze is the edit prompt {req.text!r}, "
                f"found {len(matches)}"
            )
        edited[matches[0]] = req
    probes = []
    for j, hop in enumerate(hops):
        answers = _answers(hop, "answer", "answer_alias")
        if j in edited:
            req = edited[j]
            aliases = tuple(a for a in answers if a != req.target_new)
            probes.append(
                Probe(hop.text("question"), req.target_new, ProbeKind.REPHRASE, req.target_true, aliases=aliases)
            )
        else:
            probes.append(Probe(hop.text("cloze"), answers[0], ProbeKind.NEIGHBORHOOD, aliases=answers[1:]))
    return probes
