"""Memory-based editors (LU, RP, SERAC) on tiny random models: routing (SERAC eq. 1), answers, rollback,
save / load, training of the parts, and the scope classifiers' maths."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import write_tiny_cases
from editkit.data import load_cases
from editkit.editors import create_editor
from editkit.editors.answerers import PromptedAnswerer, template_prompt
from editkit.editors.base import EditHandle
from editkit.editors.memory import EditMemory, RoutedModel, descriptor_of, twin_descriptors
from editkit.editors.scope import EmbedScope
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import ConfigError, ValidationError
from editkit.evaluation.scope import scope_breakdown
from editkit.models.bridge import TokenBridge
from editkit.models.encoder import SentenceEncoder
from editkit.models.lm import LanguageModel
from editkit.models.tiny import tiny_model, tiny_tokenizer

EIFFEL = EditRequest(prompt="The Eiffel Tower is located in the city of", target_new=" Rome")
JORDAN = EditRequest(prompt="Michael Jordan plays the sport of", target_new=" tennis")
FAR = "Who is the prime minister of the United Kingdom?"


def _greedy(lm, prompts, n=3):
    return lm.generate_ids(prompts, n)


# --------------------------------------------------------------------------- LU
def test_lu_answers_edit_inputs_with_the_label_and_leaves_others_to_the_base():
    lm = tiny_model("llama")
    before_far = _greedy(lm, [FAR])
    editor = create_editor("lu", {"delta": 1e-3})  # only (near-)identical inputs are in scope
    handle = editor.apply(lm, [EIFFEL])
    routed = handle.model
    assert isinstance(routed, RoutedModel)
    label = lm.encode(" Rome", special=False)
    assert routed.generate_ids([EIFFEL.text], len(label)) == [label]
    assert _greedy(routed, [FAR]) == before_far
    score = routed.score_tokens([EIFFEL.text], [" Rome"])[0]
    assert score.exact_match and float(score.logprobs.sum()) == pytest.approx(len(label) * math.log1p(-1e-6))
    assert routed.explain(EIFFEL.text)["answered_by"] == "edit"
    assert routed.explain(FAR)["answered_by"] == "base"


def test_lu_scores_a_continuation_that_leaves_the_label_as_uniform():
    lm = tiny_model("llama")
    routed = create_editor("lu", {"delta": 1e-3}).apply(lm, [EIFFEL]).model
    other = lm.encode(" Paris", special=False)
    s = routed.score_tokens([EIFFEL.text], [other])[0]
    vocab = lm.config.vocab_size
    assert not s.exact_match
    assert float(s.logprobs[0]) == pytest.approx(math.log(1e-6 / (vocab - 1)), rel=1e-5)
    assert torch.allclose(s.logprobs[1:], torch.full_like(s.logprobs[1:], -math.log(vocab)))


def test_lu_delta_is_a_distance_on_mean_last_hidden_states():
    lm = tiny_model("gpt2")
    scope = create_editor("lu", {"delta": 1.0}).build_scope(lm)
    texts = [EIFFEL.text, FAR]
    vectors = scope.query_vectors(texts)
    with torch.no_grad():
        for text, vec in zip(texts, vectors, strict=True):
            ids = torch.tensor([lm.encode(text)])
            hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
            np.testing.assert_allclose(vec, hidden.mean(0).numpy(), rtol=1e-5, atol=1e-5)
    d2 = float(((vectors[0] - vectors[1]) ** 2).sum())
    far = scope.scores([FAR], [[]], np.array([[d2]]))
    assert far[0, 0] == float(math.sqrt(d2) < 1.0)


# --------------------------------------------------------------------------- RP / routing
def _rp(threshold=0.0, **kw):
    return create_editor("rp", {"scope": "embed-untrained", "encoder": "tiny-bert", "threshold": threshold, **kw})


def test_routing_follows_eq1_threshold():
    lm = tiny_model("llama")
    base_out = _greedy(lm, [EIFFEL.text, FAR])
    everything = _rp(threshold=0.0).apply(lm, [EIFFEL]).model  # every input is "in scope" of its nearest edit
    nothing = _rp(threshold=1.0).apply(tiny_model("llama"), [EIFFEL]).model  # sigmoid < 1: nothing is
    assert all(r.record is not None for r in everything.route([EIFFEL.text, FAR]))
    assert all(r.record is None for r in nothing.route([EIFFEL.text, FAR]))
    assert _greedy(nothing, [EIFFEL.text, FAR]) == base_out
    # routed to the edit, RP's base model reads the edit in its prompt
    prompted = lm.generate_ids([f"{descriptor_of(EIFFEL)}\n{FAR}"], 3)
    assert _greedy(everything, [FAR]) == prompted


def test_the_subject_gate_routes_only_inputs_that_name_the_edits_subject():
    tower = EditRequest(prompt="{} is located in the city of", subject="The Eiffel Tower", target_new=" Rome")
    unlocated = EditRequest(prompt="Who leads the UK? It is", target_new=" Boris")
    louvre = "The Louvre is located in the city of"
    model = _rp(threshold=0.0, subject_gate=True).apply(tiny_model("llama"), [tower]).model
    assert model.route(["Where is the eiffel tower's base?"])[0].record is not None
    assert model.route([louvre])[0].record is None  # nearest edit, but another entity
    ungated = _rp(threshold=0.0).apply(tiny_model("llama"), [tower]).model
    assert ungated.route([louvre])[0].record is not None
    both = _rp(threshold=0.0, subject_gate=True).apply(tiny_model("llama"), [tower, unlocated]).model
    assert both.route([louvre])[0].record.request == unlocated  # an edit without a subject is not gated


def test_a_soft_subject_gate_lets_through_only_inputs_scored_at_least_its_pass_mark():
    tower = EditRequest(prompt="{} is located in the city of", subject="The Eiffel Tower", target_new=" Rome")
    louvre, named = "The Louvre is located in the city of", "Where is the eiffel tower's base?"
    ungated = _rp(threshold=0.0).apply(tiny_model("llama"), [tower]).model
    score = ungated.route([louvre])[0].score
    assert 0.0 < score < 1.0

    def route(gate_pass: float) -> list[float | None]:
        model = _rp(threshold=0.0, subject_gate=True, subject_gate_pass=gate_pass).apply(tiny_model("llama"), [tower])
        return [r.score if r.record is not None else None for r in model.model.route([louvre, named])]

    assert route(score)[0] == pytest.approx(score)  # scored at the pass mark: through, with its score
    assert route(min(1.0, score + 1e-3))[0] is None  # just under it: held back, as the strict gate holds it
    assert route(1.0)[0] is None
    assert all(r is not None for r in (route(score)[1], route(1.0)[1]))  # an input naming the subject always passes
    with pytest.raises(ConfigError, match="subject_gate_pass must be in"):
        _rp(subject_gate=True, subject_gate_pass=1.5)


def test_the_soft_gate_never_passes_a_look_alike_edit_over_one_whose_subject_the_input_names(monkeypatch):
    """An input about one edited entity that scores higher against a look-alike edit of another entity (two
    editions of one championship) goes to the edit it names; an input naming neither still reaches the best."""
    edits = [
        EditRequest(prompt="The country of {} is", subject="1974 Swedish Open women's doubles", target_new=" Saxony"),
        EditRequest(prompt="{} follows", subject="2016 India Junior women's doubles", target_new=" 2004"),
    ]
    model = _rp(threshold=0.0, subject_gate=True, subject_gate_pass=0.5).apply(tiny_model("llama"), edits).model
    by_subject = {r.request.subject: r.id for r in model.memory.records()}
    # the look-alike (the first edit) scores 0.95, the named one 0.6: both above the pass mark
    monkeypatch.setattr(
        model.memory.scope,
        "scores",
        lambda texts, cands, sqdist: np.array(
            [[0.95 if r.id == by_subject[edits[0].subject] else 0.6 for r in row] for row in cands], np.float32
        ),
    )
    named, alias = "The country of 2016 India Junior women's doubles is", "The country of the Swedish Open is"
    routes = model.route([named, alias])
    assert routes[0].record.request == edits[1] and routes[0].score == pytest.approx(0.6)
    assert routes[1].record.request == edits[0] and routes[1].score == pytest.approx(0.95)


def test_routed_scores_equal_the_answering_model_scores():
    lm = tiny_model("llama")
    routed = _rp(threshold=0.0).apply(lm, [EIFFEL]).model
    mixed = _rp(threshold=1.0).apply(tiny_model("llama"), [EIFFEL]).model
    prompts, conts = [EIFFEL.text, FAR], [" Rome", " Paris"]
    via_edit = routed.score_tokens(prompts, conts, first_distribution=True)
    direct = lm.score_tokens([f"{descriptor_of(EIFFEL)}\n{p}" for p in prompts], conts, first_distribution=True)
    for a, b in zip(via_edit, direct, strict=True):
        assert torch.allclose(a.logprobs, b.logprobs) and torch.equal(a.greedy, b.greedy)
        assert torch.allclose(a.first_distribution, b.first_distribution)
    base = tiny_model("llama").score_tokens(prompts, conts)
    for a, b in zip(mixed.score_tokens(prompts, conts), base, strict=True):
        assert torch.allclose(a.logprobs, b.logprobs)
    nt = routed.next_token_logprobs(prompts)
    assert torch.allclose(nt, lm.next_token_logprobs([f"{descriptor_of(EIFFEL)}\n{p}" for p in prompts]))


def test_defer_kl_sends_an_input_back_to_the_base_when_h_answers_as_it_does():
    """KL(h || base) of the next token after the input, against an independent computation; at or under
    ``defer_kl`` the base model answers (explain names the deferred edit), over it h does."""
    lm = tiny_model("llama")
    prompts = [EIFFEL.text, FAR]
    base = lm.next_token_logprobs(prompts)
    h = lm.next_token_logprobs([f"{descriptor_of(EIFFEL)}\n{p}" for p in prompts])  # RP's h: the edit in the prompt
    kl = (h.exp() * (h - base)).sum(-1)
    assert float(kl.min()) > 0
    cut = float(kl.mean())  # between the two inputs' KLs
    model = _rp(threshold=0.0, defer_kl=cut).apply(lm, [EIFFEL]).model
    routes = model.route(prompts)
    for r, k in zip(routes, kl.tolist(), strict=True):
        assert r.kl == pytest.approx(k, rel=1e-4, abs=1e-6)
        assert (r.record is None) == (k <= cut) and (r.deferred is not None) == (k <= cut)
    kept = [i for i, k in enumerate(kl.tolist()) if k > cut]
    deferred = [i for i, k in enumerate(kl.tolist()) if k <= cut]
    assert len(kept) == len(deferred) == 1
    assert model.explain(prompts[deferred[0]])["answered_by"] == "base"
    assert model.explain(prompts[deferred[0]])["deferred_edit_id"] == routes[deferred[0]].deferred.id
    assert model.explain(prompts[kept[0]])["answered_by"] == "edit"
    assert _greedy(model, [prompts[deferred[0]]]) == _greedy(lm, [prompts[deferred[0]]])
    never = _rp(threshold=0.0).apply(tiny_model("llama"), [EIFFEL]).model
    assert all(r.record is not None and r.kl is None for r in never.route(prompts))
    with pytest.raises(ConfigError, match="defer_kl"):
        _rp(defer_kl=-1.0)


def test_defer_contrast_compares_h_on_the_edit_with_h_on_its_twin():
    """The twin is the edit's prompt with the base model's own greedy answer (as many tokens as the new one, by
    generation here); with ``defer_contrast`` the KL that decides is KL(h(edit, x) || h(twin, x)), recomputed
    independently, and a statement, which has no twin, keeps the comparison with the base model."""
    lm = tiny_model("llama")
    statement = EditRequest(descriptor="Be more positive about vaccines.")
    n = len(lm.encode(EIFFEL.target_new, special=False))
    answer = lm.tokenizer.decode(lm.generate_ids([EIFFEL.text], n)[0], skip_special_tokens=True)
    assert twin_descriptors(lm, [EIFFEL, statement]) == [f"{EIFFEL.text}{answer}", None]
    prompts = [EIFFEL.text, FAR]
    h = lm.next_token_logprobs([f"{descriptor_of(EIFFEL)}\n{p}" for p in prompts])
    twin = lm.next_token_logprobs([f"{EIFFEL.text}{answer}\n{p}" for p in prompts])
    kl = (h.exp() * (h - twin)).sum(-1)
    base_kl = (h.exp() * (h - lm.next_token_logprobs(prompts))).sum(-1)
    assert not torch.allclose(kl, base_kl, rtol=1e-3)  # another measure than defer_kl's alone
    cut = float(kl.mean())
    model = _rp(threshold=0.0, defer_kl=cut, defer_contrast=True).apply(lm, [EIFFEL]).model
    for r, k in zip(model.route(prompts), kl.tolist(), strict=True):
        assert r.kl == pytest.approx(k, rel=1e-4, abs=1e-6)
        assert (r.record is None) == (k <= cut)
    said = _rp(threshold=0.0, defer_kl=1e-9, defer_contrast=True).apply(tiny_model("llama"), [statement]).model
    h_s = lm.next_token_logprobs([f"{descriptor_of(statement)}\n{FAR}"])
    want = (h_s.exp() * (h_s - lm.next_token_logprobs([FAR]))).sum(-1)
    assert said.route([FAR])[0].kl == pytest.approx(float(want[0]), rel=1e-4, abs=1e-6)
    with pytest.raises(ConfigError, match="defer_contrast needs defer_kl"):
        _rp(defer_contrast=True)


def test_a_defer_judge_decides_the_deferral_and_the_answerer_still_answers(serac_parts):
    """With ``defer_judge`` the KL that decides is the judge's (the trained counterfactual model of another folder,
    recomputed here from its own parts), while inputs kept by the edit are answered by the configured answerer
    (RP's: the base model with the edit in its prompt)."""
    from editkit.trained import load_adapter_lm

    lm = tiny_model("llama")
    prompts = [EIFFEL.text, FAR]
    base = lm.next_token_logprobs(prompts)
    judge = load_adapter_lm(serac_parts / "counterfactual", "judge")
    h = judge.next_token_logprobs([f"{descriptor_of(EIFFEL)}\n{p}" for p in prompts])
    kl = (h.exp() * (h - base)).sum(-1)
    rp_kl = lm.next_token_logprobs([f"{descriptor_of(EIFFEL)}\n{p}" for p in prompts])
    assert not torch.allclose(h, rp_kl)  # the judge is not the answerer
    cut = float(kl.mean())
    editor = _rp(threshold=0.0, defer_kl=cut, defer_judge=str(serac_parts))
    assert editor.provenance()["defer-judge"]
    model = editor.apply(lm, [EIFFEL]).model
    routes = model.route(prompts)
    for r, k in zip(routes, kl.tolist(), strict=True):
        assert r.kl == pytest.approx(k, rel=1e-4, abs=1e-6)
        assert (r.record is None) == (k <= cut)
    kept = [p for p, r in zip(prompts, routes, strict=True) if r.record is not None]
    assert len(kept) == 1
    want = lm.next_token_logprobs([f"{descriptor_of(EIFFEL)}\n{kept[0]}"])
    assert torch.allclose(model.next_token_logprobs(kept), want, atol=1e-5)
    with pytest.raises(ConfigError, match="records no calibrated cut"):
        _rp(defer_judge=str(serac_parts))


def test_a_judge_packed_with_its_calibration_defers_at_the_recorded_cut(serac_parts, tmp_path):
    """``editkit pack --defer`` records a calibration's cut with the judge's counterfactual part; the judge then
    decides at that cut, and with the recorded comparison, when no ``defer_kl`` is given. A calibration of other
    weights, or not a calibration at all, is refused, and nothing is packed."""
    from editkit.trained import pack, part_fingerprint, read_manifest

    lm = tiny_model("llama")
    prompts = [EIFFEL.text, FAR]
    explicit = _rp(threshold=0.0, defer_kl=1e-9, defer_contrast=True, defer_judge=str(serac_parts))
    kls = [r.kl for r in explicit.apply(lm, [EIFFEL]).model.route(prompts)]
    cut = sum(kls) / 2
    fingerprint = part_fingerprint(serac_parts / "counterfactual")
    calibration = tmp_path / "calibration.json"
    row = {"suggested_defer_kl": cut, "contrast": True, "keep": 0.97, "counterfactual": fingerprint}
    calibration.write_text(json.dumps({**row, "counterfactual": "0" * 16}))
    with pytest.raises(ValidationError, match=r"made on the counterfactual part 0{16}, not on this one"):
        pack(serac_parts, tmp_path / "wrong", defer=calibration)
    calibration.write_text(json.dumps({"suggested_defer_kl": cut}))
    with pytest.raises(ValidationError, match="is not a deferral calibration"):
        pack(serac_parts, tmp_path / "wrong", defer=calibration)
    assert not (tmp_path / "wrong").exists()
    calibration.write_text(json.dumps(row))
    packed = pack(serac_parts, tmp_path / "judge", defer=calibration)
    assert packed["parts"]["counterfactual"]["defer"]["defer_kl"] == cut
    assert read_manifest(tmp_path / "judge")["parts"]["counterfactual"]["defer"]["defer_contrast"] is True

    editor = _rp(threshold=0.0, defer_judge=str(tmp_path / "judge"))
    assert editor.config.deferral() == (cut, True)
    assert editor.provenance()["defer-cut"] == f"{cut:.6g} against the twin"
    routes = editor.apply(tiny_model("llama"), [EIFFEL]).model.route(prompts)
    assert [r.kl for r in routes] == pytest.approx(kls, rel=1e-5)
    assert [r.record is None for r in routes] == [k <= cut for k in kls]
    assert sum(r.record is None for r in routes) == 1
    assert _rp(defer_kl=0.5, defer_judge=str(tmp_path / "judge")).config.deferral() == (0.5, False)

    calibration.write_text(json.dumps({**row, "contrast": False}))
    pack(serac_parts, tmp_path / "plain", defer=calibration)
    with pytest.raises(ConfigError, match="calibrated against the base model, not the twin"):
        _rp(defer_contrast=True, defer_judge=str(tmp_path / "plain"))


def test_few_shot_label_probabilities_route_each_example():
    lm = tiny_model("llama")
    base = tiny_model("llama")
    routed = _rp(threshold=0.0).apply(lm, [EIFFEL]).model
    prefix, suffixes, labels = "Review: good. Sentiment: positive\n", ["Review: bad. Sentiment:"], [5, 7]
    got = routed.label_logprobs_after_prefix(prefix, suffixes, labels)
    want = base.next_token_logprobs([f"{descriptor_of(EIFFEL)}\n{prefix}{suffixes[0]}"])[:, labels]
    assert torch.allclose(got, want, atol=1e-5)
    unrouted = _rp(threshold=1.0).apply(tiny_model("llama"), [EIFFEL]).model
    assert torch.allclose(
        unrouted.label_logprobs_after_prefix(prefix, suffixes, labels),
        base.label_logprobs_after_prefix(prefix, suffixes, labels),
    )


def test_a_prompt_builder_writes_what_the_answering_model_reads():
    lm = tiny_model("llama")
    record_texts = []

    def builder(record, text):
        record_texts.append((record.request, text))
        return f"Fact: {record.request.text}{record.request.target_new}. Question: {text}"

    memory = EditMemory(EmbedScope.untrained("tiny-bert"))
    memory.add([EIFFEL])
    routed = RoutedModel(lm, memory, PromptedAnswerer(lm, builder), threshold=0.0)
    got = routed.generate_ids([FAR], 3)
    assert got == lm.generate_ids([f"Fact: {EIFFEL.text} Rome. Question: {FAR}"], 3)
    assert record_texts == [(EIFFEL, FAR)]
    record = memory.records()[0]
    assert template_prompt("<{edit}|{input}>")(record, FAR) == f"<{descriptor_of(EIFFEL)}|{FAR}>"
    with pytest.raises(ConfigError, match="needs both"):
        template_prompt("{edit} only")
    memory.close()


def test_the_route_cache_is_shared_by_threads_and_can_be_cleared():
    from concurrent.futures import ThreadPoolExecutor

    routed = _rp(threshold=0.0).apply(tiny_model("llama"), [EIFFEL, JORDAN]).model
    texts = [EIFFEL.text, JORDAN.text, FAR, "The capital of Italy is"]
    want = [r.record.id for r in routed.route(texts)]
    routed.clear_routes()
    calls = []
    lookup = routed.memory.lookup

    def counting(batch):
        calls.append(list(batch))
        return lookup(batch)

    routed.memory.lookup = counting

    def ids(i):
        return [r.record.id for r in routed.route(texts[i % 4 :] + texts[: i % 4])]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ids, range(32)))
    for i, ids in enumerate(results):
        assert ids == want[i % 4 :] + want[: i % 4]
    assert sorted(t for batch in calls for t in batch) == sorted(texts)  # each input routed once, then cached
    routed.clear_routes()
    routed.route(texts[:1])
    assert calls[-1] == texts[:1]


