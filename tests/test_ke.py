"""KE (editors/ke.py, training/ke.py) on tiny models: the update against an independent autograd gradient step,
the per-row delta hooks against weights really changed, the Lagrangian's directions, SLAG's probes, a tiny training
run (resumed equals uninterrupted), and bad inputs (another model's parts, a corrupted artifact, no artifact)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import write_tiny_cases
from editkit.editors import create_editor
from editkit.editors.ke import HyperNetwork, edit_deltas, edited_weights, ke_update, row_deltas
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import ValidationError
from editkit.models.tiny import tiny_model
from editkit.trained import read_manifest
from editkit.training.ke import EDIT_KINDS, _rows, lagrangian
from editkit.training.registry import create_trainer

REQUESTS = [
    EditRequest(prompt="The city of {}", subject="the Eiffel Tower", target_new=" Rome"),
    EditRequest(prompt="Michael Jordan plays", target_new=" tennis", target_true=" basketball"),
]
TINY = {"layers": [-1], "parts": ["mlp_out"], "hidden": 8, "edits": 2, "checkpoint_every": 2}


def _nll_by_hand(lm, request: EditRequest) -> torch.Tensor:
    """Mean NLL of ``target_new`` after the prompt, from a plain forward over the whole sequence."""
    prompt = lm.encode(request.text)
    target = lm.encode(request.target_new, special=False)
    ids = torch.tensor([prompt + target])
    logp = F.log_softmax(lm.model(input_ids=ids).logits[0].float(), -1)
    rows = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(target))
    return -logp[rows, torch.tensor(target)].mean()


def _forced_identity(hyper: HyperNetwork, step: float) -> None:
    """alpha_hat = 1, beta_hat = 0, sigma(eta) * max_scale = step, whatever the edit."""
    with torch.no_grad():
        for head in hyper.heads.values():
            head.weight.zero_()
            head.bias.zero_()
            head.bias[-1] = torch.logit(torch.tensor(step / hyper.max_scale))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_forced_modulation_is_a_plain_gradient_step(arch):
    lm = tiny_model(arch)
    shapes = edited_weights(lm, [-1, -2], ["mlp_in", "mlp_out"])
    hyper = HyperNetwork(lm.model.get_output_embeddings().weight.shape[1], 4, shapes, 1.0, 0.1)
    _forced_identity(hyper, 0.3)
    deltas, mods = edit_deltas(lm, hyper, REQUESTS)
    params = dict(lm.model.named_parameters())
    for b, request in enumerate(REQUESTS):
        lm.model.zero_grad()
        lm.model.requires_grad_(True)
        _nll_by_hand(lm, request).backward()
        for name in shapes:
            expected = -0.3 * lm.adapter.as_out_in(params[name].grad)
            assert torch.allclose(mods[name].step[b], torch.tensor(0.3))
            torch.testing.assert_close(deltas[name][b], expected, rtol=1e-4, atol=1e-7)
    lm.model.requires_grad_(False)


def test_ke_update_is_the_papers_parametrisation():
    g = torch.randn(3, 4)
    a_out, a_in, b_out, b_in = torch.rand(3), torch.rand(4), torch.randn(3), torch.randn(4)
    step = torch.tensor(0.7)
    expected = torch.empty(3, 4)
    for i in range(3):
        for j in range(4):
            expected[i, j] = -0.7 * (a_out[i] * a_in[j] * g[i, j] + b_out[i] * b_in[j])
    torch.testing.assert_close(ke_update(g, a_out, a_in, b_out, b_in, step), expected)
    assert torch.equal(ke_update(g, torch.ones(3), torch.ones(4), torch.zeros(3), torch.zeros(4), step), -0.7 * g)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
def test_row_deltas_equal_changed_weights(arch):
    lm = tiny_model(arch)
    shapes = edited_weights(lm, [-1], ["mlp_out"])
    ((name, (o, i)),) = shapes.items()
    gen = torch.Generator().manual_seed(0)
    delta = 0.05 * torch.randn(2, o, i, generator=gen)
    tf = lm.teacher_forced(["The city of Paris", "Michael Jordan plays"], [" Rome", " tennis"])
    index, _ = tf.positions()
    with torch.no_grad(), row_deltas(lm, {name: delta}):
        hooked = lm.logits_at(tf.inputs, index)
    with torch.no_grad(), row_deltas(lm, {name: delta.flip(0)}, groups=[1, 0]):
        torch.testing.assert_close(lm.logits_at(tf.inputs, index), hooked)  # grouped rows: the same deltas
    param = dict(lm.model.named_parameters())[name]
    for r in range(2):
        with torch.no_grad():
            original = param.detach().clone()
            param.add_(lm.adapter.from_out_in(delta[r]))
            direct = lm.logits_at({k: v[r : r + 1] for k, v in tf.inputs.items()}, index[r : r + 1])
            param.copy_(original)
        torch.testing.assert_close(hooked[r : r + 1], direct, rtol=1e-4, atol=1e-5)


def test_lagrangian_descends_in_the_network_and_ascends_in_the_multiplier():
    for c_value, sign in ((0.5, 1.0), (0.001, -1.0)):
        rho = torch.tensor(0.0, requires_grad=True)
        theta = torch.tensor(1.0, requires_grad=True)
        edit_loss, constraint = theta**2, c_value * theta**2
        lam = F.softplus(rho)
        total = lagrangian(edit_loss, constraint, 0.01, lam)
        torch.testing.assert_close(total, edit_loss + lam * (constraint - 0.01))
        total.backward()
        torch.testing.assert_close(theta.grad, 2 * theta + lam.detach() * 2 * c_value * theta.detach())
        # a descent step on rho raises lambda while C > m, lowers it once C < m
        assert torch.sign(-rho.grad) == sign


def test_slag_adds_hard_in_probes_to_the_edit_loss():
    request = EditRequest(prompt="Michael Jordan plays", target_new=" tennis")
    case = EditCase(
        request,
        (
            Probe("Michael Jordan plays", " tennis", ProbeKind.EDIT),
            Probe("MJ's sport is", " tennis", ProbeKind.REPHRASE),
            Probe("Michael Jordan's racket is for", " tennis", ProbeKind.HARD_IN),
            Probe("Paris is in", " France", ProbeKind.OUT),
        ),
    )
    ke = _rows([case], random.Random(0), EDIT_KINDS, 5, with_request=True)
    slag = _rows([case], random.Random(0), (*EDIT_KINDS, ProbeKind.HARD_IN), 5, with_request=True)
    assert ke[0] == ["Michael Jordan plays", "MJ's sport is"]  # the request first, its duplicate probe once
    assert set(slag[0]) == {"Michael Jordan plays", "MJ's sport is", "Michael Jordan's racket is for"}
    assert slag[2] == [0, 0, 0]


def _train(tmp_path: Path, out: str, **settings):
    data = write_tiny_cases(tmp_path / "cases.jsonl")
    return create_trainer(
        "ke", {**TINY, "data": [str(data)], "out": str(tmp_path / out), "base_model": "tiny-llama", **settings}
    ).train(progress=False)


def test_a_resumed_training_run_ends_where_an_uninterrupted_one_does(tmp_path):
    whole = _train(tmp_path, "whole", steps=4)
    _train(tmp_path, "parts", steps=2)
    resumed = _train(tmp_path, "parts", steps=4)
    part, again = whole["parts"]["hypernet"], resumed["parts"]["hypernet"]
    assert part["method"] == "KE" and part["steps"] == again["steps"] == 4
    assert part["loss_last20_mean"] == again["loss_last20_mean"]
    assert part["lagrange_multiplier"] == again["lagrange_multiplier"]
    assert part["files"]["weights.safetensors"] == again["files"]["weights.safetensors"]  # bit for bit
    slag = _train(tmp_path, "slag", steps=2, slag=True)
    assert slag["parts"]["hypernet"]["method"] == "SLAG"
    lm = tiny_model("llama")
    handle = create_editor("ke", {"artifacts": str(tmp_path / "slag")}).apply(lm, REQUESTS)
    assert handle.info["method"] == "SLAG" and set(handle.changes) == set(part["weights"])
    fingerprint = read_manifest(tmp_path / "slag")["parts"]["hypernet"]["fingerprint"]
    assert create_editor("ke", {"artifacts": str(tmp_path / "slag")}).provenance() == {}
    editor = create_editor("ke", {"artifacts": str(tmp_path / "slag")})
    editor.prepare(lm)
    assert editor.provenance() == {"hypernet:tiny-llama-s0": fingerprint}


def test_bad_artifacts_are_one_line_errors_and_leave_the_model_untouched(tmp_path):
    _train(tmp_path, "parts", steps=2)
    lm = tiny_model("gpt2")
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    editor = create_editor("ke", {"artifacts": str(tmp_path / "parts")})
    with pytest.raises(ValidationError, match=r"trained for tiny-llama-s0, not tiny-gpt2-s0") as err:
        editor.apply(lm, REQUESTS[:1])
    assert "\n" not in str(err.value)
    llama = tiny_model("llama")
    llama_before = {n: p.detach().clone() for n, p in llama.model.named_parameters()}
    weights = tmp_path / "parts" / "hypernet" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(ValidationError, match="does not match its recorded hash") as err:
        editor.apply(llama, REQUESTS[:1])
    assert "\n" not in str(err.value)
    with pytest.raises(ValidationError, match=r"editkit train ke --config FILE"):
        create_editor("ke", {"artifacts": str(tmp_path / "nothing")}).apply(llama, REQUESTS[:1])
    for model, saved in ((lm, before), (llama, llama_before)):
        assert all(torch.equal(p, saved[n]) for n, p in model.model.named_parameters())
    assert json.dumps(read_manifest(tmp_path / "parts")["parts"]["hypernet"]["weights"])
