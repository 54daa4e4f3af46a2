"""The contract every registered editor must keep, on several architectures."""

import json

import pytest
import torch

from editkit.editors import available_methods, create_editor, get_editor_class
from editkit.editors.handle import EditHandle, pack_tensor, unpack_tensor
from editkit.edits import EditRequest
from editkit.errors import ValidationError
from editkit.models.tiny import tiny_model
from editkit.training.registry import available_trainers
from learned_parts import arch_of, enn_parts, ke_parts, mend_parts, seprog_parts  # noqa: F401  (fixtures of the learned editors' tiny parts)

ARCHS = ["llama", "gpt2", "gemma3", "gptj", "gpt_neox", "t5"]
REQUEST = EditRequest(prompt="The city of {}", subject="the Eiffel Tower", target_new=" Rome")
PROBES = ["The city of the Eiffel Tower", "Michael Jordan plays the sport of"]

# Small, fast settings; every method must still change its model with them.
LOCATE = {"v_steps": 4, "n_context": 2, "context_length": 3, "v_weight_decay": 0.0, "clamp_norm_factor": 1e4}
FAST = {
    "rome": LOCATE,
    "memit": {**LOCATE, "mom2_update_weight": 1e-3},
    # tiny models' keys are small: a small alpha
    "alphaedit": {**LOCATE, "mom2_n_tokens": 2000, "nullspace_threshold": 0.05, "l2": 1e-4},
    "ft": {"steps": 3, "lr": 1e-2},
    "ft-c": {"steps": 3, "lr": 1e-2, "radius": 1e-2},
    "lu": {"delta": 1e-3},
    # threshold 0: every input goes to its nearest edit, so even untrained tiny parts change outputs
    "rp": {"scope": "embed-untrained", "encoder": "tiny-bert", "threshold": 0.0},
    "serac": {"encoder": "tiny-bert", "threshold": 0.0},
    "enn": {"steps": 1},
    "ke": {"scale": 1.0},
    # p 0: every neuron above t x the largest of either prompt
    "kn": {"steps": 4, "n_context": 1, "context_length": 3, "p": 0.0},
    "seprog": {"encoder": "tiny-bert", "threshold": 0.0},
}
WEIGHT_METHODS = [m for m in available_methods() if get_editor_class(m).capabilities.storage == "weights"]


@pytest.fixture
def _editor(request):
    def make(name):
        settings = dict(FAST.get(name, {}))
        if name == "serac":
            settings["artifacts"] = str(request.getfixturevalue("serac_parts"))
        if name == "mend":
            settings["artifacts"] = request.getfixturevalue("mend_parts")
        if name == "enn":
            settings["artifacts"] = str(request.getfixturevalue("enn_parts")(arch_of(request)))
        if name == "ke":
            settings["artifacts"] = str(request.getfixturevalue("ke_parts")(arch_of(request)))
        if name == "seprog":
            settings["artifacts"] = str(request.getfixturevalue("seprog_parts")(arch_of(request)))
        if name == "alphaedit":
            settings["corpus"] = str(request.getfixturevalue("tiny_corpus"))
        return create_editor(name, settings)

    return make


def _snapshot(lm):
    return {n: p.detach().clone() for n, p in lm.model.named_parameters()}


def _logits(lm):
    """What the model says on the probes, through the surface evaluation reads: per-token log-probabilities of
    two continuations and the whole next-token distribution."""
    scores = lm.score_tokens(PROBES, [" Rome", " tennis"], first_distribution=True)
    return torch.cat([torch.cat([s.logprobs, s.first_distribution]) for s in scores])


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


@pytest.mark.parametrize("method", available_methods())
def test_rollback_is_bit_exact_and_only_declared_parameters_change(method, arch, _editor):
    lm = tiny_model(arch)
    before = _snapshot(lm)
    outputs = _logits(lm)
    handle = _editor(method).apply(lm, [REQUEST])
    after = _snapshot(lm)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed <= set(handle.changes), f"undeclared changes: {changed - set(handle.changes)}"
    assert not torch.equal(_logits(handle.model), outputs), f"{method} changed no output on {arch}"
    if get_editor_class(method).capabilities.storage == "weights":
        assert changed, f"{method} changed nothing on {arch}"
        assert handle.summary()["parameters"], "summary lists no parameters"
    else:
        assert not changed, "a memory editor changed the base model's weights"
        assert handle.summary()["memory"]["records"], "summary lists no memory records"
    handle.rollback()
    for n, p in lm.model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} not restored bit-exactly"
    assert torch.equal(_logits(handle.model), outputs), "outputs not restored exactly"


