"""SEPROG on tiny models: the prefix reaches the frozen model where it should, the selection and the classifier
are eqs. 2-3, the index preselects, bad inputs, and its trainer (resumable, the ablations, a loss that falls)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_tiny_cases
from editkit.data import load_cases
from editkit.editors import create_editor
from editkit.editors.memory import descriptor_of
from editkit.editors.scope import EmbedScope
from editkit.editors.seprog import PART, base_encoding, leading_tokens, prefixed_logits
from editkit.edits import EditRequest
from editkit.errors import ConfigError, ValidationError
from editkit.evaluation.scope import scope_breakdown
from editkit.models.tiny import tiny_model
from editkit.training.registry import create_trainer
from learned_parts import SEPROG_TINY, seprog_parts  # noqa: F401  (fixture)

EDITS = [
    EditRequest(prompt="The city of {}", subject="the Eiffel Tower", target_new=" Rome"),
    EditRequest(prompt="{} plays the sport of", subject="Michael Jordan", target_new=" tennis"),
    EditRequest(prompt="The capital of {} is", subject="France", target_new=" Lyon"),
]
PROMPTS = ["The city of the Eiffel Tower", "Michael Jordan plays the sport of"]


def _editor(folder: Path, **settings):
    return create_editor("seprog", {"artifacts": str(folder), "encoder": "tiny-bert", "threshold": 0.0, **settings})


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
def test_prefix_of_token_embeddings_equals_those_tokens_in_the_input(arch):
    """A prefix made of real tokens' embeddings gives the logits of the sequence with those tokens inserted
    (decoder-only: after the leading tokens; T5: at the start of the decoder input)."""
    lm = tiny_model(arch)
    inserted = [5, 9, 14]
    prompt, cont = lm.encode("ab cd ef"), lm.encode(" gh ij", special=False)
    prefix = lm.model.get_input_embeddings()(torch.tensor([inserted]))
    got = prefixed_logits(lm, [prompt], [cont], prefix, torch.arange(len(cont) + 1)[None, :])
    with torch.no_grad():
        if lm.is_encoder_decoder:
            dec = [*inserted, int(lm.config.decoder_start_token_id), *cont]
            out = lm.model(input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([dec])).logits
            want = out[0, len(inserted) :]
        else:
            lead = leading_tokens(lm)
            seq = [*prompt[:lead], *inserted, *prompt[lead:], *cont]
            out = lm.model(input_ids=torch.tensor([seq])).logits
            start = len(prompt) + len(inserted) - 1
            want = out[0, start : start + len(cont) + 1]
    torch.testing.assert_close(got[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2", "t5"])
def test_answerer_generation_scoring_and_next_token_agree(arch, seprog_parts):  # noqa: F811
    lm = tiny_model(arch)
    model = _editor(seprog_parts(arch)).apply(lm, EDITS).model
    assert all(model.explain(p)["answered_by"] == "edit" for p in PROMPTS)
    # prompts of different lengths (left padding, positions), several tokens (the key / value cache)
    generated = model.generate_ids(PROMPTS, max_new_tokens=6)
    assert all(len(g) == 6 for g in generated) and len({len(lm.encode(p)) for p in PROMPTS}) > 1
    scores = model.score_tokens(PROMPTS, generated, first_distribution=True)
    assert all(s.exact_match for s in scores), "greedy generation is not what scoring calls greedy"
    nxt = model.next_token_logprobs(PROMPTS)
    torch.testing.assert_close(nxt, torch.stack([s.first_distribution for s in scores]), rtol=1e-4, atol=1e-4)
    base = lm.next_token_logprobs(PROMPTS)
    assert not torch.allclose(nxt, base), "the prefix changed nothing"


@pytest.mark.parametrize("index_weight", [0.0, 5.0])
def test_route_is_the_most_attended_edit_with_the_classifiers_score(seprog_parts, index_weight):  # noqa: F811
    """Eqs. 2-3 by hand over all three edits, with the index's squared distances (recomputed from the encoder's
    vectors) times -index_weight added to the attention logits."""
    lm = tiny_model("llama")
    editor = _editor(seprog_parts("llama"), candidates=3, index_weight=index_weight)
    model = editor.apply(lm, EDITS).model
    scope = model.memory.scope
    net = scope.net
    records = model.memory.records()
    keys = net.edit_keys(scope.index.encoder.embed([r.descriptor for r in records]))
    b = base_encoding(lm, PROMPTS)
    queries = torch.from_numpy(scope.query_vectors(PROMPTS)).float()
    edits = torch.from_numpy(scope.edit_vectors([r.request for r in records])).float()
    prior = -index_weight * torch.cdist(queries, edits).pow(2)
    with torch.no_grad():
        h, attn = net.select(b, keys.expand(2, -1, -1), torch.ones((2, 3), dtype=torch.bool), prior)
        e = torch.sigmoid(net.in_scope_logit(h, b))
    ids = [r.id for r in model.memory.records()]
    for i, p in enumerate(PROMPTS):
        route = model.explain(p)
        assert route["edit_id"] == ids[int(attn[i].argmax())]
        assert route["scope_score"] == pytest.approx(float(e[i]), abs=1e-5)
        torch.testing.assert_close(scope.context([p])[0], h[i], rtol=1e-5, atol=1e-5)


def test_index_preselects_the_candidates_the_attention_reads(seprog_parts):  # noqa: F811
    """With one candidate, h(x) is the key of the input's nearest edit under the raw encoder."""
    lm = tiny_model("llama")
    model = _editor(seprog_parts("llama"), candidates=1).apply(lm, EDITS).model
    scope = model.memory.scope
    nearest = model.memory.index.search(scope.query_vectors(PROMPTS), 1)[1][:, 0]
    by_id = {r.id: r for r in model.memory.records()}
    model.route(PROMPTS)
    for p, i in zip(PROMPTS, nearest, strict=True):
        key = scope.net.edit_keys(scope.index.encoder.embed([by_id[int(i)].descriptor]))[0]
        torch.testing.assert_close(scope.context([p])[0], key)