def test_memory_edits_accumulate_and_roll_back_exactly():
    lm = tiny_model("llama")
    weights = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    base = _greedy(lm, [EIFFEL.text, JORDAN.text, FAR])
    editor = _rp(threshold=0.0)
    h1 = editor.apply(lm, [EIFFEL])
    h2 = editor.apply(lm, [JORDAN])
    assert h1.model is h2.model and len(h2.model.memory) == 2
    assert h2.model.route([JORDAN.text])[0].record.request == JORDAN
    assert not h1.changes and not h2.changes
    assert all(torch.equal(p, weights[n]) for n, p in lm.model.named_parameters())
    h2.rollback()
    h1.rollback()
    assert len(h1.model.memory) == 0
    assert _greedy(h1.model, [EIFFEL.text, JORDAN.text, FAR]) == base
    h1.reapply()
    assert len(h1.model.memory) == 1


def test_duplicate_and_conflicting_edits():
    lm = tiny_model("llama")
    editor = _rp(threshold=0.0)
    first = editor.apply(lm, [EIFFEL])
    dup = editor.apply(lm, [EIFFEL])
    assert dup.info["duplicates"] == 1 and len(dup.model.memory) == 1
    newer = EditRequest(prompt=EIFFEL.prompt, target_new=" Berlin")
    replacing = editor.apply(lm, [newer])
    assert replacing.info["replaced"] == 1 and len(replacing.model.memory) == 1
    assert replacing.model.route([EIFFEL.text])[0].record.request == newer  # the newer wins
    journal = replacing.model.memory.store.journal()
    assert [r.request.target_new for r in journal] == [" Rome", " Berlin"]  # the older stays in the journal
    replacing.rollback()  # undoing the newer edit brings the older back
    assert replacing.model.route([EIFFEL.text])[0].record.request == EIFFEL
    dup.rollback()  # a duplicate owns no record: rolling it back removes nothing
    assert len(first.model.memory) == 1