@pytest.mark.parametrize("method", available_methods())
def test_save_load_reproduces_edited_logits(method, arch, tmp_path, _editor):
    lm = tiny_model(arch)
    handle = _editor(method).apply(lm, [REQUEST])
    edited = _logits(handle.model)
    handle.save(tmp_path / "edit")
    fresh = tiny_model(arch)
    loaded = EditHandle.load(tmp_path / "edit", fresh)
    assert torch.equal(_logits(loaded.model), edited)
    assert loaded.requests == [REQUEST]
    if get_editor_class(method).capabilities.storage == "weights":
        with pytest.raises(ValidationError, match="different"):
            EditHandle.load(tmp_path / "edit", fresh)  # already edited: the originals no longer match


@pytest.mark.parametrize("method", WEIGHT_METHODS)
def test_failure_inside_an_edit_leaves_no_trace(method, arch, monkeypatch, _editor):
    lm = tiny_model(arch)
    before = _snapshot(lm)
    grad_flags = {n: p.requires_grad for n, p in lm.model.named_parameters()}
    layers = list(lm.adapter.layer_list(lm.model))
    calls = {"n": 0}
    real = type(lm).logits_at

    def failing(self, inputs, index):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise RuntimeError("injected failure")
        return real(self, inputs, index)

    editor = _editor(method)  # first: a fixture that trains parts must not meet the injected failure
    monkeypatch.setattr(type(lm), "logits_at", failing)
    with pytest.raises(RuntimeError, match="injected"):
        editor.apply(lm, [REQUEST])
    monkeypatch.undo()
    assert calls["n"] >= 2, "the failure was never injected"
    for n, p in lm.model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} changed by a failed edit"
        assert p.requires_grad == grad_flags[n]
        assert p.grad is None
    for name, module in lm.model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, f"hook left on {name}"
    assert list(lm.adapter.layer_list(lm.model)) == layers, "layers not restored"
    assert torch.is_grad_enabled()
    assert not lm.model.training


@pytest.mark.parametrize("method", [m for m in available_methods() if m not in WEIGHT_METHODS])
def test_failure_inside_a_memory_edit_stores_nothing(method, monkeypatch, _editor):
    lm = tiny_model("llama")
    editor = _editor(method)
    model = editor.routed(lm)
    outputs = _logits(model)

    def failing(requests):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(model.memory.scope, "edit_vectors", failing)
    with pytest.raises(RuntimeError, match="injected"):
        editor.apply(lm, [REQUEST])
    assert len(model.memory) == 0 and not model.memory.store.journal()
    assert torch.equal(_logits(model), outputs)


@pytest.mark.parametrize("method", available_methods())
def test_temporary_edit_context_rolls_back(method, _editor):
    lm = tiny_model("llama")
    before = _logits(lm)
    editor = _editor(method)
    editor.prepare(lm)  # optional precomputation must not change the model
    assert torch.equal(_logits(lm), before)
    with editor.edited(lm, [REQUEST]) as model:
        assert not torch.equal(_logits(model), before)
    assert torch.equal(_logits(lm), before)


def test_rollback_refuses_to_discard_a_later_edit(_editor):
    lm = tiny_model("llama")
    first = _editor("ft").apply(lm, [REQUEST])
    second = _editor("ft").apply(lm, [EditRequest(prompt="Rome is in", target_new=" France")])
    with pytest.raises(ValidationError, match="roll back later edits first"):
        first.rollback()
    second.rollback()
    first.rollback()