def test_select_false_always_prefixes_and_threshold_one_never(seprog_parts):  # noqa: F811
    lm = tiny_model("llama")
    always = _editor(seprog_parts("llama"), select=False, threshold=0.99).apply(lm, EDITS).model
    assert all(always.explain(p)["scope_score"] == 1.0 for p in PROMPTS)
    never = _editor(seprog_parts("llama"), threshold=1.0).apply(tiny_model("llama"), EDITS).model
    assert all(never.explain(p)["answered_by"] == "base" for p in PROMPTS)


def test_scope_breakdown_reads_e_of_x_and_the_prefixed_answers(tmp_path, seprog_parts):  # noqa: F811
    """benchmarks/serac_scope.py --method seprog: e(x) with the most attended edit is the classifier, the base model
    reading the prefix and the own edit's words the answerer."""
    lm = tiny_model("llama")
    cases = load_cases(write_tiny_cases(tmp_path / "cases.jsonl")).cases
    out = scope_breakdown(lm, _editor(seprog_parts("llama")), cases, 3, thresholds=[0.0, 1.01], progress=False)
    assert out["groups"] == 2 and out["probes"] == {"in_easy": 12, "out_easy": 6}
    by_threshold = out["classifier_accuracy_by_threshold"]
    routed_all, routed_none = by_threshold["0.0"], by_threshold["1.01"]
    assert routed_all["out_easy"] == 0.0 and routed_none == {"in_easy": 0.0, "out_easy": 1.0}
    # the answerer's in-scope accuracy, against the prefixed model's exact match computed here
    editor = _editor(seprog_parts("llama"))
    hits = []
    for group in (cases[:3], cases[3:]):
        handle = editor.apply(lm, [c.request for c in group])
        model = handle.model
        records = [model.memory.store.get(i) for i in handle.record_ids]
        probes = [(r, p) for r, c in zip(records, group, strict=True) for p in c.probes if p.kind.in_scope]
        model.memory.lookup([p.prompt for c in group for p in c.probes])
        scores = model.answerer.score_tokens(
            [(r, p.prompt) for r, p in probes],
            [lm.encode(p.expected, special=False) for _, p in probes],
            batch_size=4,
            first_distribution=False,
        )
        hits += [float(s.exact_match) for s in scores]
        handle.rollback()
    assert out["answerer_accuracy"]["in_easy"] == pytest.approx(sum(hits) / len(hits))


