"""A small demo set of edits, written for editkit (not taken from any benchmark)."""

from __future__ import annotations

import json
from importlib import resources

from editkit.edits import EditCase, EditRequest, Probe, ProbeKind


def demo_cases() -> list[EditCase]:
    """Counterfactual edits with a paraphrase and an unrelated prompt each, for the quickstart and examples."""
    text = resources.files("editkit.data").joinpath("demo_edits.jsonl").read_text(encoding="utf-8")
    cases = []
    for line in text.splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        req = EditRequest.from_dict(rec["request"])
        probes = [Probe(req.text, req.target_new, ProbeKind.EDIT, contrast=req.target_true)]
        probes += [Probe(p, req.target_new, ProbeKind.REPHRASE, contrast=req.target_true) for p in rec["paraphrases"]]
        probes += [Probe(p, a, ProbeKind.OUT) for p, a in rec["unrelated"]]
        cases.append(EditCase(req, tuple(probes)))
    return cases
