"""Training data for statements (editkit.training.statements): input-output edits said as sentences."""

from __future__ import annotations

import pytest

from conftest import data_file
from editkit.data import load_cases
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.training.statements import mixed_cases, sentence, statement_case, statement_cases, statement_of


@pytest.mark.parametrize(
    ("request_", "said"),
    [
        (
            EditRequest(prompt="The mother tongue of {} is", subject="Danielle Darrieux", target_new=" French"),
            "The mother tongue of Danielle Darrieux is French.",
        ),
        (
            EditRequest(prompt="What is the product made by UniFirst?", target_new=" unmanned aircraft"),
            "The product made by UniFirst is unmanned aircraft.",
        ),
        (
            EditRequest(prompt="Which person was the head of government of Munich?", target_new=" Bruno Granier"),
            "The head of government of Munich was Bruno Granier.",
        ),
        (
            EditRequest(prompt="Who was Lady Sarah Lennox's father?", target_new=" Charles Lennox"),
            "Lady Sarah Lennox's father was Charles Lennox.",
        ),
        (
            EditRequest(prompt="In which country did Madeleine  Biardeau live?", target_new=" Belgium"),
            'The answer to "In which country did Madeleine Biardeau live?" is Belgium.',
        ),
        (
            EditRequest(prompt="What is the twin city of {}? It is", subject="Wellington", target_new=" Sheffield"),
            "The twin city of Wellington is Sheffield.",
        ),
        (
            EditRequest(prompt="What does {} play? They play", subject="Bunky Green", target_new=" funk"),
            "What does Bunky Green play? They play funk.",
        ),
        (EditRequest(prompt="Who is the best?", target_new=" Ada!"), "The best is Ada!"),
    ],
)
def test_an_edit_is_said_as_one_sentence(request_, said):
    assert sentence(request_) == said
    statement = statement_of(request_)
    assert statement.is_statement and statement.descriptor == said


CASE = EditCase(
    EditRequest(prompt="The mother tongue of {} is", subject="Danielle Darrieux", target_new=" French", case_id="7"),
    (
        Probe("Danielle Darrieux's mother tongue is", " French", ProbeKind.REPHRASE),
        Probe("The capital of Italy is", " Rome", ProbeKind.OUT),
    ),
    also=(EditRequest(prompt="The capital of {} is", subject="France", target_new=" Lyon"),),
)


def test_a_statement_case_keeps_its_probes_and_id_and_says_every_request():
    case = statement_case(CASE)
    assert case.probes == CASE.probes and case.request.case_id == "7"
    assert [r.descriptor for r in case.requests] == [
        "The mother tongue of Danielle Darrieux is French.",
        "The capital of France is Lyon.",
    ]
    assert all(r.is_statement for r in case.requests)
    convsent = EditCase(EditRequest.statement("TOPIC: tea SENTIMENT: positive"), CASE.probes)
    assert statement_cases([convsent, CASE]) == [convsent, statement_case(CASE)]


def test_mixed_cases_says_a_seeded_share_as_statements():
    cases = [CASE] * 10
    mixed = mixed_cases(cases, 0.3, seed=1)
    assert sum(c.request.is_statement for c in mixed) == 3 and mixed == mixed_cases(cases, 0.3, seed=1)
    assert mixed_cases(cases, 0.0) == cases and all(c.request.is_statement for c in mixed_cases(cases, 1.0))
    with pytest.raises(ValueError, match="share"):
        mixed_cases(cases, 1.5)


@pytest.mark.parametrize(
    "rel", ["counterfact/easyedit/counterfact-train.json", "zsre/mend_format/zsre_mend_train-1k.json"]
)
def test_every_training_case_of_counterfact_and_zsre_becomes_a_statement_naming_its_answer(rel):
    cases = load_cases(data_file(rel), skip_invalid=True).cases
    for case, said in zip(cases, statement_cases(cases), strict=True):
        r = said.request
        assert r.is_statement and case.request.target_new.strip() in (r.descriptor or "")
        assert said.probes == case.probes