def test_serac_router_routes_by_seracs_classifier_and_reads_its_best_edits_key(seprog_parts, serac_parts):  # noqa: F811
    lm = tiny_model("llama")
    routed = _editor(seprog_parts("llama"), router="serac", router_artifacts=str(serac_parts), threshold=0.5)
    model = routed.apply(lm, EDITS).model
    scope, memory = model.memory.scope, model.memory
    serac = EmbedScope.load(serac_parts / "scope-embed", "tiny-bert")
    texts = [*PROMPTS, "An unrelated question about rivers"]
    # independently: the classifier's probability of each edit from its own embeddings
    edits = serac.encoder.embed([descriptor_of(r) for r in EDITS])
    inputs = serac.encoder.embed(texts)
    probs = serac.probabilities(torch.cdist(inputs, edits).pow(2).numpy())
    for text, row in zip(texts, probs, strict=True):
        route = model.route([text])[0]
        best = int(row.argmax())
        assert route.score == pytest.approx(float(row[best]), abs=1e-5)
        assert (route.record is not None) == (row[best] >= 0.5)
        key = scope.net.edit_keys(scope.index.encoder.embed([descriptor_of(EDITS[best])]))[0]
        torch.testing.assert_close(scope.context([text])[0], key)
    assert scope.space == serac.space and memory.scope.dim == serac.dim
    assert any(name.startswith("router:") for name in routed.provenance())


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"router": "serac", "select": False}, "replaces e"), ({"router_artifacts": "x"}, "only with router: serac")],
)
def test_bad_router_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        create_editor("seprog", settings)


def test_empty_memory_answers_as_the_base_model(seprog_parts):  # noqa: F811
    lm = tiny_model("llama")
    editor = _editor(seprog_parts("llama"))
    handle = editor.apply(lm, EDITS[:1])
    handle.rollback()
    model = handle.model
    assert len(model.memory) == 0 and model.explain(PROMPTS[0]) == {"answered_by": "base", "best_scope_score": 0.0}
    torch.testing.assert_close(model.next_token_logprobs(PROMPTS), lm.next_token_logprobs(PROMPTS))


def test_descriptor_longer_than_the_encoder_window_is_truncated_for_its_key(seprog_parts):  # noqa: F811
    lm = tiny_model("llama")
    long = " ".join(["tower"] * 300)
    a = EditRequest(prompt="The city of x", target_new=" Rome", descriptor=long + " Rome")
    b = EditRequest(prompt="The city of y", target_new=" Paris", descriptor=long + " Paris")
    model = _editor(seprog_parts("llama")).apply(lm, [a, b]).model
    keys = model.memory.scope.edit_vectors([a, b])
    assert len(model.memory) == 2
    torch.testing.assert_close(torch.from_numpy(keys[0]), torch.from_numpy(keys[1]))


def test_parts_for_another_base_model_are_refused_naming_both(seprog_parts):  # noqa: F811
    editor = _editor(seprog_parts("llama"))
    gpt2 = tiny_model("gpt2")
    with pytest.raises(ValidationError, match=r"tiny-llama-s0, not tiny-gpt2-s0"):
        editor.apply(gpt2, EDITS[:1])


def _train(tmp_path: Path, name: str, **settings) -> Path:
    data = write_tiny_cases(tmp_path / "cases.jsonl")
    out = tmp_path / name
    where = {"data": [str(data)], "out": str(out), "base_model": "tiny-llama"}
    create_trainer("seprog", {**SEPROG_TINY, **where, **settings}).train(progress=False)
    return out


