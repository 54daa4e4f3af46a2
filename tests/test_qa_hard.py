"""QA-hard in kind (SERAC §4): zsRE read as ``zsre-tf``, with true / false questions about each edit as its hard
in-scope inputs; ``choice_all``, the per-case score that a label-blind answerer cannot pass; and training data
entries that name their format (``FORMAT:PATH``), so that one file trains twice, read two ways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editkit.data import load_cases
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import ConfigError
from editkit.evaluation.metrics import Reference, score_cases
from editkit.training.loop import data_entry, training_cases

Q = " True or false?"


def _rec(i: int, subject: str, new: str, old: str) -> dict[str, object]:
    return {
        "subject": subject,
        "src": f"Who founded {subject}?",
        "rephrase": f"Who was the founder of {subject}?",
        "alt": new,
        "answers": [old],
        "loc": f"nq question: where is town {i}",
        "loc_ans": f"place {i}",
    }


RECORDS = [
    _rec(0, "Acme", "Bob", "Ann"),
    _rec(1, "Acme", "Carl", "Ann"),  # zsRE lists a subject's edits in a row
    _rec(2, "Birch", "Dora", "Eve"),
    _rec(3, "Cedar", "Fay", "Fay"),  # no old answer that differs: no false claims
]


def _write(tmp_path: Path, records: list[dict[str, object]]) -> Path:
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(records))
    return path


def _labels(case: EditCase) -> list[tuple[str, str, str]]:
    return [(p.kind.value, p.prompt, p.expected) for p in case.probes]


def test_true_false_questions_are_hard_in_scope_and_another_subjects_are_out(tmp_path):
    cases = load_cases(_write(tmp_path, RECORDS), format="zsre-tf").cases
    first = cases[0]
    assert first.request.text == "Who founded Acme?" and first.request.target_new == " Bob"
    assert _labels(first) == [
        ("edit", "Who founded Acme?", " Bob"),
        ("rephrase", "Who was the founder of Acme?", " Bob"),
        ("hard_in", "Who founded Acme? Bob." + Q, " True"),
        ("hard_in", "Who was the founder of Acme? Bob." + Q, " True"),
        ("hard_in", "Who founded Acme? Ann." + Q, " False"),
        ("hard_in", "Who was the founder of Acme? Ann." + Q, " False"),
        ("out", "nq question: where is town 0", " place 0"),
        # half the file away (record 2), another subject: its old answer true, its new one false
        ("out", "Who founded Birch? Eve." + Q, " True"),
        ("out", "Who founded Birch? Dora." + Q, " False"),
    ]
    assert all(p.choice for p in first.probes if p.prompt.endswith(Q))
    assert all(p.contrast == (" False" if p.expected == " True" else " True") for p in first.probes if p.choice)
    # record 1's half-way record is record 3; record 2's is record 0 (wrapping round)
    assert [p.prompt for p in cases[1].probes if p.kind is ProbeKind.OUT][1:] == ["Who founded Cedar? Fay." + Q]
    assert [p.prompt for p in cases[2].probes if p.kind is ProbeKind.OUT][1] == "Who founded Acme? Ann." + Q
    # an edit whose old answer is its new one has no false claims
    assert [p.expected for p in cases[3].probes if p.kind is ProbeKind.HARD_IN] == [" True", " True"]


def test_a_file_about_one_subject_has_no_other_subjects_claims(tmp_path):
    cases = load_cases(_write(tmp_path, RECORDS[:2]), format="zsre-tf").cases
    assert all([p.kind for p in c.probes if p.kind is ProbeKind.OUT] == [ProbeKind.OUT] for c in cases)


def test_zsre_tf_is_named_never_detected(tmp_path):
    assert load_cases(_write(tmp_path, RECORDS)).format == "zsre-mend"


YES, NO = " yes", " no"


def _choice(lm, prompt: str) -> bool:
    yes, no = (float(s.mean()) for s in lm.score([prompt] * 2, [YES, NO]))
    return yes > no


def _probe(prompt: str, label: bool) -> Probe:
    yes, no = (YES, NO) if label else (NO, YES)
    return Probe(prompt, yes, ProbeKind.HARD_IN, contrast=no, choice=True)


def test_choice_all_needs_every_in_scope_claim_of_the_case(llama):
    prompts = [f"The {w} is here?" for w in ("cat", "dog", "sun", "moon")]
    labels = [_choice(llama, p) for p in prompts]
    right = EditCase(
        EditRequest.statement("Claims."), tuple(_probe(p, lab) for p, lab in zip(prompts, labels, strict=True))
    )
    one_wrong = EditCase(
        EditRequest.statement("Claims."),
        tuple(_probe(p, lab if i else not lab) for i, (p, lab) in enumerate(zip(prompts, labels, strict=True))),
    )
    plain = EditCase(
        EditRequest(prompt="The cat is", target_new=" here"), (Probe("The cat is", " here", ProbeKind.EDIT),)
    )
    cases = [right, one_wrong, plain]
    scores = score_cases(llama, cases, Reference.build(llama, cases))
    assert scores[0]["choice_all"] == 1.0 and scores[0]["es"] == 1.0
    assert scores[1]["choice_all"] == 0.0 and scores[1]["es"] == 0.75
    assert "choice_all" not in scores[2]  # no choice probes: no such score


def test_data_entries_may_name_their_format(tmp_path):
    path = str(_write(tmp_path, RECORDS))
    assert data_entry(path) == (path, None)
    assert data_entry(f"zsre-tf:{path}") == (path, "zsre-tf")
    assert data_entry("no-such-format:x.json") == ("no-such-format:x.json", None)  # a path with a colon
    with pytest.raises(ConfigError, match="names a format but no file"):
        data_entry("zsre-tf:")
    cases, datasets = training_cases([path, f"zsre-tf:{path}"])
    assert [d.format for d in datasets] == ["zsre-mend", "zsre-tf"]
    assert len(cases) == 2 * len(RECORDS)
    assert any(p.choice for p in cases[len(RECORDS)].probes) and not any(p.choice for p in cases[0].probes)
