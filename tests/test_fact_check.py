"""Fact checking in kind: CounterFact records as evidence statements (or rewrites) with true / false claims, and
choice probes scored as a binary classifier's labels (ES on in-scope claims, DD as a changed label)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editkit.data import load_cases
from editkit.data.formats import editkit_record
from editkit.data.formats.factcheck import claim
from editkit.editors import create_editor
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import ValidationError
from editkit.evaluation.metrics import Reference, score_cases

Q = " True or false?"


def _rec(i: int, subject: str, new: str, old: str, **extra: str) -> dict[str, object]:
    return {
        "case_id": i,
        "prompt": f"{subject}, by",
        "subject": subject,
        "target_new": new,
        "ground_truth": old,
        "rephrase_prompt": f"{subject} is owned by",
        "locality_prompt": f"Radio {i}, by",
        "locality_ground_truth": old,
        **extra,
    }


RECORDS = [
    _rec(10, "BBC One", "Sega", "BBC"),
    _rec(11, "Kuala Langat", "India", "Malaysia", locality_ground_truth="India"),  # the neighbour's truth is new
    _rec(12, "Kuala Langat", "Spain", "Malaysia"),  # its next record is about the same subject
]


def _write(tmp_path: Path, records: list[dict[str, object]]) -> Path:
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(records))
    return path


def _labels(case: EditCase) -> list[tuple[str, str, str]]:
    return [(p.kind.value, p.prompt, p.expected) for p in case.probes]


def test_claims_are_labelled_by_the_evidence_in_and_out_of_scope(tmp_path):
    cases = load_cases(_write(tmp_path, RECORDS), format="counterfact-fc").cases
    first = cases[0]
    assert first.request.is_statement and first.request.descriptor == "BBC One, by Sega."
    assert first.request.case_id == "10"
    assert _labels(first) == [
        ("edit", "BBC One, by Sega." + Q, " True"),
        ("rephrase", "BBC One is owned by Sega." + Q, " True"),
        ("hard_in", "BBC One, by BBC." + Q, " False"),
        ("hard_in", "BBC One is owned by BBC." + Q, " False"),
        ("neighborhood", "Radio 10, by BBC." + Q, " True"),
        ("neighborhood", "Radio 10, by Sega." + Q, " False"),
        ("out", "Kuala Langat, by Malaysia." + Q, " True"),  # the next record's fact, old and new
        ("out", "Kuala Langat, by India." + Q, " False"),
    ]
    assert all(p.choice and {p.expected, p.contrast} == {" True", " False"} for p in first.probes)
    # the neighbour's true object is the new one: no false neighbourhood claim; the next record's subject is the
    # same: no out-of-scope claims from it
    assert [k for k, _, _ in _labels(cases[1])] == ["edit", "rephrase", "hard_in", "hard_in", "neighborhood"]
    assert _labels(cases[1])[-1] == ("neighborhood", "Radio 11, by India." + Q, " True")
    assert [k for k, _, e in _labels(cases[2])][-2:] == ["out", "out"]  # the last record's next is the first


def test_the_rewrite_format_edits_the_same_fact_as_a_prompt_and_target_on_the_same_claims(tmp_path):
    path = _write(tmp_path, RECORDS)
    evidence, rewrite = (load_cases(path, format=f).cases for f in ("counterfact-fc", "counterfact-fc-rewrite"))
    assert [c.probes for c in rewrite] == [c.probes for c in evidence]
    req = rewrite[0].request
    assert (req.prompt, req.subject, req.target_new, req.target_true, req.case_id) == (
        "BBC One, by",
        "BBC One",
        " Sega",
        " BBC",
        "10",
    )
    assert not req.is_statement and req.descriptor is None


def test_fact_checking_is_named_never_detected(tmp_path):
    path = _write(tmp_path, RECORDS)
    assert load_cases(path).format == "counterfact-easyedit"
    with pytest.raises(ValidationError, match="does not look like 'counterfact-fc'"):
        load_cases(_write(tmp_path, [{"src": "q?", "alt": "a"}]), format="counterfact-fc")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target_new": "BBC"}, r"record 0, field 'target_new' equals ground_truth \('BBC'\): nothing to check"),
        ({"prompt": ""}, r"record 0, field 'prompt' must be a non-empty string"),
        ({"ground_truth": None}, r"record 0, field 'ground_truth' is missing"),
    ],
)
def test_a_bad_record_is_a_one_line_error_naming_it_or_is_skipped(tmp_path, change, message):
    path = _write(tmp_path, [{**RECORDS[0], **change}, RECORDS[1]])
    with pytest.raises(ValidationError, match=message) as err:
        load_cases(path, format="counterfact-fc")
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    kept = load_cases(path, format="counterfact-fc", skip_invalid=True)
    assert [c.request.case_id for c in kept.cases] == ["11"] and kept.skipped[0][0] == 0


def test_a_claim_is_one_sentence():
    assert claim("BBC One, by", " Sega") == "BBC One, by Sega."
    assert claim("Who owns it? It is", "Sega.") == "Who owns it? It is Sega."


def test_choice_probes_round_trip_through_editkit_records_and_need_a_contrast(tmp_path):
    case = load_cases(_write(tmp_path, RECORDS), format="counterfact-fc").cases[0]
    path = tmp_path / "fc.jsonl"
    path.write_text(json.dumps(editkit_record(case)) + "\n")
    assert load_cases(path).cases == [case]
    bad = editkit_record(case)
    bad["probes"][0]["choice"] = "yes"
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValidationError, match=r"field 'probes\[0\]\.choice' must be true or false"):
        load_cases(path)
    with pytest.raises(ValidationError, match="is a choice but has no contrast"):
        Probe("A claim. True or false?", " True", ProbeKind.EDIT, choice=True)


# --------------------------------------------------------------------------- scoring
YES, NO = " up", " down"  # two labels whose choice the tiny model makes both ways (" True" it never prefers)
WORDS = ["cat", "dog", "sun", "moon", "tree", "river", "stone", "bird", "fish", "king", "queen", "town"]


def _choice(lm, prompt: str) -> bool:
    """Whether the model prefers YES to NO after ``prompt``, computed here from its scores."""
    yes, no = (float(s.mean()) for s in lm.score([prompt] * 2, [YES, NO]))
    return yes > no


def _claims(lm) -> list[tuple[str, bool]]:
    return [(p, _choice(lm, p)) for p in (f"The {w} is here?" for w in WORDS)]


def _probe(prompt: str, label: bool, kind: ProbeKind) -> Probe:
    yes, no = (YES, NO) if label else (NO, YES)
    return Probe(prompt, yes, kind, contrast=no, choice=True)


def test_es_on_choice_probes_is_the_share_of_claims_whose_label_wins(llama):
    (a, a_yes), (b, b_yes) = _claims(llama)[:2]
    probes = (_probe(a, a_yes, ProbeKind.EDIT), _probe(b, not b_yes, ProbeKind.HARD_IN))  # one right, one wrong
    case = EditCase(EditRequest.statement("The cat is here."), probes)
    (scores,) = score_cases(llama, [case], Reference.build(llama, [case]))
    assert scores["es"] == 0.5 and scores["edit_acc"] == 1.0 and scores["hard_in_acc"] == 0.0
    assert "z_sent" not in scores  # a statement edit's claims are labels, not ES_sent's responses


def test_dd_on_choice_probes_is_a_changed_label_against_the_unedited_model(llama, tmp_path):
    claims = _claims(llama)
    assert 0 < sum(label for _, label in claims) < len(claims)  # labelled both ways
    outs = tuple(_probe(p, label, ProbeKind.OUT) for p, label in claims)
    statement = "Every claim is false."
    case = EditCase(EditRequest.statement(statement), (_probe(*claims[0], ProbeKind.EDIT), *outs))
    ref = Reference.build(llama, [case])
    assert ref.choices == {(p.prompt, p.expected): True for p in outs}  # each labelled as the model labels it
    (unedited,) = score_cases(llama, [case], ref)
    assert unedited["dd"] == 0.0
    ref.save(tmp_path)
    assert Reference.load(tmp_path).choices == ref.choices
    # RP at threshold 0 puts the statement before every claim: DD counts the claims whose label moved
    rp = create_editor("rp", {"scope": "embed-untrained", "encoder": "tiny-bert", "threshold": 0.0})
    with rp.edited(llama, [case.request]) as edited:
        (scores,) = score_cases(edited, [case], ref)
    moved = [_choice(llama, f"{statement}\n{p}") != label for p, label in claims]
    assert 0 < sum(moved) < len(moved)
    assert scores["dd"] == pytest.approx(sum(moved) / len(moved))
    flipped = Reference.load(tmp_path)
    flipped.choices = {k: not v for k, v in flipped.choices.items()}  # the unedited labels, read from the reference
    assert score_cases(llama, [case], flipped)[0]["dd"] == 1.0


# --------------------------------------------------------------------------- editkit eval
def test_eval_scores_statement_and_rewrite_edits_on_the_same_claims(tmp_path, capsys):
    """RP takes the evidence statements, FT the rewrites; both runs score the unedited model on the same claims,
    and FT given statements is refused in one line."""
    from editkit.cli import main

    data = _write(tmp_path, RECORDS)
    rp = ["--method", "rp", "--set", "scope=embed-untrained", "--set", "encoder=tiny-bert", "--set", "threshold=0"]
    ft = ["--method", "ft", "--set", "steps=1"]
    runs = {}
    for name, method, fmt in (("rp", rp, "counterfact-fc"), ("ft", ft, "counterfact-fc-rewrite")):
        out = tmp_path / f"{name}.json"
        argv = ["eval", "--model", "tiny-llama", *method, "--data", str(data), "--format", fmt, "--out", str(out)]
        assert main(argv) == 0
        runs[name] = json.loads(out.read_text())["aggregates"]
    for agg in runs.values():
        assert {"es", "dd", "edit_acc", "hard_in_acc", "unedited_es", "unedited_dd"} <= set(agg)
        assert agg["unedited_dd"] == 0.0 and "z_sent" not in agg
    unedited = {k: v for k, v in runs["rp"].items() if k.startswith("unedited_")}
    assert unedited == {k: v for k, v in runs["ft"].items() if k.startswith("unedited_")}
    capsys.readouterr()
    argv = ["eval", "--model", "tiny-llama", *ft, "--data", str(data), "--format", "counterfact-fc"]
    assert main([*argv, "--out", str(tmp_path / "no.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("editkit: error:") and "statement" in err and "\n" not in err
    assert not (tmp_path / "no.json").exists()
