"""The contract every registered editor must keep, on several architectures."""

import pytest
import torch

from editkit.editors import available_methods, create_editor
from editkit.editors.base import EditHandle
from editkit.edits import EditRequest
from editkit.errors import ValidationError
from editkit.models.tiny import tiny_model

ARCHS = ["llama", "gpt2", "gemma3", "gptj", "gpt_neox", "t5"]
REQUEST = EditRequest(prompt="The city of {}", subject="the Eiffel Tower", target_new=" Rome")
PROBES = ["The city of the Eiffel Tower", "Michael Jordan plays the sport of"]

# Small, fast settings; every method must still change its model with them.
FAST = {
    "rome": {
        "v_steps": 4,
        "n_context": 2,
        "context_length": 3,
        "v_weight_decay": 0.0,
        "clamp_norm_factor": 1e4,
    },
    "ft": {"steps": 3, "lr": 1e-2},
    "ft-c": {"steps": 3, "lr": 1e-2, "radius": 1e-2},
}


def _editor(name):
    return create_editor(name, FAST.get(name, {}))


def _snapshot(lm):
    return {n: p.detach().clone() for n, p in lm.model.named_parameters()}


def _logits(lm):
    batch = lm.teacher_forced(PROBES, [" Rome", " tennis"])
    with torch.no_grad():
        return lm.logits(batch.inputs)


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


@pytest.mark.parametrize("method", available_methods())
def test_rollback_is_bit_exact_and_only_declared_parameters_change(method, arch):
    lm = tiny_model(arch)
    before = _snapshot(lm)
    handle = _editor(method).apply(lm, [REQUEST])
    after = _snapshot(lm)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed, f"{method} changed nothing on {arch}"
    assert changed <= set(handle.changes), f"undeclared changes: {changed - set(handle.changes)}"
    assert handle.summary()["parameters"], "summary lists no parameters"
    handle.rollback()
    for n, p in lm.model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} not restored bit-exactly"


@pytest.mark.parametrize("method", available_methods())
def test_save_load_reproduces_edited_logits(method, arch, tmp_path):
    lm = tiny_model(arch)
    handle = _editor(method).apply(lm, [REQUEST])
    edited = _logits(lm)
    handle.save(tmp_path / "edit")
    fresh = tiny_model(arch)
    loaded = EditHandle.load(tmp_path / "edit", fresh)
    assert torch.equal(_logits(fresh), edited)
    assert loaded.requests == [REQUEST]
    with pytest.raises(ValidationError, match="different"):
        EditHandle.load(tmp_path / "edit", fresh)  # already edited: the originals no longer match


@pytest.mark.parametrize("method", available_methods())
def test_failure_inside_an_edit_leaves_no_trace(method, arch, monkeypatch):
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

    monkeypatch.setattr(type(lm), "logits_at", failing)
    with pytest.raises(RuntimeError, match="injected"):
        _editor(method).apply(lm, [REQUEST])
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


@pytest.mark.parametrize("method", available_methods())
def test_temporary_edit_context_rolls_back(method):
    lm = tiny_model("llama")
    before = _logits(lm)
    editor = _editor(method)
    editor.prepare(lm)  # optional precomputation must not change the model
    assert torch.equal(_logits(lm), before)
    with editor.edited(lm, [REQUEST]) as model:
        assert not torch.equal(_logits(model), before)
    assert torch.equal(_logits(lm), before)


def test_rollback_refuses_to_discard_a_later_edit():
    lm = tiny_model("llama")
    first = _editor("ft").apply(lm, [REQUEST])
    second = _editor("ft").apply(lm, [EditRequest(prompt="Rome is in", target_new=" France")])
    with pytest.raises(ValidationError, match="roll back later edits first"):
        first.rollback()
    second.rollback()
    first.rollback()
