"""Evaluating with a prefilled memory (``editkit eval --prefill``) and drawdown split by cause."""

from __future__ import annotations

import json

import pytest

from editkit.editors import create_editor
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import ConfigError, ValidationError
from editkit.evaluation.batch import batch_edits
from editkit.evaluation.metrics import Reference, score_cases
from editkit.evaluation.prefill import (
    EDITED_SUBJECT,
    OWN_SUBJECT,
    UNEDITED_SUBJECT,
    SubjectIndex,
    asks_edited_fact,
    load_prefill,
    subject_cause,
)
from editkit.evaluation.runner import RunConfig
from editkit.models.tiny import tiny_model


def _request(subject: str, relation: str, new: str, case_id: str) -> EditRequest:
    return EditRequest(prompt=f"{{}} {relation}", subject=subject, target_new=new, case_id=case_id)


def _case(subject: str, relation: str, new: str, case_id: str, outs: list[str]) -> EditCase:
    r = _request(subject, relation, new, case_id)
    outside = [Probe(o, " Paris", ProbeKind.NEIGHBORHOOD) for o in outs]
    return EditCase(r, [Probe(r.text, new, ProbeKind.EDIT), *outside])


def _write(path, rows):
    path.write_text("\n".join(json.dumps({"request": r}) for r in rows))
    return str(path)


def test_subject_index_finds_whole_word_subjects_case_insensitively():
    index = SubjectIndex.of(
        [_request("Paris", "is in", " France", "a"), _request("New York City", "is in", " Ohio", "b")]
    )
    assert [r.subject for r in index.named("What river flows through new york city's centre?")] == ["New York City"]
    assert index.named("Parisian food is") == []  # not a whole word
    assert [r.subject for r in index.named("In PARIS, they speak")] == ["Paris"]
    assert SubjectIndex.of([_request("Li", "is", " x", "c")]).named("Li is") == []  # too short to index
    wider = index.extended([_request("paris", "was founded by", " Clovis", "d")])
    assert len(wider.named("Paris is")) == 2 and len(index.named("Paris is")) == 1  # the original is unchanged


def test_subject_cause_tells_own_other_and_unedited_subjects_apart():
    case = _case("The Eiffel Tower", "is in", " Rome", "1", [])
    other = _request("The Louvre", "is in", " Berlin", "2")
    index = SubjectIndex.of([case.request, other])
    assert subject_cause(case, "The founder of the Eiffel Tower was", index) == (OWN_SUBJECT, None)
    assert subject_cause(case, "The Louvre is located in", index) == (EDITED_SUBJECT, other)
    assert subject_cause(case, "Notre-Dame is located in", index) == (UNEDITED_SUBJECT, None)


def test_a_probe_expecting_the_replaced_answer_asks_the_edited_fact_unless_it_names_the_new_one():
    edit = EditRequest(
        prompt="What business published {}?",
        subject="Bioscience Horizons",
        target_new=" Wiley",
        target_true=" Oxford University Press",
    )
    reworded = Probe("The publisher of Bioscience Horizons is", " oxford university press", ProbeKind.NEIGHBORHOOD)
    other_fact = Probe("The founder of Bioscience Horizons is", " John Smith", ProbeKind.NEIGHBORHOOD)
    excluded = Probe(
        "The publisher of Bioscience Horizons, which is not Wiley, is",
        " Oxford University Press",
        ProbeKind.NEIGHBORHOOD,
    )
    by_alias = Probe(
        "Bioscience Horizons publisher", " OUP", ProbeKind.NEIGHBORHOOD, aliases=(" Oxford University Press",)
    )
    elsewhere = Probe("The publisher of Nature is", " Oxford University Press", ProbeKind.NEIGHBORHOOD)
    assert asks_edited_fact(edit, reworded) and asks_edited_fact(edit, by_alias)
    assert not any(asks_edited_fact(edit, p) for p in (other_fact, excluded, elsewhere))
    assert not asks_edited_fact(EditRequest(prompt="{} is", subject="X", target_new=" y"), reworded)  # no old answer


