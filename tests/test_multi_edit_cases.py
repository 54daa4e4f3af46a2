"""Cases that hold several edits (MQuAKE's several rewrites): the batch protocol applies all of a case's requests
(one call for an editor that batches, one per request otherwise) and rolls them all back; the sequential protocol
refuses them in one line; the editkit format carries them; a run can draw a seeded sample of the cases."""

from __future__ import annotations

import json

import pytest
import torch

from editkit.data import editkit_record, load_cases
from editkit.editors import create_editor
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import ValidationError
from editkit.evaluation.batch import batch_edits
from editkit.evaluation.runner import RunConfig, run
from editkit.evaluation.sequential import sequential_edits
from editkit.models.tiny import tiny_model

TOWER = EditRequest(prompt="The Eiffel Tower is in", subject="The Eiffel Tower", target_new=" Rome", case_id="c")
JORDAN = EditRequest(prompt="Michael Jordan plays", subject="Michael Jordan", target_new=" tennis", case_id="c/1")
SETTINGS = {"rome": {"v_steps": 2, "n_context": 0}, "ft": {"steps": 2}, "lu": {}}
CASE = EditCase(
    TOWER,
    (Probe(TOWER.prompt, TOWER.target_new, ProbeKind.EDIT), Probe(JORDAN.prompt, JORDAN.target_new, ProbeKind.EDIT)),
    also=(JORDAN,),
)


@pytest.mark.parametrize(
    ("method", "calls"), [("rome", [[TOWER], [JORDAN]]), ("ft", [[TOWER, JORDAN]]), ("lu", [[TOWER, JORDAN]])]
)
def test_batch_applies_every_request_of_a_case_and_rolls_all_back(method, calls):
    lm = tiny_model("llama")
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    editor = create_editor(method, SETTINGS[method])
    seen = []
    real_apply = editor.apply

    def apply(model, requests):
        seen.append(list(requests))
        return real_apply(model, requests)

    editor.apply = apply  # type: ignore[method-assign]
    results = batch_edits(lm, editor, [CASE], progress=False)
    assert seen == calls
    assert len(results["records"]) == 1 and results["records"][0]["case_id"] == "c"
    for n, p in lm.model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_sequential_refuses_a_case_of_several_edits():
    with pytest.raises(ValidationError, match=r"cases hold several edits .*--protocol batch"):
        sequential_edits(tiny_model("llama"), create_editor("ft"), [CASE], progress=False)


def test_the_editkit_format_carries_the_other_edits(tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps(editkit_record(CASE)) + "\n")
    (read,) = load_cases(path).cases
    assert read == CASE


def test_a_run_draws_a_seeded_sample_in_file_order(tmp_path, monkeypatch):
    from editkit.models import zoo

    records = [
        {"request": {"prompt": f"Fact {i} is", "target_new": " x", "case_id": str(i)}, "probes": []} for i in range(10)
    ]
    records = [{**r, "probes": [{"prompt": r["request"]["prompt"], "expected": " x", "kind": "edit"}]} for r in records]
    data = tmp_path / "cases.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records))
    monkeypatch.setattr(zoo, "load", lambda *a, **k: tiny_model("llama"))
    ids = []
    for seed in (0, 0, 1):
        config = RunConfig.build(
            None, model="tiny-llama", method="lu", data=str(data), sample=4, seed=seed, out=str(tmp_path / "r.json")
        )
        ids.append(run(config, progress=False)["case_ids"])
    assert ids[0] == ids[1] != ids[2] and len(ids[0]) == 4
    assert ids[0] == sorted(ids[0], key=int)
