"""MQuAKE records -> EditCase.

``mquake``: MQuAKE-CF (``requested_rewrite`` list, multi-hop ``questions``, ``new_answer(_alias)``,
``answer(_alias)``, ``new_single_hops``). A case holds one edit, and a record's multi-hop answer depends on all its
rewrites, so only records with exactly one rewrite convert; the others raise :class:`ValidationError`
(``skip_invalid`` leaves them out and lists them in :attr:`~editkit.data.formats.Dataset.skipped`). The rewrite is
the request. Probes: the edit prompt (contrast: the true target); the edited hop's question (rephrase, with that
hop's answer aliases); the multi-hop questions (hard in-scope: ``new_answer`` and its aliases, contrast ``answer``
and its aliases); the other hops' cloze prompts with their answers (neighborhood: facts about other entities that
the edit must not change, e.g. who heads the new country).
"""

from __future__ import annotations

from editkit.data.formats.record import Record, case_id, request, space
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import ValidationError


def _answers(r: Record, name: str, aliases: str) -> tuple[str, ...]:
    """An answer and its aliases, spaced and without repeats, the answer first."""
    return tuple(dict.fromkeys(space(a) for a in (r.text(name, strict=True), *r.strings(aliases, optional=True))))


def mquake_case(r: Record) -> EditCase:
    rewrites = r.objects("requested_rewrite")
    if len(rewrites) != 1:
        raise ValidationError(
            f"{r.where('requested_rewrite')}: MQuAKE record has {len(rewrites)} rewrites; editkit cases hold one "
            "edit, and the multi-hop answers need all of them (skip_invalid leaves such records out)"
        )
    rw = rewrites[0]
    new, true = rw.field("target_new").text("str"), rw.field("target_true").text("str")
    req = request(r, rw.text("prompt"), rw.text("subject"), new, true, case_id(r))
    probes = [Probe(req.text, req.target_new, ProbeKind.EDIT, contrast=req.target_true), *_mquake_hops(r, req)]
    after, before = _answers(r, "new_answer", "new_answer_alias"), _answers(r, "answer", "answer_alias")
    probes += [
        Probe(q, after[0], ProbeKind.HARD_IN, contrast=before[0], aliases=after[1:], contrast_aliases=before[1:])
        for q in r.strings("questions")
    ]
    return EditCase(req, tuple(probes))


def _mquake_hops(r: Record, req: EditRequest) -> list[Probe]:
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
