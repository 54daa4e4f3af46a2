"""CounterFact (Meng et al., 2022) in the full ROME schema: one record -> EditCase (files: ``load_cases``).

A record holds ``requested_rewrite`` (``prompt`` with ``{}`` for the subject, ``subject``, ``target_new.str``,
``target_true.str``), ``paraphrase_prompts`` and ``neighborhood_prompts``; the portability subsets add a
``portability`` question that follows from the new fact (``New Question`` / ``New Answer``), a hard in-scope
probe. Targets are scored as continuations, so they get the leading space a tokenizer expects after a prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import ValidationError


def _space(s: str) -> str:
    return s if s.startswith(" ") else " " + s


def _field(path: Path, i: int, rec: dict[str, Any], *keys: str) -> Any:
    cur: Any = rec
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            raise ValidationError(f"{path}: record {i} has no field {'.'.join(keys)!r}")
        cur = cur[k]
    return cur


def counterfact_case(rec: dict[str, Any], path: Path = Path("<memory>"), i: int = 0) -> EditCase:
    new = _space(str(_field(path, i, rec, "requested_rewrite", "target_new", "str")))
    true = _space(str(_field(path, i, rec, "requested_rewrite", "target_true", "str")))
    try:
        request = EditRequest(
            prompt=str(_field(path, i, rec, "requested_rewrite", "prompt")),
            subject=str(_field(path, i, rec, "requested_rewrite", "subject")),
            target_new=new,
            target_true=true,
            case_id=str(rec.get("case_id", i)),
        )
        probes = [Probe(request.text, new, ProbeKind.EDIT, contrast=true)]
        probes += [Probe(p, new, ProbeKind.REPHRASE, contrast=true) for p in rec.get("paraphrase_prompts", [])]
        probes += [Probe(p, true, ProbeKind.NEIGHBORHOOD, contrast=new) for p in rec.get("neighborhood_prompts", [])]
        port = rec.get("portability")
        if isinstance(port, dict) and port.get("New Question") and port.get("New Answer"):
            probes.append(Probe(str(port["New Question"]), _space(str(port["New Answer"])), ProbeKind.HARD_IN))
    except ValidationError as exc:
        raise ValidationError(f"{path}: record {i} (case_id {rec.get('case_id')}): {exc}") from None
    return EditCase(request, tuple(probes))