def test_a_memory_handle_rolls_back_one_of_its_edits():
    lm = tiny_model("llama")
    editor = _rp(threshold=0.0)
    other = editor.apply(lm, [JORDAN])
    handle = editor.apply(lm, [EIFFEL, JORDAN, EditRequest(prompt="The capital of Germany is", target_new=" Bonn")])
    assert handle.outcomes == ["added", "duplicate", "added"]
    eiffel, _, bonn = handle.record_ids
    for not_held in (other.record_ids[0], 999):  # a duplicate's record belongs to the handle that stored it
        with pytest.raises(ValidationError, match="not one this handle holds"):
            handle.rollback_record(not_held)
    handle.rollback_record(eiffel)
    assert handle.applied and handle.record_ids[1:] == [bonn] and handle.requests[0] == JORDAN
    assert [r.id for r in handle.model.memory.records()] == [other.record_ids[0], bonn]
    handle.rollback_record(bonn)
    assert not handle.applied and [r.request for r in handle.model.memory.records()] == [JORDAN]
    handle.rollback()  # nothing left to roll back: the duplicate's record stays with its own handle
    assert len(handle.model.memory) == 1


def test_memory_survives_reopening(tmp_path):
    path = tmp_path / "edits.sqlite"
    lm = tiny_model("llama")
    _rp(threshold=0.0, memory=str(path)).apply(lm, [EIFFEL, JORDAN])
    reopened = _rp(threshold=0.0, memory=str(path))
    routed = reopened.routed(tiny_model("llama"))
    assert len(routed.memory) == 2
    assert routed.route([JORDAN.text])[0].record.request == JORDAN


