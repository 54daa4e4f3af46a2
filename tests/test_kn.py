"""Knowledge neurons: integrated gradients against completeness, the thresholds, and KN's update against a
direct computation."""

from __future__ import annotations

import pytest
import torch

from editkit.editors import create_editor
from editkit.editors.neurons import (
    activations,
    coarse_neurons,
    layer_attributions,
    probability_with,
    value_update,
)
from editkit.edits import EditRequest
from editkit.models.adapters import get_module
from editkit.models.tiny import tiny_model

PROMPT = "The Eiffel Tower is located in the city of"


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
def test_attributions_sum_to_the_change_from_the_zero_baseline(arch):
    lm = tiny_model(arch)
    answer = int(lm.next_token_logprobs([PROMPT])[0].argmax())
    layer = 1
    w = activations(lm, PROMPT, [layer])[layer]
    full = probability_with(lm, PROMPT, answer, layer, w)
    zero = probability_with(lm, PROMPT, answer, layer, torch.zeros_like(w))
    assert full == pytest.approx(float(lm.next_token_logprobs([PROMPT])[0, answer].exp()), rel=1e-5)
    gap = full - zero
    assert abs(gap) > 1e-6
    fine = float(layer_attributions(lm, PROMPT, answer, layer, steps=300).sum())
    coarse = float(layer_attributions(lm, PROMPT, answer, layer, steps=1).sum())
    assert fine == pytest.approx(gap, rel=0.02)
    assert abs(fine - gap) < abs(coarse - gap)  # the Riemann sum converges from one step to many


def test_thresholds_keep_neurons_above_t_times_the_largest():
    attrs = {0: torch.tensor([1.0, 0.1, 0.25]), 3: torch.tensor([-2.0, 0.3, 0.19])}
    assert coarse_neurons(attrs, 0.2) == {(0, 0), (0, 2), (3, 1)}
    assert coarse_neurons({0: torch.tensor([-1.0, 0.0])}, 0.2) == set()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_kn_moves_each_neurons_value_vector_by_the_embeddings(arch):
    lm = tiny_model(arch)
    request = EditRequest(prompt="{} is located in the city of", subject="The Eiffel Tower", target_new=" Rome")
    editor = create_editor("kn", {"steps": 4, "n_context": 2, "context_length": 3, "p": 0.0})
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    acts = activations(lm, request.text, range(lm.adapter.n_layers(lm.model)))
    handle = editor.apply(lm, [request])
    neurons = [tuple(map(int, n.split(":"))) for n in handle.info["neurons"]]
    signs = dict(zip(neurons, handle.info["replay"]["signs"], strict=True))
    assert neurons and handle.info["n_neurons"] == len(neurons)
    emb = get_module(lm.model, lm.adapter.embeddings).weight.detach()
    old = lm.encode(handle.info["old"], special=False)[0]
    new = lm.encode(" Rome", special=False)[0]
    expected = 8.0 * emb[new] - 1.0 * emb[old]
    assert torch.allclose(value_update(lm, handle.info["old"], " Rome", 1.0, 8.0), expected)
    for layer in range(lm.adapter.n_layers(lm.model)):
        name = lm.adapter.weight_name(layer, "mlp_out")
        w0 = lm.adapter.as_out_in(before[name])
        w1 = lm.adapter.as_out_in(dict(lm.model.named_parameters())[name].detach())
        mine = [i for (lay, i) in neurons if lay == layer]
        for i in range(w0.shape[1]):
            if i in mine:
                assert signs[(layer, i)] == (1.0 if acts[layer][i] >= 0 else -1.0)
            want = w0[:, i] + signs[(layer, i)] * expected if i in mine else w0[:, i]
            assert torch.allclose(w1[:, i], want, atol=1e-6), (layer, i)
    handle.rollback()
