"""Knowledge neurons (Dai et al. 2022, "Knowledge Neurons in Pretrained Transformers", sections 3 and 6).

A neuron is one intermediate activation of an MLP (the input of its output projection) at the prompt's last
token. Its attribution for an answer is integrated gradients from a zero baseline: with the layer's activations
``w`` scaled to ``a * w`` (``a`` in ``1/m, 2/m, ..., 1``; the whole layer at once, as the paper computes it),
``attr_i = w_i / m * sum_k dP(answer | a_k * w) / dw_i``, P the probability of the answer's first token. By the
completeness of integrated gradients the attributions of a layer sum, as ``m`` grows, to P(w) - P(0).

Refining (section 3.2): for each prompt keep the neurons whose attribution exceeds ``t`` x the largest of that
prompt (over all layers searched); of those, keep the neurons found for more than a fraction ``p`` of the prompts
expressing the fact. Updating a fact (section 6.1): each knowledge neuron's value vector (its column of the MLP
output projection, ``[out, in]`` layout) moves by ``-lambda_1 e(old) + lambda_2 e(new)``, e the word embedding of
the answers' first tokens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from editkit.errors import ValidationError
from editkit.models.adapters import get_module
from editkit.models.hooks import hooks
from editkit.models.lm import LanguageModel

Neuron = tuple[int, int]  # (layer, index of the intermediate activation)


def _last_position_logits(lm: LanguageModel, ids: list[int], rows: int) -> Any:
    """A function giving ``rows`` copies of one prompt's last-position logits (the first decoder position's for an
    encoder-decoder model), ``[rows, vocab]``."""
    dev = lm.device
    inputs: dict[str, Any] = {"input_ids": torch.tensor([ids] * rows, device=dev)}
    position = len(ids) - 1
    if lm.is_encoder_decoder:
        inputs["decoder_input_ids"] = torch.full((rows, 1), int(lm.config.decoder_start_token_id), device=dev)
        position = 0
    index = torch.full((rows, 1), position, device=dev)
    return lambda: lm.logits_at(inputs, index)[:, 0]


def activations(lm: LanguageModel, prompt: str, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """The MLP intermediate activations (inputs of the output projection) of ``layers`` at the prompt's last
    token (for an encoder-decoder model, the encoder's last token)."""
    ids = lm.encode(prompt)
    got: dict[int, torch.Tensor] = {}

    def grabber(layer: int) -> Any:
        def grab(_m: nn.Module, args: tuple[Any, ...]) -> None:
            got[layer] = args[0][0, -1].detach().clone()

        return grab

    specs: list[Any] = [
        (lm.adapter.module(lm.model, layer, "mlp_out"), "forward_pre", grabber(layer)) for layer in layers
    ]
    with torch.no_grad(), hooks(specs):
        _last_position_logits(lm, ids, 1)()
    return got


def layer_attributions(
    lm: LanguageModel, prompt: str, answer_id: int, layer: int, steps: int, base: torch.Tensor | None = None
) -> torch.Tensor:
    """Integrated-gradient attributions of every neuron of ``layer`` for ``answer_id`` after ``prompt``, ``[n]``:
    the ``steps`` points of the Riemann sum are the rows of one batched forward and backward pass."""
    ids = lm.encode(prompt)
    w = activations(lm, prompt, [layer])[layer] if base is None else base
    alphas = torch.arange(1, steps + 1, device=w.device, dtype=w.dtype) / steps
    scaled = (alphas[:, None] * w[None, :]).requires_grad_(True)

    def replace(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0].clone()
        hidden[:, -1] = scaled.to(hidden.dtype)
        return (hidden, *args[1:])

    module = lm.adapter.module(lm.model, layer, "mlp_out")
    with torch.enable_grad(), hooks([(module, "forward_pre", replace)]):
        logits = _last_position_logits(lm, ids, steps)()
        probs = F.softmax(logits.float(), dim=-1)[:, answer_id]
        (grad,) = torch.autograd.grad(probs.sum(), [scaled])
    return (w * grad.sum(0) / steps).detach()


def probability_with(lm: LanguageModel, prompt: str, answer_id: int, layer: int, values: torch.Tensor) -> float:
    """P(answer) with ``layer``'s activations at the last token set to ``values`` (e.g. zeros: the baseline)."""
    ids = lm.encode(prompt)

    def replace(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0].clone()
        hidden[:, -1] = values.to(hidden.dtype)
        return (hidden, *args[1:])

    with torch.no_grad(), hooks([(lm.adapter.module(lm.model, layer, "mlp_out"), "forward_pre", replace)]):
        logits = _last_position_logits(lm, ids, 1)()
    return float(F.softmax(logits.float(), dim=-1)[0, answer_id])


@dataclass(frozen=True)
class NeuronSearch:
    """The thresholds of the search (paper: ``steps`` m = 20, ``t`` = 0.2)."""

    layers: Sequence[int]
    steps: int = 20
    t: float = 0.2
    p: float = 0.5


def prompt_attributions(
    lm: LanguageModel, prompt: str, answer_id: int, layers: Sequence[int], steps: int
) -> dict[int, torch.Tensor]:
    base = activations(lm, prompt, layers)
    return {layer: layer_attributions(lm, prompt, answer_id, layer, steps, base[layer]) for layer in layers}


def coarse_neurons(attributions: dict[int, torch.Tensor], t: float) -> set[Neuron]:
    """The neurons above ``t`` x the largest attribution (over every layer) of one prompt."""
    top = max(float(a.max()) for a in attributions.values())
    if top <= 0:
        return set()
    return {(layer, int(i)) for layer, a in attributions.items() for i in (a > t * top).nonzero().flatten().tolist()}


def knowledge_neurons(
    lm: LanguageModel, prompts: Sequence[str], answer: str, search: NeuronSearch
) -> tuple[list[Neuron], dict[str, Any]]:
    """The neurons expressing ``answer`` (its first token) after every prompt: above ``t`` x each prompt's largest
    attribution, in more than a fraction ``p`` of the prompts; returned by how many prompts share them, then by
    their summed attribution. Also returns each prompt's coarse count and the mean attribution of every neuron kept."""
    answer_ids = lm.encode(answer, special=False)
    if not answer_ids or not prompts:
        raise ValidationError(f"knowledge neurons need prompts and an answer that tokenizes (got {answer!r})")
    counts: Counter[Neuron] = Counter()
    totals: dict[Neuron, float] = {}
    coarse_sizes = []
    for prompt in prompts:
        attrs = prompt_attributions(lm, prompt, answer_ids[0], search.layers, search.steps)
        coarse = coarse_neurons(attrs, search.t)
        coarse_sizes.append(len(coarse))
        counts.update(coarse)
        for layer, i in coarse:
            totals[(layer, i)] = totals.get((layer, i), 0.0) + float(attrs[layer][i])
    kept = [n for n, c in counts.items() if c > search.p * len(prompts)]
    kept.sort(key=lambda n: (-counts[n], -totals[n], n))
    info = {
        "coarse": coarse_sizes,
        "attribution": {f"{layer}:{i}": totals[(layer, i)] / counts[(layer, i)] for layer, i in kept},
    }
    return kept, info


def value_update(lm: LanguageModel, old: str, new: str, lambda_old: float, lambda_new: float) -> torch.Tensor:
    """The change of each knowledge neuron's value vector: ``-lambda_old e(old) + lambda_new e(new)``, ``[d]``, e the
    input word embedding of each answer's first token."""
    emb = get_module(lm.model, lm.adapter.embeddings).weight
    assert isinstance(emb, torch.Tensor)
    old_ids, new_ids = lm.encode(old, special=False), lm.encode(new, special=False)
    if not old_ids or not new_ids:
        raise ValidationError(f"answers {old!r} and {new!r} must tokenize to something")
    return (lambda_new * emb[new_ids[0]] - lambda_old * emb[old_ids[0]]).detach()


__all__ = [
    "Neuron",
    "NeuronSearch",
    "activations",
    "coarse_neurons",
    "knowledge_neurons",
    "layer_attributions",
    "probability_with",
    "prompt_attributions",
    "value_update",
]
