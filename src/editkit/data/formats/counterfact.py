"""CounterFact (Meng et al., 2022) records -> EditCase, in two schemas.

``counterfact``, the full ROME schema: a record holds ``requested_rewrite`` (``prompt`` with ``{}`` for the
subject, ``subject``, ``target_new.str``, ``target_true.str``), ``paraphrase_prompts`` and
``neighborhood_prompts``; the portability subsets add a ``portability`` question that follows from the new fact
(``New Question`` / ``New Answer``), a hard in-scope probe. The edit prompt and the paraphrases expect the new
target against the true one; the neighborhood prompts expect the true target against the new one.

``counterfact-easyedit``: CounterFact in EasyEdit's reduced schema (``prompt, subject, target_new,
ground_truth, rephrase_prompt, locality_prompt, locality_ground_truth``). The edit prompt and the
rephrase are in scope (contrast: the ground truth), the locality prompt is a neighborhood probe.
"""

from __future__ import annotations

from typing import Any

from editkit.data.formats.record import Record, edit_and_rephrase, space
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import ValidationError


def _field(r: Record, *keys: str) -> Any:
    cur: Any = r.rec
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            raise ValidationError(f"{r.path}: record {r.index} has no field {'.'.join(keys)!r}")
        cur = cur[k]
    return cur


def rome_case(r: Record) -> EditCase:
    rec = r.rec
    new = space(str(_field(r, "requested_rewrite", "target_new", "str")))
    true = space(str(_field(r, "requested_rewrite", "target_true", "str")))
    try:
        request = EditRequest(
            prompt=str(_field(r, "requested_rewrite", "prompt")),
            subject=str(_field(r, "requested_rewrite", "subject")),
            target_new=new,
            target_true=true,
            case_id=str(rec.get("case_id", r.index)),
        )
        probes = [Probe(request.text, new, ProbeKind.EDIT, contrast=true)]
        probes += [Probe(p, new, ProbeKind.REPHRASE, contrast=true) for p in rec.get("paraphrase_prompts", [])]
        probes += [Probe(p, true, ProbeKind.NEIGHBORHOOD, contrast=new) for p in rec.get("neighborhood_prompts", [])]
        port = rec.get("portability")
        if isinstance(port, dict) and port.get("New Question") and port.get("New Answer"):
            probes.append(Probe(str(port["New Question"]), space(str(port["New Answer"])), ProbeKind.HARD_IN))
    except ValidationError as exc:
        raise ValidationError(f"{r.path}: record {r.index} (case_id {rec.get('case_id')}): {exc}") from None
    return EditCase(request, tuple(probes))


def easyedit_case(r: Record) -> EditCase:
    req, probes = edit_and_rephrase(
        r,
        prompt="prompt",
        subject="subject",
        new="target_new",
        true="ground_truth",
        rephrase="rephrase_prompt",
        required=("subject", "ground_truth"),
    )
    if loc := r.text("locality_prompt", optional=True):
        truth = space(r.text("locality_ground_truth"))
        probes.append(Probe(loc, truth, ProbeKind.NEIGHBORHOOD, contrast=req.target_new))
    return EditCase(req, tuple(probes))