def test_training_resumes_bit_for_bit(tmp_path):
    whole = _train(tmp_path, "whole", steps=4, checkpoint_every=2)
    _train(tmp_path, "parts", steps=2, checkpoint_every=2)
    resumed = _train(tmp_path, "parts", steps=4, checkpoint_every=2)
    a, b = load_file(str(whole / PART / "weights.safetensors")), load_file(str(resumed / PART / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_lowers_the_loss_and_sp_noclassifier_has_no_classifier(tmp_path):
    full = _train(tmp_path, "full", steps=30, lr=1e-2, checkpoint_every=30, lam=0.5)
    import json

    meta = json.loads((full / "manifest.json").read_text())["parts"][PART]
    assert meta["loss_last20_mean"] < meta["loss_first"]
    ablated = _train(tmp_path, "noclf", classifier=False)
    assert not any(k.startswith("classifier") for k in load_file(str(ablated / PART / "weights.safetensors")))
    model = _editor(ablated, threshold=0.99).apply(tiny_model("llama"), EDITS).model
    assert all(model.explain(p)["scope_score"] == 1.0 for p in PROMPTS)


def test_base_encoding_reports_its_progress_and_the_same_values(capsys):
    lm = tiny_model("llama")
    quiet = base_encoding(lm, PROMPTS * 3, batch_size=4)
    assert capsys.readouterr().err == ""
    shown = base_encoding(lm, PROMPTS * 3, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "b(x) of the inputs" in err and "6/6" in err
    torch.testing.assert_close(shown, quiet, rtol=0, atol=0)


def test_a_rerun_reuses_the_training_features(tmp_path, monkeypatch):
    _train(tmp_path, "run", steps=2, checkpoint_every=2)
    import editkit.training.seprog as training

    def refuse(*args, **kwargs):
        raise AssertionError("b(x) recomputed")

    monkeypatch.setattr(training, "base_encoding", refuse)
    _train(tmp_path, "run", steps=3, checkpoint_every=3)
    with pytest.raises(AssertionError, match="recomputed"):
        _train(tmp_path, "run", steps=3, checkpoint_every=3, max_cases=4)  # other inputs: recomputed


def test_descriptor_parts_read_the_routed_edits_words_after_the_prefix(tmp_path):
    """reads: descriptor: an input routed to an edit is scored as the frozen model reading the generated prefix,
    then the edit's descriptor and the input through the template (checked against prefixed_logits of that text);
    the same input under vector parts reads the input alone."""
    folder = _train(tmp_path, "reads", reads="descriptor", template="{edit} | {input}", pair_features=True)
    lm = tiny_model("llama")
    model = _editor(folder).apply(lm, EDITS).model
    route = model.memory.lookup(PROMPTS[:1])[0]
    cont = lm.encode(" Rome", special=False)
    got = model.score_tokens(PROMPTS[:1], [cont])[0].logprobs
    scope = model.memory.scope
    prefix = scope.net.prefix(scope.context(PROMPTS[:1]))
    text = f"{route.record.descriptor} | {PROMPTS[0]}"
    positions = torch.arange(len(cont))[None, :]
    with torch.no_grad():
        logits = prefixed_logits(lm, [lm.encode(text)], [cont], prefix, positions)
    want = torch.log_softmax(logits[0].float(), -1).gather(-1, torch.tensor(cont)[:, None]).squeeze(-1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert scope.net.read("z", "x") == "z | x"
    vector = _train(tmp_path, "vector")
    assert _editor(vector).load_parts(lm).read("z", "x") == "x"


def test_pair_features_add_the_product_of_h_and_the_query_to_nn_e(tmp_path):
    from editkit.editors.seprog import PromptGenerator

    spec = {"enc_dim": 6, "base_dim": 5, "hidden": 4, "prefix_len": 2, "embed_dim": 3, "classifier": True}
    net = PromptGenerator({**spec, "scale": 1.0, "pair_features": True})
    h, base = torch.randn(3, 4), torch.randn(3, 5)
    normed = torch.nn.functional.layer_norm(base, (5,))
    feats = torch.cat([h, normed, h * (normed @ net.w_att.weight.T)], -1)
    first, _, last = net.classifier
    want = (torch.relu(feats @ first.weight.T + first.bias) @ last.weight.T + last.bias).squeeze(-1)
    torch.testing.assert_close(net.in_scope_logit(h, base), want)
    assert PromptGenerator({**spec, "scale": 1.0}).classifier[0].in_features == 4 + 5


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"reads": "words"}, "reads must be vector or descriptor"),
        ({"reads": "descriptor", "template": "{edit}"}, "needs both"),
        ({"select_weight": -1.0}, "select_weight"),
    ],
)
def test_bad_reading_settings_are_refused(tmp_path, settings, message):
    from editkit.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _train(tmp_path, "bad", **settings)