@pytest.mark.parametrize("method", available_methods())
def test_replay_from_the_record_remakes_a_sequence_of_edits_bit_for_bit(method, arch, _editor):
    second = EditRequest(prompt="{} plays the sport of", subject="Michael Jordan", target_new=" tennis")
    lm = tiny_model(arch)
    editor = _editor(method)
    if not get_editor_class(method).capabilities.replay:
        with pytest.raises(ValidationError, match="cannot apply an edit again"):
            editor.replay(lm, [REQUEST], {})
        return
    # what a sequential run writes down: each edit's info["replay"], through JSON
    recorded = [json.loads(json.dumps(editor.apply(lm, [r]).info["replay"])) for r in (REQUEST, second)]
    edited = _snapshot(lm)
    fresh = tiny_model(arch)
    again = _editor(method)
    handles = [again.replay(fresh, [r], rec) for r, rec in zip((REQUEST, second), recorded, strict=True)]
    for n, p in fresh.model.named_parameters():
        assert torch.equal(p, edited[n]), f"{n} differs after replay"
    assert all(h.info["replayed"] for h in handles)
    assert handles[1].info["replay"] == recorded[1]  # a replayed edit can be replayed in turn
    # the record, not a new search, makes the change: the other edit's record gives another change
    swapped = tiny_model(arch)
    _editor(method).replay(swapped, [REQUEST], recorded[1])
    first = tiny_model(arch)
    _editor(method).apply(first, [REQUEST])
    pairs = zip(swapped.model.parameters(), first.model.parameters(), strict=True)
    assert any(not torch.equal(p, q) for p, q in pairs)
    with pytest.raises(ValidationError, match="holds no"):
        again.replay(tiny_model(arch), [REQUEST], {})


def test_every_editor_with_trained_parts_has_a_trainer_of_its_name():
    trained = {m for m in available_methods() if get_editor_class(m).capabilities.trained}
    assert {"serac", "toy"} <= trained
    assert trained <= set(available_trainers()), f"no trainer for {sorted(trained - set(available_trainers()))}"


def test_packed_tensors_round_trip_bit_for_bit_and_bad_ones_are_refused():
    t = torch.randn(3, 4)
    t[0, :4] = torch.tensor([float("nan"), float("inf"), -0.0, 1e-45])  # NaN, infinity, signed zero, subnormal
    back = unpack_tensor(json.loads(json.dumps(pack_tensor(t))))
    assert back.shape == t.shape and torch.equal(back.view(torch.int32), t.view(torch.int32))
    data = pack_tensor(t)["float32"]
    for bad in ({"shape": [3, 4]}, {"shape": [5], "float32": data}, {"shape": [1], "float32": "%"}):
        with pytest.raises(ValidationError, match="not a packed tensor"):
            unpack_tensor(bad)


@pytest.mark.parametrize("method", available_methods())
@pytest.mark.parametrize("words", [24, 5000])
def test_a_long_target_is_edited_and_rolled_back_or_refused_leaving_the_model_untouched(method, words, _editor):
    """A target of many tokens either takes (and rolls back bit for bit) or, past the model's context window,
    is refused with one line before anything changes."""
    lm = tiny_model("llama")
    before = _snapshot(lm)
    outputs = _logits(lm)
    request = EditRequest(prompt=REQUEST.prompt, subject=REQUEST.subject, target_new=" Rome and Paris" * words)
    if words > 1000:
        with pytest.raises(ValidationError, match=r"context window|too long|tokens"):
            _editor(method).apply(lm, [request])
        assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
        assert torch.equal(_logits(lm), outputs)
        return
    handle = _editor(method).apply(lm, [request])
    handle.rollback()
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
    assert torch.equal(_logits(handle.model), outputs)


STATEMENT = EditRequest.statement("The Eiffel Tower is in Rome.")


@pytest.mark.parametrize("method", available_methods())
def test_a_statement_takes_and_rolls_back_or_is_refused_in_one_line_naming_who_takes_it(method, _editor):
    """A statement edit (no prompt, no target) either takes (an editor with capabilities.free_form: outputs
    change, rollback restores them exactly) or is refused with one line naming every method that takes
    statements, before anything changes."""
    from editkit.editors import statement_methods

    lm = tiny_model("llama")
    before = _snapshot(lm)
    outputs = _logits(lm)
    editor = _editor(method)
    caps = get_editor_class(method).capabilities
    if not caps.free_form:
        with pytest.raises(ValidationError) as refused:  # in a batch, one statement among pairs is enough
            editor.apply(lm, [REQUEST, STATEMENT] if caps.batch else [STATEMENT])
        message = str(refused.value)
        assert "\n" not in message and "not statements" in message and method in message
        assert statement_methods() and all(m in message for m in statement_methods())
        assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
        assert torch.equal(_logits(lm), outputs)
        return
    handle = editor.apply(lm, [STATEMENT])
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
    assert not torch.equal(_logits(handle.model), outputs), f"{method}'s statement changed no output"
    assert [r["descriptor"] for r in handle.summary()["memory"]["records"]] == [STATEMENT.descriptor]
    handle.rollback()
    assert torch.equal(_logits(handle.model), outputs)