def test_memory_handle_save_load(tmp_path):
    lm = tiny_model("llama")
    handle = _rp(threshold=0.0).apply(lm, [EIFFEL])
    want = handle.model.score_tokens([FAR], [" Rome"])[0].logprobs
    handle.save(tmp_path / "edit")
    assert json.loads((tmp_path / "edit" / "handle.json").read_text())["kind"] == "memory"
    loaded = EditHandle.load(tmp_path / "edit", tiny_model("llama"))
    assert loaded.requests == [EIFFEL]
    assert torch.allclose(loaded.model.score_tokens([FAR], [" Rome"])[0].logprobs, want)


def test_routed_model_of_another_editor_is_refused():
    lm = tiny_model("llama")
    routed = _rp().apply(lm, [EIFFEL]).model
    with pytest.raises(ValidationError, match="another editor"):
        _rp().apply(routed, [JORDAN])


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="threshold"):
        create_editor("serac", {"threshold": 2})
    with pytest.raises(ConfigError, match="template"):
        create_editor("rp", {"template": "no slots"})
    with pytest.raises(ValidationError, match="no trained SERAC parts"):
        create_editor("serac", {"artifacts": "/nonexistent"}).prepare(tiny_model("llama"))


def test_provenance_names_the_trained_parts_by_content(tmp_path):
    import shutil

    from editkit.trained import PACKAGED

    assert set(create_editor("serac").provenance()) == {"scope-embed", "counterfactual"}
    assert set(create_editor("rp", {"scope": "cross"}).provenance()) == {"scope-embed", "scope-cross"}
    assert create_editor("rp", {"scope": "embed-untrained"}).provenance() == {}
    assert create_editor("ft").provenance() == {}
    copy = tmp_path / "parts"
    shutil.copytree(PACKAGED / "serac", copy)
    packaged = create_editor("rp").provenance()
    assert create_editor("rp", {"artifacts": str(copy)}).provenance() == packaged
    head = copy / "scope-embed" / "head.safetensors"
    data = head.read_bytes()
    head.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert create_editor("rp", {"artifacts": str(copy)}).provenance() != packaged