def test_the_selection_loss_teaches_eq2_to_pick_each_inputs_own_edit(tmp_path):
    """Trained with a dominant selection term, eq. 2's attention over the six training edits picks each edit
    prompt's own edit for more of them than the same training without it (and than chance)."""
    from editkit.editors.memory import descriptor_of
    from editkit.models.encoder import SentenceEncoder
    from editkit.training.loop import training_cases

    def own_edit_hits(folder: Path) -> int:
        lm = tiny_model("llama")
        net = _editor(folder).load_parts(lm)
        cases, _ = training_cases([str(tmp_path / "cases.jsonl")], None)
        keys = net.edit_keys(SentenceEncoder.load("tiny-bert").embed([descriptor_of(c.request) for c in cases]))
        base = base_encoding(lm, [c.request.text for c in cases])
        _, attn = net.select(base, keys.expand(len(cases), -1, -1), torch.ones(len(cases), len(cases), dtype=bool))
        return int((attn.argmax(-1) == torch.arange(len(cases))).sum())

    common = {"steps": 60, "lr": 3e-2, "checkpoint_every": 60, "batch": 6}
    plain = own_edit_hits(_train(tmp_path, "plain", **common))
    chosen = own_edit_hits(_train(tmp_path, "sel", select_weight=20.0, **common))
    assert chosen > max(plain, 1), (chosen, plain)


def test_nearest_edits_are_the_top_cosines_without_the_edit_itself():
    from editkit.training.seprog import nearest_edits

    encoded = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.4], [-1.0, 0.2]])
    unit = encoded / encoded.norm(dim=-1, keepdim=True)
    for i, near in enumerate(nearest_edits(encoded, 2)):
        others = sorted((j for j in range(5) if j != i), key=lambda j: -float(unit[i] @ unit[j]))
        assert near == others[:2]
    assert nearest_edits(encoded, 0) == [[]] * 5


def test_training_with_distractors_attends_over_them(tmp_path):
    folder = _train(tmp_path, "near", reads="descriptor", select_weight=1.0, distractors=2, steps=2, checkpoint_every=2)
    assert (folder / PART / "weights.safetensors").is_file()


def test_index_weight_makes_the_attention_follow_the_index(seprog_parts):  # noqa: F811
    """With a dominant index prior each input's route is the index's nearest edit, which eq. 2 alone need not pick;
    a negative weight is refused."""
    import numpy as np

    lm = tiny_model("llama")
    model = _editor(seprog_parts("llama"), candidates=3, index_weight=1e4).apply(lm, EDITS).model
    texts = [*PROMPTS, "The capital of France is", "something else entirely"]
    memory = model.memory
    _, ids = memory.index.search(memory.scope.query_vectors(texts).astype(np.float32), 1)
    nearest = [memory._records[int(row[0])].id for row in ids]
    assert [r.record.id for r in memory.lookup(texts)] == nearest
    alone = _editor(seprog_parts("llama"), candidates=3, index_weight=0.0).apply(tiny_model("llama"), EDITS)
    alone = alone.model.memory
    assert [r.record.id for r in alone.lookup(texts)] != nearest, "eq. 2 alone follows the index here: no test"
    from editkit.errors import ConfigError

    with pytest.raises(ConfigError, match="index_weight"):
        _editor(seprog_parts("llama"), index_weight=-1.0)


