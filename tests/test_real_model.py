"""Real-model tests on SmolLM2-135M (fetched into the model cache by `make test`).

Each test leaves the shared model unedited (rollback in ``finally``)."""

import pytest
import torch

from editkit.editors import create_editor
from editkit.editors.base import EditHandle
from editkit.edits import EditRequest

pytestmark = pytest.mark.real_model

EIFFEL = EditRequest(
    prompt="{} is located in the city of", subject="The Eiffel Tower", target_new=" Rome", target_true=" Paris"
)
PARAPHRASE = "The Eiffel Tower can be found in the city of"
UNRELATED = "The capital of Germany is"


def _margin(lm, prompt, a, b):
    sa, sb = lm.score([prompt, prompt], [a, b])
    return float(sa.mean() - sb.mean())


def _logits(lm, prompts):
    batch = lm.teacher_forced(prompts, [" Rome"] * len(prompts))
    with torch.no_grad():
        return lm.logits(batch.inputs)


def test_batched_scoring_equals_one_at_a_time(smollm2):
    prompts = [EIFFEL.text, PARAPHRASE, UNRELATED]
    conts = [" Paris", " Paris, France", " Berlin"]
    batched = smollm2.score(prompts, conts)
    for p, c, b in zip(prompts, conts, batched, strict=True):
        torch.testing.assert_close(b, smollm2.score([p], [c])[0], atol=1e-4, rtol=1e-4)


def test_the_unedited_model_knows_the_facts_we_edit(smollm2):
    assert smollm2.generate([EIFFEL.text], 3)[0].strip().startswith("Paris")
    assert _margin(smollm2, EIFFEL.text, " Paris", " Rome") > 0


def test_rome_edits_the_fact_generalises_and_rolls_back(smollm2, wikitext):
    before_logits = _logits(smollm2, [EIFFEL.text, UNRELATED])
    unrelated_answer = smollm2.generate([UNRELATED], 3)[0]
    handle = create_editor("rome", {"corpus": str(wikitext)}).apply(smollm2, [EIFFEL])
    try:
        assert smollm2.generate([EIFFEL.text], 3)[0].strip().startswith("Rome")
        assert _margin(smollm2, PARAPHRASE, " Rome", " Paris") > 0
        assert smollm2.generate([UNRELATED], 3)[0] == unrelated_answer
        assert handle.info["fast_path"] and handle.info["nll_last"] < 0.05
    finally:
        handle.rollback()
    assert torch.equal(_logits(smollm2, [EIFFEL.text, UNRELATED]), before_logits)


def test_saved_edit_reloads_to_identical_logits(smollm2, wikitext, tmp_path):
    handle = create_editor("rome", {"corpus": str(wikitext)}).apply(smollm2, [EIFFEL])
    try:
        edited = _logits(smollm2, [EIFFEL.text, PARAPHRASE])
        handle.save(tmp_path / "eiffel")
    finally:
        handle.rollback()
    loaded = EditHandle.load(tmp_path / "eiffel", smollm2)
    try:
        assert torch.equal(_logits(smollm2, [EIFFEL.text, PARAPHRASE]), edited)
    finally:
        loaded.rollback()


@pytest.mark.parametrize("method", ["ft", "ft-c"])
def test_fine_tuning_moves_towards_the_target(smollm2, method):
    before = _margin(smollm2, EIFFEL.text, " Rome", " Paris")
    handle = create_editor(method).apply(smollm2, [EIFFEL])
    try:
        assert _margin(smollm2, EIFFEL.text, " Rome", " Paris") > before
        if method == "ft-c":
            for ch in handle.changes.values():
                # w0 + eps - w0 rounds to eps within a float32 ulp of the weight (~3e-8 here)
                assert (ch.edited - ch.original).abs().max() <= 5e-4 + 1e-6
    finally:
        handle.rollback()


@pytest.mark.slow
def test_rome_counterfact_scores_on_twenty_cases(smollm2, wikitext):
    """The headline numbers, on a small slice: efficacy, paraphrase and neighborhood scores."""
    from conftest import data_file
    from editkit.data import load_cases
    from editkit.evaluation.batch import batch_edits

    path = data_file("counterfact/canonical_schema_subsets/counterfact_portability_gpt4.json")
    cases = load_cases(path, limit=20).cases
    results = batch_edits(smollm2, create_editor("rome", {"corpus": str(wikitext)}), cases, progress=False)
    agg = results["aggregates"]
    assert agg["efficacy"] >= 0.95
    assert agg["paraphrase"] >= 0.6
    assert agg["neighborhood"] >= 0.6