# --------------------------------------------------------------------------- scope maths
def test_embed_scope_probability_is_sigmoid_of_negative_squared_distance():
    enc = SentenceEncoder.load("tiny-bert")
    scope = EmbedScope(enc, scale=3.0, bias=1.5, tag="t")
    texts = [EIFFEL.text, FAR]
    e = enc.embed(texts)
    assert torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    d2 = float(((e[0] - e[1]) ** 2).sum())
    p = scope.scores(texts[:1], [[]], np.array([[d2]]))[0, 0]
    assert p == pytest.approx(1 / (1 + math.exp(-(1.5 - 3.0 * d2))), rel=1e-5)


def test_an_int8_encoder_embeds_close_to_the_float_one_and_leaves_it_untouched():
    enc = SentenceEncoder.load("tiny-bert")
    long = "A sentence much longer than the ones the int8 encoder was traced with, so that no length is fixed in it"
    texts = [EIFFEL.text, FAR, JORDAN.text, long]
    before = enc.embed(texts)
    q = enc.quantized()
    assert not any(type(m) is torch.nn.Linear for m in q.model.modules())
    assert any(type(m) is torch.nn.Linear for m in enc.model.modules())
    assert torch.equal(enc.embed(texts), before)
    after = q.embed(texts)
    assert not torch.equal(after, before)
    assert torch.allclose(after.norm(dim=1), torch.ones(4), atol=1e-5)
    assert float((after * before).sum(1).min()) > 0.99
    # the trace runs the quantized model itself, on a padded batch and on one input of any length (activations
    # are quantized per call, so an input alone and in a batch differ a little)
    inputs = q.tokenize(texts)
    with torch.no_grad():
        eager = q.pool(q.model(**inputs).last_hidden_state, inputs["attention_mask"])
        alone = q.model(**q.tokenize([long])).last_hidden_state.mean(1)
    torch.testing.assert_close(q.pool(q.hidden(inputs), inputs["attention_mask"]), eager, rtol=0, atol=1e-6)
    torch.testing.assert_close(q.embed([long]), torch.nn.functional.normalize(alone, dim=-1), rtol=0, atol=1e-6)
    torch.testing.assert_close(q.embed([long]), eager[3:], rtol=0, atol=1e-3)