def test_sp_finetune_trains_the_top_blocks_and_answers_with_a_copy_holding_them(tmp_path):
    """SP-FINETUNE: the top block's weights learn beside the generator (resumable bit for bit) and are written as
    a second part; the editor answers with a copy of the base model holding them, shares every other weight
    with it, and leaves the user's model as it was."""
    from editkit.editors.seprog import FINETUNED

    settings = {"finetune_layers": 1, "finetune_lr": 1e-2, "steps": 4, "checkpoint_every": 2}
    whole = _train(tmp_path, "whole", **settings)
    _train(tmp_path, "parts", **{**settings, "steps": 2})
    resumed = _train(tmp_path, "parts", **settings)
    import json

    parts = json.loads((whole / "manifest.json").read_text())["parts"]
    assert parts[FINETUNED]["steps"] == parts[PART]["steps"] == 4  # what `editkit train` reports of each part
    tuned = load_file(str(whole / FINETUNED / "weights.safetensors"))
    again = load_file(str(resumed / FINETUNED / "weights.safetensors"))
    assert tuned.keys() == again.keys() and all(torch.equal(tuned[k], again[k]) for k in tuned)

    lm = tiny_model("llama")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    n = lm.adapter.n_layers(lm.model)
    top = {k for k in before if f".{n - 1}." in k}
    assert set(tuned) == top and any(not torch.equal(tuned[k], before[k]) for k in top)

    editor = _editor(whole, threshold=1.0)  # nothing routed to an edit: every answer is the copy's own
    model = editor.apply(lm, EDITS).model
    assert all(torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())
    copied = dict(model.base.model.named_parameters())
    for name, p in lm.model.named_parameters():
        assert (copied[name] is p) == (name not in tuned)
    for name, t in tuned.items():
        assert torch.equal(copied[name], t)
    got = model.score_tokens(PROMPTS, [" Rome", " tennis"])
    want = model.base.score_tokens(PROMPTS, [" Rome", " tennis"])
    assert all(torch.equal(a.logprobs, b.logprobs) for a, b in zip(got, want, strict=True))
    frozen = lm.score_tokens(PROMPTS, [" Rome", " tennis"])
    assert not all(torch.equal(a.logprobs, b.logprobs) for a, b in zip(got, frozen, strict=True))
    assert set(editor.provenance()) == {f"{PART}:{lm.name}", f"{FINETUNED}:{lm.name}"}
    with pytest.raises(Exception, match="finetune_layers"):
        _train(tmp_path, "bad", finetune_layers=-1)


def test_input_features_add_h_times_the_input_through_the_edit_encoder():
    from editkit.editors.seprog import PromptGenerator

    spec = {"enc_dim": 6, "base_dim": 5, "hidden": 4, "prefix_len": 2, "embed_dim": 3, "classifier": True}
    net = PromptGenerator({**spec, "scale": 1.0, "input_features": True})
    h, base, encoded = torch.randn(3, 4), torch.randn(3, 5), torch.randn(3, 6)
    normed = torch.nn.functional.layer_norm(base, (5,))
    through = torch.tanh(encoded @ net.edit_head.weight.T + net.edit_head.bias)
    feats = torch.cat([h, normed, h * through], -1)
    first, _, last = net.classifier
    want = (torch.relu(feats @ first.weight.T + first.bias) @ last.weight.T + last.bias).squeeze(-1)
    torch.testing.assert_close(net.in_scope_logit(h, base, encoded), want)
    with pytest.raises(ValidationError, match="embedding of the input"):
        net.in_scope_logit(h, base)


def test_parts_with_input_features_route_with_the_inputs_encoding(tmp_path):
    """The editor gives e(x) the sentence encoder's embedding of each input: the route's score is eq. 3 computed
    by hand with it."""
    folder = _train(tmp_path, "inputs", input_features=True, lam=0.5)
    lm = tiny_model("llama")
    model = _editor(folder, candidates=3, index_weight=0.0).apply(lm, EDITS).model
    scope = model.memory.scope
    net = scope.net
    keys = net.edit_keys(scope.index.encoder.embed([r.descriptor for r in model.memory.records()]))
    b = base_encoding(lm, PROMPTS)
    with torch.no_grad():
        h, _ = net.select(b, keys.expand(2, -1, -1), torch.ones((2, 3), dtype=torch.bool))
        e = torch.sigmoid(net.in_scope_logit(h, b, scope.index.encoder.embed(PROMPTS)))
    for i, p in enumerate(PROMPTS):
        assert model.explain(p)["scope_score"] == pytest.approx(float(e[i]), abs=1e-5)


