"""ENN: editable training (resumable), the editor's maths against plain autograd, where an edit starts, the
meta-trained unedited model, and bad inputs (one-line errors, the model untouched)."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import editkit.trained
from conftest import write_tiny_cases
from editkit.editors import create_editor
from editkit.edits import EditRequest
from editkit.errors import ConfigError, ValidationError
from editkit.models.tiny import tiny_model
from editkit.training.registry import create_trainer
from learned_parts import enn_parts  # noqa: F401  (a fixture)

REQUESTS = [
    EditRequest(prompt="The city of {}", subject="the Eiffel Tower", target_new=" Rome"),
    EditRequest(prompt="Michael Jordan plays the sport of", target_new=" tennis"),
]


@pytest.fixture
def llama_enn(request):
    """ENN parts of the contract suite for tiny-llama."""
    return request.getfixturevalue("enn_parts")("llama")


SMALL = {"base_model": "tiny-llama", "batch": 2, "layers": 2, "lr": 1e-3, "inner_lr": 0.1}


def _train(out: Path, data: Path, **settings) -> Path:
    create_trainer("enn", {"data": [str(data)], "out": str(out), **SMALL, **settings}).train(progress=False)
    return out


def _values(lm, names):
    params = dict(lm.model.named_parameters())
    return {n: params[n].detach().clone() for n in names}


def test_training_resumed_equals_uninterrupted(tmp_path):
    data = write_tiny_cases(tmp_path / "cases.jsonl")
    whole = _train(tmp_path / "whole", data, steps=4, checkpoint_every=2)
    _train(tmp_path / "split", data, steps=2, checkpoint_every=2)
    split = _train(tmp_path / "split", data, steps=4, checkpoint_every=2)
    a, b = load_file(str(whole / "enn" / "weights.safetensors")), load_file(str(split / "enn" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = _values(tiny_model("llama"), a)
    assert any(not torch.equal(a[k], base[k]) for k in a), "meta-training changed nothing"
    with pytest.raises(ValidationError, match="other settings"):
        _train(tmp_path / "split", data, steps=5, checkpoint_every=2, inner_lr=0.2)


def test_zero_steps_give_exactly_the_meta_trained_weights(llama_enn):
    folder = llama_enn
    lm = tiny_model("llama")
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    editor = create_editor("enn", {"artifacts": str(folder), "steps": 0})
    meta = load_file(str(folder / "enn" / "weights.safetensors"))
    handle = editor.apply(lm, REQUESTS[:1])
    assert handle.info["start"] == "meta-trained"
    assert set(handle.changes) == set(meta)
    for n, ch in handle.changes.items():
        assert torch.equal(ch.edited, meta[n]) and not torch.equal(meta[n], before[n])
    handle.rollback()
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())


def test_one_step_without_meta_training_is_one_plain_sgd_step(tmp_path):
    folder = _train(tmp_path / "untrained", write_tiny_cases(tmp_path / "cases.jsonl"), steps=0)
    lr = 0.05
    lm = tiny_model("llama")
    handle = create_editor("enn", {"artifacts": str(folder), "steps": 1, "lr": lr}).apply(lm, REQUESTS)
    # independently: full forward passes, one request at a time, mean NLL per target token, autograd, w - lr * g
    ref = tiny_model("llama")
    params = dict(ref.model.named_parameters())
    total, count = torch.zeros(()), 0
    for r in REQUESTS:
        prompt, target = ref.encode(r.text), ref.encode(r.target_new, special=False)
        logits = ref.model(input_ids=torch.tensor([prompt + target])).logits[0]
        logp = torch.log_softmax(logits[len(prompt) - 1 : -1].float(), -1)
        total = total - logp[torch.arange(len(target)), torch.tensor(target)].sum()
        count += len(target)
    grads = torch.autograd.grad(total / count, [params[n] for n in handle.changes])
    for (n, ch), g in zip(handle.changes.items(), grads, strict=True):
        expected = params[n].detach() - lr * g
        assert not torch.equal(expected, params[n].detach())
        torch.testing.assert_close(ch.edited, expected, rtol=1e-5, atol=1e-7)


def test_a_later_edit_starts_from_the_current_weights_and_rollback_is_lifo(llama_enn):
    lm = tiny_model("llama")
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    first = create_editor("enn", {"artifacts": str(llama_enn)}).apply(lm, REQUESTS[:1])
    still = create_editor("enn", {"artifacts": str(llama_enn), "steps": 0}).apply(lm, REQUESTS[1:])
    assert still.info["start"] == "current"
    assert all(torch.equal(ch.edited, first.changes[n].edited) for n, ch in still.changes.items())
    second = create_editor("enn", {"artifacts": str(llama_enn)}).apply(lm, REQUESTS[1:])
    assert second.info["start"] == "current"
    assert second.info["target_nll_after"] < second.info["target_nll_before"]
    with pytest.raises(ValidationError, match="roll back later edits first"):
        first.rollback()
    for h in (second, still, first):
        h.rollback()
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())


def test_the_meta_trained_unedited_model_is_a_rollbackable_start(llama_enn):
    editor = create_editor("enn", {"artifacts": str(llama_enn)})
    lm = tiny_model("llama")
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    on_base = editor.apply(lm, REQUESTS)
    from_base = _values(lm, on_base.changes)
    on_base.rollback()
    meta = editor.meta_trained(lm)
    assert meta.requests == [] and meta.info["meta_trained"]
    on_meta = editor.apply(lm, REQUESTS)
    assert on_meta.info["start"] == "current"
    assert all(torch.equal(v, from_base[n]) for n, v in _values(lm, on_meta.changes).items())
    with pytest.raises(ValidationError, match="does not hold the base weights"):
        editor.meta_trained(lm)
    on_meta.rollback()
    meta.rollback()
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())


def test_bad_parts_are_one_line_errors_and_leave_the_model_untouched(llama_enn, tmp_path, monkeypatch):
    gpt2 = tiny_model("gpt2")
    before = {n: p.detach().clone() for n, p in gpt2.model.named_parameters()}
    with pytest.raises(ValidationError, match="trained for tiny-llama-s0, not tiny-gpt2-s0") as err:
        create_editor("enn", {"artifacts": str(llama_enn)}).apply(gpt2, REQUESTS)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(editkit.trained, "PACKAGED", tmp_path / "packaged")
    with pytest.raises(ValidationError, match="editkit train enn --config FILE"):
        create_editor("enn").apply(gpt2, REQUESTS)
    assert all(torch.equal(p, before[n]) for n, p in gpt2.model.named_parameters())

    corrupt = tmp_path / "corrupt"
    shutil.copytree(llama_enn, corrupt)
    weights = corrupt / "enn" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    lm = tiny_model("llama")
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    with pytest.raises(ValidationError, match="does not match its recorded hash"):
        create_editor("enn", {"artifacts": str(corrupt)}).apply(lm, REQUESTS)
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
    lm.model.half()
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    with pytest.raises(ValidationError, match=r"trained in torch\.float32"):
        create_editor("enn", {"artifacts": str(llama_enn)}).apply(lm, REQUESTS)
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())


def test_training_refuses_data_without_locality_probes_and_bad_settings(tmp_path):
    data = tmp_path / "edits.jsonl"
    data.write_text('{"request": {"prompt": "The capital of Germany is", "target_new": " Bonn"}, "probes": []}\n')
    with pytest.raises(ConfigError, match="out or neighborhood"):
        _train(tmp_path / "out", data, steps=1)
    with pytest.raises(ConfigError, match="layers"):
        _train(tmp_path / "out", write_tiny_cases(tmp_path / "cases.jsonl"), steps=1, layers=9)
    with pytest.raises(ConfigError, match="steps must be >= 0"):
        create_editor("enn", {"steps": -1})