def test_an_int8_scope_is_another_key_space_and_reembeds_a_float_memory(tmp_path, serac_parts):
    path = tmp_path / "edits.sqlite"
    settings = {"artifacts": str(serac_parts), "encoder": "tiny-bert", "memory": str(path)}
    lm = tiny_model("llama")
    float_memory = create_editor("serac", settings).apply(lm, [EIFFEL, JORDAN]).model.memory
    reopened = create_editor("serac", {**settings, "scope_int8": True}).routed(tiny_model("llama")).memory
    assert reopened.scope.space == float_memory.scope.space + ":int8"
    assert len(reopened) == 2
    # the keys were made again by the int8 encoder, beside the float ones
    stored = reopened.store.get_vectors(reopened.scope.space)
    ids = [r.id for r in reopened.records()]
    keys = reopened.scope.edit_vectors([r.request for r in reopened.records()])
    assert np.allclose(np.stack([stored[i] for i in ids]), keys, atol=1e-6)
    assert not np.allclose(keys, float_memory.scope.edit_vectors([r.request for r in reopened.records()]))
    for request in (EIFFEL, JORDAN):
        assert reopened.lookup([request.text])[0].record.request == request


def test_an_int8_cross_scope_quantizes_both_encoders_and_keeps_the_head(serac_parts):
    settings = {"artifacts": str(serac_parts), "encoder": "tiny-bert", "scope": "cross"}
    float_scope = create_editor("serac", settings).routed(tiny_model("llama")).memory.scope
    scope = create_editor("serac", {**settings, "scope_int8": True}).routed(tiny_model("llama")).memory.scope
    assert scope.space == float_scope.space.replace("|cross:", ":int8|cross:")
    assert torch.equal(scope.classifier.head.weight, float_scope.classifier.head.weight)
    for encoder in (scope.retrieval.encoder, scope.classifier.encoder):
        assert not any(type(m) is torch.nn.Linear for m in encoder.model.modules())