def test_noise_sentences_undo_wikitext_and_each_input_gains_one_noisy_copy(tmp_path):
    from editkit.training.seprog import Example, noise_sentences, with_noise

    text = tmp_path / "wiki.txt"
    text.write_text(
        " = Heading of the page here = \n"
        " The mill was built in 1 @,@ 820 to grind wheat . It had a <unk> wheel of some size . Too short .\n"
        " A well @-@ known tower stood on the hill above the town .\n",
        encoding="utf-8",
    )
    sentences = noise_sentences(str(text))
    assert sentences == [
        "The mill was built in 1,820 to grind wheat.",
        "A well-known tower stood on the hill above the town.",
    ]
    examples = [Example("d", (("x1", "y1"), ("x2", "y2")), ("o1",)), Example("e", (("x3", "y3"),), ())]
    noisy = with_noise(examples, sentences, seed=0)
    assert noisy == with_noise(examples, sentences, seed=0)
    assert noisy[0].inside[:2] == examples[0].inside and len(noisy[0].inside) == 4
    for (x, y), (nx, ny) in zip(examples[0].inside, noisy[0].inside[2:], strict=True):
        assert ny == y and any(nx == f"{s} {x}" for s in sentences)
    assert len(noisy[0].outside) == 2 and noisy[0].outside[1].endswith(". o1")
    assert noisy[1].outside == ()
    with pytest.raises(ValidationError, match="no sentence"):
        noise_sentences(_empty(tmp_path))


def _empty(tmp_path: Path) -> str:
    path = tmp_path / "empty.txt"
    path.write_text(" = Only a heading = \n", encoding="utf-8")
    return str(path)


def test_noise_text_trains_on_the_noisy_copies_and_records_the_file(tmp_path):
    import json

    text = tmp_path / "wiki.txt"
    text.write_text(" The river runs past the old mill to the sea .\n", encoding="utf-8")
    folder = _train(tmp_path, "noisy", noise_text=str(text), steps=2, checkpoint_every=2)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["config"]["noise_text"] == str(text)
    cached = torch.load(folder / ".checkpoints" / "features.pt", weights_only=True)
    plain = _train(tmp_path, "plain", steps=2, checkpoint_every=2)
    cached_plain = torch.load(plain / ".checkpoints" / "features.pt", weights_only=True)
    assert len(cached["inputs"]) == 2 * len(cached_plain["inputs"]) == len(cached["base"])
    with pytest.raises(ValidationError, match="not a file"):
        _train(tmp_path, "missing", noise_text=str(tmp_path / "nope.txt"))


def test_the_packaged_parts_are_train_seprog_reads_yaml_on_training_splits_packed_int8():
    """What ships in editkit/artifacts/seprog: verified for SmolLM2-135M, trained with the settings of
    benchmarks/configs/train_seprog_reads.yaml on training splits, stored as int8 rows (3 MB)."""
    import yaml

    from conftest import REPO
    from editkit.trained import PACKAGED, verify
    from editkit.training.seprog import SEPROGTrainConfig

    folder = PACKAGED / "seprog"
    manifest = verify(folder, [PART], base_model="smollm2-135m")
    assert manifest["parts"][PART]["dtype"] == "int8"
    assert (folder / PART / "weights.safetensors").stat().st_size < 3.5e6
    config = yaml.safe_load((REPO / "benchmarks" / "configs" / "train_seprog_reads.yaml").read_text())
    trained = dict(manifest["config"])
    assert all("train" in Path(d["path"]).name for d in manifest["data"])
    for key in ("out", "threads"):  # where it went and how many threads are the trainer's, not the recipe's
        config.pop(key), trained.pop(key)
    assert SEPROGTrainConfig.from_dict(trained) == SEPROGTrainConfig.from_dict(config)