def test_dd_split_by_cause_and_the_other_edits_answer():
    lm = tiny_model("llama")
    outs = ["The Eiffel Tower was built by", "The Louvre is in", "Notre-Dame is"]
    case = _case("The Eiffel Tower", "is in", " Rome", "1", outs)
    other = _request("The Louvre", "is in", " Berlin", "2")
    editor = create_editor("lu", {"delta": 1e-3})
    reference = Reference.build(lm, [case])
    handle = editor.apply(lm, [case.request, other])
    [scores] = score_cases(handle.model, [case], reference, subjects=SubjectIndex.of([case.request, other]))
    # LU answers only (near-)identical inputs: "The Louvre is in" is the other edit's own prompt.
    assert scores["dd_own_subject"] == 0.0 and scores["dd_unedited_subject"] == 0.0
    assert scores["dd_own_other_fact"] == 0.0 and "dd_own_edited_fact" not in scores
    assert scores["dd_edited_subject"] == 1.0 and scores["other_edit_answered"] == 1.0
    assert scores["dd"] == pytest.approx(1 / 3)
    [plain] = score_cases(handle.model, [case], reference)
    assert not any(k.endswith("_subject") for k in plain)


def test_own_subject_drawdown_is_split_into_the_edited_fact_and_the_others():
    """The edit's own prompt, listed as out of scope with the replaced answer (KnowEdit ZsRE has such probes),
    changes when the edit takes: that change is counted as ``dd_own_edited_fact``, not as another fact's."""
    lm = tiny_model("llama")
    edit = EditRequest(prompt="{} is in", subject="The Eiffel Tower", target_new=" Rome", target_true=" Paris")
    outs = [
        Probe(edit.text, " Paris", ProbeKind.NEIGHBORHOOD),
        Probe("The Eiffel Tower was built by", " Gustave Eiffel", ProbeKind.NEIGHBORHOOD),
    ]
    case = EditCase(edit, [Probe(edit.text, " Rome", ProbeKind.EDIT), *outs])
    reference = Reference.build(lm, [case])
    handle = create_editor("lu", {"delta": 1e-3}).apply(lm, [edit])
    [scores] = score_cases(handle.model, [case], reference, subjects=SubjectIndex.of([edit]))
    assert scores["dd_own_edited_fact"] == 1.0 and scores["dd_own_other_fact"] == 0.0
    assert scores["dd_own_subject"] == pytest.approx(0.5)


def test_load_prefill_leaves_out_what_overlaps_the_run(tmp_path):
    run = [_case("Paris", "is in", " Spain", "7", [])]
    rows = [
        {"prompt": "{} lies in", "subject": "Rome", "target_new": " x", "case_id": "7"},  # case id (same file only)
        {"prompt": "{} is in", "subject": "Paris", "target_new": " y", "case_id": "8"},  # prompt
        {"prompt": "{} was founded by", "subject": "paris", "target_new": " z", "case_id": "9"},  # subject
        {"prompt": "{} lies in", "subject": "Oslo", "target_new": " w", "case_id": "10"},
        {"prompt": "{} lies in", "subject": "Bonn", "target_new": " v", "case_id": "11"},
    ]
    path = _write(tmp_path / "prefill.jsonl", rows)
    same = load_prefill(path, 2, run, path)
    assert [r.subject for r in same.requests] == ["Oslo", "Bonn"]
    assert same.summary["left_out_overlapping"] == {"case_id": 1, "prompt": 1, "subject": 1}
    assert same.summary["added"] == 2 and len(same.summary["sha256"]) == 64
    other_file = load_prefill(path, None, run, tmp_path / "run.jsonl")
    assert [r.subject for r in other_file.requests] == ["Rome", "Oslo", "Bonn"]
    with pytest.raises(ValidationError, match="only 2 of its 5"):
        load_prefill(path, 3, run, path)


def test_batch_run_with_a_prefilled_memory_rolls_the_distractors_back(tmp_path):
    lm = tiny_model("llama")
    cases = [_case("Paris", "is in", " Spain", "1", ["Oslo lies in"]), _case("Rome", "is in", " Peru", "2", [])]
    distractors = [_request("Oslo", "lies in", " Chile", "d1"), _request("Bonn", "lies in", " Mali", "d2")]
    editor = create_editor("lu", {"delta": 1e-3, "memory": str(tmp_path / "memory.sqlite")})
    results = batch_edits(lm, editor, cases, ks=[1], progress=False, prefill=distractors)
    assert results["prefill"] == {"added": 2}
    first = results["records"][0]["post"]
    assert first["dd_edited_subject"] == 1.0 and first["other_edit_answered"] == 1.0  # LU answers Oslo's edit
    assert len(editor.routed(lm).memory) == 0
    with pytest.raises(ValidationError, match="edits weights"):
        batch_edits(lm, create_editor("ft"), cases, progress=False, prefill=distractors)


def test_prefill_settings_are_checked():
    with pytest.raises(ConfigError, match="needs --prefill"):
        RunConfig.build(None, data="d.json", out="o.json", prefill_limit=5)
    with pytest.raises(ConfigError, match="batch protocol"):
        RunConfig.build(None, data="d.json", out="o.json", prefill="p.json", protocol="sequential")