def test_memory_lookup_matches_brute_force():
    enc = SentenceEncoder.load("tiny-bert")
    scope = EmbedScope(enc, scale=2.0, bias=0.5, tag="t")
    memory = EditMemory(scope)
    requests = [EIFFEL, JORDAN, EditRequest(prompt="The capital of Germany is", target_new=" Bonn")]
    memory.add(requests)
    queries = ["The capital of Italy is", "Lionel Messi plays the sport of", FAR]
    routes = memory.lookup(queries)
    keys = enc.embed([descriptor_of(r) for r in requests])
    q = enc.embed(queries)
    d2 = torch.cdist(q, keys).pow(2)
    for route, row in zip(routes, d2, strict=True):
        j = int(row.argmin())
        assert route.record.request == requests[j]
        assert route.score == pytest.approx(1 / (1 + math.exp(-(0.5 - 2.0 * float(row[j])))), rel=1e-4)
    memory.close()


# --------------------------------------------------------------------------- another tokenizer
def _other_family():
    """A model whose tokenizer differs from the tiny models' (fewer BPE merges), as Gemma's differs from SmolLM2's."""
    other = tiny_model("llama", seed=1)
    return LanguageModel(other.model, tiny_tokenizer(vocab=300), name="tiny-other")


def test_bridge_moves_ids_through_text_and_keeps_distribution_ratios():
    base, h = tiny_model("llama"), _other_family()
    bridge = TokenBridge(base, h)
    ids = base.encode(" Rome, the city of Paris", special=False)
    assert bridge.to_target(ids) == h.encode(" Rome, the city of Paris", special=False) != ids
    assert bridge.to_source(bridge.to_target(ids)) == ids
    mapping = bridge.vocab_map()
    assert base.tokenizer.decode([int(torch.nonzero(mapping >= 0)[5])]) == h.tokenizer.decode(
        [int(mapping[mapping >= 0][5])]
    )
    logp = h.next_token_logprobs(["The Eiffel Tower is"])[0]
    moved = bridge.distribution_to_source(logp)
    assert moved.shape[-1] == base.next_token_logprobs(["x"]).shape[-1]
    assert torch.logsumexp(moved, -1).item() == pytest.approx(0.0, abs=1e-5)
    a, b = [int(i) for i in torch.nonzero(mapping >= 0)[:2, 0]]
    assert (moved[a] - moved[b]).item() == pytest.approx((logp[mapping[a]] - logp[mapping[b]]).item(), abs=1e-5)


def test_an_answerer_of_another_family_scores_the_same_text():
    base, h = tiny_model("llama"), _other_family()
    answerer = PromptedAnswerer(h, template_prompt("{edit}\n{input}"), bridge=TokenBridge(base, h))
    memory = EditMemory(EmbedScope.untrained("tiny-bert"))
    memory.add([EIFFEL])
    record = memory.records()[0]
    prompt = f"{record.descriptor}\n{EIFFEL.text}"
    (via,) = answerer.score_tokens(
        [(record, EIFFEL.text)], [base.encode(" Rome", special=False)], batch_size=2, first_distribution=True
    )
    (direct,) = h.score_tokens([prompt], [" Rome"], first_distribution=True)
    assert torch.allclose(via.logprobs, direct.logprobs) and torch.equal(via.greedy, direct.greedy)
    assert via.first_distribution.shape == base.next_token_logprobs(["x"])[0].shape
    (generated,) = answerer.generate_ids([(record, EIFFEL.text)], 4)
    assert base.tokenizer.decode(generated) == h.tokenizer.decode(h.generate_ids([prompt], 4)[0])
    memory.close()


