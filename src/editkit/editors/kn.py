"""KN: editing a fact through its knowledge neurons (Dai et al. 2022, section 6.1, "updating facts").

The neurons are found by integrated gradients over the MLP intermediate activations at the last token
(:mod:`editkit.editors.neurons`) for the old answer, over the edit prompt and ``n_context`` prefixed versions of
it (the seeded, model-sampled prefixes ROME uses; the paper uses rephrasings of the fact); each one's value
vector (column of the MLP output projection) then moves by ``-lambda_old e(old) + lambda_new e(new)``, times the
sign of the neuron's activation at the edit prompt: the paper's MLPs (GELU) fire positively, but a gated MLP's
activations (SwiGLU, GeGLU) are often negative, and there the paper's update would push the output away from the
new answer. The old answer is the request's ``target_true``, else the model's greedy next token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from editkit.editors.base import Capabilities, WeightEditor, WeightUpdate, register
from editkit.editors.config import EditorConfig
from editkit.editors.locate import sample_contexts
from editkit.editors.neurons import Neuron, NeuronSearch, activations, knowledge_neurons, value_update
from editkit.edits import EditRequest
from editkit.errors import ConfigError, ValidationError
from editkit.models.lm import LanguageModel


@dataclass
class KNConfig(EditorConfig):
    layers: list[int] | None = field(default=None, metadata={"help": "layers searched for neurons; default: all"})
    steps: int = field(default=20, metadata={"help": "integrated-gradient steps m (paper: 20)"})
    t: float = field(default=0.2, metadata={"help": "keep neurons above t x a prompt's top attribution (paper: 0.2)"})
    p: float = field(default=0.5, metadata={"help": "then keep those found for more than this share of the prompts"})
    n_context: int = field(default=4, metadata={"help": "prefixed versions of the prompt searched besides the prompt"})
    context_length: int = field(default=10, metadata={"help": "tokens per sampled prefix"})
    seed: int = field(default=0, metadata={"help": "seed of the prefix sampler"})
    lambda_old: float = field(default=1.0, metadata={"help": "weight of the old answer's embedding removed (lambda_1)"})
    lambda_new: float = field(default=8.0, metadata={"help": "weight of the new answer's embedding added (lambda_2)"})
    max_neurons: int | None = field(
        default=None, metadata={"help": "edit at most this many of the neurons found (by prompts sharing, then score)"}
    )

    def validate(self) -> None:
        if self.steps < 1 or self.n_context < 0 or self.context_length < 1:
            raise ConfigError("KN: steps and context_length must be >= 1, n_context >= 0")
        if not 0 <= self.t < 1 or not 0 <= self.p < 1:
            raise ConfigError("KN: t and p must be in [0, 1)")
        if self.max_neurons is not None and self.max_neurons < 1:
            raise ConfigError("KN: max_neurons must be >= 1")


@register
class KN(WeightEditor):
    name = "kn"
    config_cls: ClassVar[type[EditorConfig]] = KNConfig
    capabilities = Capabilities(storage="weights", batch=False, replay=True)
    config: KNConfig

    def __init__(self, config: KNConfig | None = None) -> None:
        super().__init__(config)
        self._contexts: dict[tuple[Any, ...], list[str]] = {}

    def layers(self, lm: LanguageModel) -> list[int]:
        layers = self.config.layers if self.config.layers is not None else range(lm.adapter.n_layers(lm.model))
        for layer in layers:
            lm.adapter.check_layer(lm.model, layer)
        return list(layers)

    def target_parameters(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> list[str]:
        return [lm.adapter.weight_name(layer, "mlp_out") for layer in self.layers(lm)]

    def prompts(self, lm: LanguageModel, req: EditRequest) -> list[str]:
        cfg = self.config
        key = (lm.name, id(lm.model), cfg.seed, cfg.n_context, cfg.context_length)
        if key not in self._contexts:
            self._contexts[key] = sample_contexts(lm, cfg.n_context, cfg.context_length, cfg.seed)
        return [ctx.replace("{}", req.text) for ctx in self._contexts[key]]

    def old_answer(self, lm: LanguageModel, req: EditRequest) -> str:
        if req.target_true is not None:
            return req.target_true
        return str(lm.tokenizer.decode([int(lm.next_token_logprobs([req.text])[0].argmax())]))

    def compute(
        self, lm: LanguageModel, requests: Sequence[EditRequest], params: dict[str, nn.Parameter]
    ) -> WeightUpdate:
        (req,) = requests
        old = self.old_answer(lm, req)
        layers = self.layers(lm)
        search = NeuronSearch(layers, self.config.steps, self.config.t, self.config.p)
        neurons, info = knowledge_neurons(lm, self.prompts(lm, req), old, search)
        if self.config.max_neurons is not None:
            neurons = neurons[: self.config.max_neurons]
        acts = activations(lm, req.text, sorted({layer for layer, _ in neurons}))
        signs = [1.0 if float(acts[layer][i]) >= 0 else -1.0 for layer, i in neurons]
        update = self._update(lm, req, params, neurons, signs, old)
        update.info.update(coarse=info["coarse"], attribution=info["attribution"])
        return update

    def recompute(
        self,
        lm: LanguageModel,
        requests: Sequence[EditRequest],
        params: dict[str, nn.Parameter],
        recorded: Mapping[str, Any],
    ) -> WeightUpdate:
        (req,) = requests
        if not isinstance(recorded, Mapping) or not {"neurons", "signs", "old"} <= set(recorded):
            raise ValidationError("the edit's record holds no 'neurons', 'signs' and 'old' answer to replay it from")
        neurons = [(int(layer), int(i)) for layer, i in recorded["neurons"]]
        signs = [float(x) for x in recorded["signs"]]
        update = self._update(lm, req, params, neurons, signs, str(recorded["old"]))
        update.info["replayed"] = True
        return update

    def _update(
        self,
        lm: LanguageModel,
        req: EditRequest,
        params: dict[str, nn.Parameter],
        neurons: list[Neuron],
        signs: list[float],
        old: str,
    ) -> WeightUpdate:
        delta = value_update(lm, old, req.target_new, self.config.lambda_old, self.config.lambda_new)
        values: dict[str, torch.Tensor] = {}
        adapter = lm.adapter
        with torch.no_grad():
            for (layer, i), sign in zip(neurons, signs, strict=True):
                name = adapter.weight_name(layer, "mlp_out")
                if name not in values:
                    values[name] = adapter.as_out_in(params[name].detach()).clone()
                values[name][:, i] += sign * delta.to(values[name].dtype)
        info = {
            "n_neurons": len(neurons),
            "old": old,
            "neurons": [f"{layer}:{i}" for layer, i in neurons],
            "replay": {"neurons": [[layer, i] for layer, i in neurons], "signs": signs, "old": old},
        }
        return WeightUpdate({n: adapter.from_out_in(v).contiguous() for n, v in values.items()}, info)


__all__ = ["KN", "KNConfig"]