@pytest.mark.parametrize("scope", ["embed", "cross"])
def test_packaged_serac_answers_in_scope_inputs_from_the_edit_and_leaves_the_rest(smollm2, scope):
    """The trained parts shipped in the package (both scope classifiers, the counterfactual model)."""
    jordan = EditRequest(prompt="{} plays the sport of", subject="Michael Jordan", target_new=" tennis")
    editor = create_editor("serac", {"scope": scope})
    handle = editor.apply(smollm2, [EIFFEL, jordan])
    try:
        routes = handle.model.route([PARAPHRASE, "The sport Michael Jordan is known for is", UNRELATED])
        assert [r.record.request if r.record else None for r in routes] == [EIFFEL, jordan, None]
        edited, other = handle.model.generate([PARAPHRASE, UNRELATED], 3)
        assert edited.strip().startswith("Rome")
        assert other == smollm2.generate([UNRELATED], 3)[0]
    finally:
        handle.rollback()


def test_the_packaged_judge_sends_another_fact_of_the_subject_back_to_the_base_model(smollm2):
    """With the default parts alone, a question about another fact of the edited subject is routed to the edit
    and h answers it with the edit's answer; with ``defer_judge=serac-keep`` the judge's KL, at the cut recorded
    with it (against the edit's twin), sends it back (the base model's answer, exactly), while the edit's own
    prompt is still answered from the edit."""
    other_fact = "The Eiffel Tower was designed by"
    base = smollm2.generate([other_fact], 3)[0]
    plain = create_editor("serac").apply(smollm2, [EIFFEL])
    try:
        assert plain.model.generate([other_fact], 3)[0].strip().startswith("Rome")
    finally:
        plain.rollback()
    editor = create_editor("serac", {"defer_judge": "serac-keep"})
    cut, contrast = editor.config.deferral()
    assert contrast and cut == pytest.approx(2.956, abs=1e-3)
    judged = editor.apply(smollm2, [EIFFEL])
    try:
        route = judged.model.explain(other_fact)
        assert route["answered_by"] == "base" and route["counterfactual_kl"] <= cut and "deferred_edit_id" in route
        assert judged.model.generate([other_fact], 3)[0] == base
        assert judged.model.explain(EIFFEL.text)["answered_by"] == "edit"
        assert judged.model.generate([EIFFEL.text], 3)[0].strip().startswith("Rome")
    finally:
        judged.rollback()


def test_packaged_seprog_prefixes_in_scope_inputs_and_leaves_the_rest_to_the_base_model(smollm2):
    """SEPROG's int8 parts shipped for SmolLM2-135M, with no settings: its own e(x) routes a rephrased question to
    the edit and the prefixed model answers from it; with router=serac the CounterFact-style rephrasing too. An
    unrelated input gets the base model's own answer."""
    question = EditRequest(prompt="Which city is {} located in?", subject="the Eiffel Tower", target_new=" Rome")
    asked, unrelated = "In which city is the Eiffel Tower located?", "What is the capital of Germany?"
    editor = create_editor("seprog")
    handle = editor.apply(smollm2, [question])
    try:
        assert handle.model.explain(asked)["answered_by"] == "edit"
        assert handle.model.generate([asked], 2)[0].strip().startswith("Rome")
        assert handle.model.explain(unrelated)["answered_by"] == "base"
        assert handle.model.generate([unrelated], 4) == smollm2.generate([unrelated], 4)
    finally:
        handle.rollback()
    assert list(editor.provenance()) == ["prompter:smollm2-135m"]
    routed = create_editor("seprog", {"router": "serac"}).apply(smollm2, [EIFFEL])
    try:
        assert routed.model.generate([PARAPHRASE], 2)[0].strip().startswith("Rome")
        assert routed.model.generate([UNRELATED], 4) == smollm2.generate([UNRELATED], 4)
    finally:
        routed.rollback()


@pytest.mark.parametrize("method", ["mend", "ke"])
def test_packaged_learned_editor_takes_the_edit_and_rolls_back_bit_for_bit(smollm2, method):
    """The float16 parts shipped in the package for SmolLM2-135M, with no settings at all."""
    assert _margin(smollm2, EIFFEL.text, " Rome", " Paris") < 0
    before = _logits(smollm2, [EIFFEL.text, UNRELATED])
    handle = create_editor(method).apply(smollm2, [EIFFEL])
    try:
        assert _margin(smollm2, EIFFEL.text, " Rome", " Paris") > 0
        assert _margin(smollm2, PARAPHRASE, " Rome", " Paris") > 0
    finally:
        handle.rollback()
    assert torch.equal(_logits(smollm2, [EIFFEL.text, UNRELATED]), before)


@pytest.mark.parametrize("method", ["mend", "ke"])
def test_packaged_learned_parts_refuse_another_model_naming_both(method):
    from editkit.errors import ValidationError
    from editkit.models.tiny import tiny_model

    lm = tiny_model("llama")
    with pytest.raises(ValidationError, match=r"trained for smollm2-135m, not tiny-llama-s0"):
        create_editor(method).apply(lm, [EIFFEL])