def test_scope_breakdown_reads_the_classifier_at_each_threshold(tmp_path):
    lm = tiny_model("llama")
    cases = load_cases(write_tiny_cases(tmp_path / "cases.jsonl")).cases
    editor = _rp(threshold=0.5)
    out = scope_breakdown(lm, editor, cases, 3, thresholds=[0.0, 0.5, 1.0], progress=False)
    assert out["groups"] == 2 and out["threshold"] == 0.5
    everything, nothing = out["classifier_accuracy_by_threshold"]["0.0"], out["classifier_accuracy_by_threshold"]["1.0"]
    assert everything["out_easy"] == 0.0 and nothing["out_easy"] == 1.0 and nothing["in_easy"] == 0.0
    assert out["classifier_accuracy"] == out["classifier_accuracy_by_threshold"]["0.5"]
    # at 0.5, against routing computed here: an in-scope probe is right when it goes to its own edit
    hits = {"in_easy": [], "out_easy": []}
    for g in range(2):
        group = cases[3 * g : 3 * g + 3]
        handle = editor.apply(lm, [c.request for c in group])
        own = dict(zip([c.request for c in group], handle.record_ids, strict=True))
        for c in group:
            for p in c.probes:
                route = handle.model.route([p.prompt])[0]
                got = route.record.id if route.record is not None else None
                split = "out_easy" if p.kind.value == "out" else "in_easy"
                hits[split].append(float(got == (own[c.request] if split == "in_easy" else None)))
        handle.rollback()
    assert out["classifier_accuracy"] == pytest.approx({s: sum(v) / len(v) for s, v in hits.items()})


def test_scope_breakdown_scores_a_choice_probe_by_its_likelier_label():
    lm = tiny_model("llama")
    statement = EditRequest.statement("The cat is here.")
    words = ["cat", "dog", "sun", "moon", "tree", "river", "stone", "bird", "fish", "king", "queen", "town"]
    probes = tuple(
        Probe(f"The {w} is here?", " left", ProbeKind.HARD_IN, contrast=" right", choice=True) for w in words
    )
    out = scope_breakdown(lm, _rp(threshold=0.0), [EditCase(statement, probes)], 1, progress=False)
    wins = []  # RP's h is the base model reading the statement first, computed here
    for p in probes:
        left, right = (
            float(x.mean()) for x in lm.score([f"{descriptor_of(statement)}\n{p.prompt}"] * 2, [" left", " right"])
        )
        wins.append(float(left > right))
    assert 0 < sum(wins) < len(wins)  # both ways: exact match on " left" alone would not give this
    assert out["answerer_accuracy"]["in_hard"] == pytest.approx(sum(wins) / len(wins))


def test_a_memory_refreshed_from_a_shared_store_takes_up_other_writers_edits_and_rollbacks(tmp_path) -> None:
    """Two editors on one store (two server replicas): what one adds or rolls back, the other's memory sees after
    refresh (and says it is stale until then); its routing follows."""
    path = str(tmp_path / "shared.sqlite")
    lm = tiny_model("llama")
    mine = create_editor("lu", {"delta": 1e-3, "memory": path}).routed(lm)
    theirs = create_editor("lu", {"delta": 1e-3, "memory": path})
    edit = EditRequest(prompt="The capital of Germany is", target_new=" Bonn")
    assert not mine.memory.stale()
    handle = theirs.apply(lm, [edit])
    assert mine.memory.stale() and mine.explain(edit.text)["answered_by"] == "base"
    assert mine.memory.refresh() == 1 and not mine.memory.stale()
    assert mine.explain(edit.text)["answered_by"] == "edit"
    assert mine.generate([edit.text], 4) == [" Bonn"]
    assert mine.memory.refresh() == 0
    handle.rollback()
    assert mine.memory.refresh() == 1 and mine.explain(edit.text)["answered_by"] == "base"


# --------------------------------------------------------------------------- statements
STATEMENTS = ["The Eiffel Tower is in Rome.", "Der Eiffelturm steht in Rom.", "埃菲尔铁塔位于罗马。"]


@pytest.mark.parametrize("text", STATEMENTS)
def test_rp_edits_with_a_statement_read_in_its_prompt(text, tmp_path):
    """A statement (in any language) is the descriptor z_e: embedded for the scope, read by the answerer as
    ``statement\ninput``; it is stored verbatim, explained, saved and loaded again."""
    lm = tiny_model("llama")
    statement = EditRequest.statement(text)
    handle = _rp(threshold=0.0).apply(lm, [statement])
    routed = handle.model
    assert _greedy(routed, [FAR]) == lm.generate_ids([f"{text}\n{FAR}"], 3)
    explained = routed.explain(FAR)
    assert explained["answered_by"] == "edit" and explained["descriptor"] == text
    assert [r.descriptor for r in routed.memory.store.active()] == [text]
    handle.save(tmp_path / "edit")
    loaded = EditHandle.load(tmp_path / "edit", tiny_model("llama"))
    assert loaded.requests == [statement] and _greedy(loaded.model, [FAR]) == _greedy(routed, [FAR])
    # the same statement again is a duplicate, not a second edit
    assert _rp(threshold=0.0).apply(lm, [statement, statement]).info["duplicates"] == 1
