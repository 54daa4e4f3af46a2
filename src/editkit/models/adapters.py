"""Architecture adapters: where the parts of a transformer live and which way their weights are laid out.

Keyed by the transformers *config class*, never by a model's name. Every method that touches weights goes
through an :class:`ArchAdapter`, so supporting a new architecture is one entry in :data:`_FACTORIES`.

Weight layouts are declared, not guessed from shapes (square matrices make guessing silently wrong):
``"out_in"`` is ``torch.nn.Linear`` (``y = x @ W.T``); ``"in_out"`` is GPT-2's ``Conv1D`` (``y = x @ W``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import PretrainedConfig

from editkit.errors import LayerRangeError, UnsupportedArchitectureError

Layout = Literal["out_in", "in_out"]


@dataclass(frozen=True)
class ArchAdapter:
    """Named sites of one architecture. Paths are dotted attribute paths; layer sites are relative to a layer.

    Attributes:
        layers: the stack whose MLPs locate-and-edit methods edit (the encoder for encoder-decoder models).
        mlp_in: the MLP's input projection (for gated MLPs, the "up" projection).
        mlp_out: the MLP's output projection: the matrix ROME/MEMIT treat as a linear key-value memory.
        attn_out: the attention output projection.
        embeddings: the token embedding module.
        final_norm: the norm applied before the head (of the stack named by ``layers``).
        head: the output head producing vocabulary logits.
        layout: weight layout of the projections (see module docstring).
        sequential_layers: True when each layer depends only on the previous layer's hidden states (plus
            position information the model computes before the stack), so that a prefix of layers may be
            replaced by cached outputs. False for T5, whose first layer computes a position bias reused later.
        mlp_out_norm: a norm the MLP's output passes through before it joins the residual stream (Gemma's
            ``post_feedforward_layernorm``), relative to a layer; empty where the output is added as it is.
    """

    name: str
    layers: str
    mlp_in: str
    mlp_out: str
    attn_out: str
    embeddings: str
    final_norm: str
    head: str
    layout: Layout
    is_encoder_decoder: bool = False
    sequential_layers: bool = True
    mlp_out_norm: str = ""

    def layer_list(self, model: nn.Module) -> nn.ModuleList:
        mod = get_module(model, self.layers)
        if not isinstance(mod, nn.ModuleList):
            raise TypeError(f"{self.name}: {self.layers!r} is {type(mod).__name__}, expected a ModuleList")
        return mod

    def n_layers(self, model: nn.Module) -> int:
        return len(self.layer_list(model))

    def check_layer(self, model: nn.Module, layer: int) -> None:
        n = self.n_layers(model)
        if not 0 <= layer < n:
            raise LayerRangeError(f"layer {layer} out of range: this {self.name} model has layers 0..{n - 1}")

    def site(self, layer: int, part: str) -> str:
        """Dotted module path of ``part`` ("mlp_in", "mlp_out", "attn_out", "mlp_out_norm") in ``layer``."""
        rel = {
            "mlp_in": self.mlp_in,
            "mlp_out": self.mlp_out,
            "attn_out": self.attn_out,
            "mlp_out_norm": self.mlp_out_norm,
        }[part]
        if part == "mlp_out_norm" and not rel:
            raise UnsupportedArchitectureError(f"{self.name}: no norm between the MLP's output and the residual stream")
        return f"{self.layers}.{layer}.{rel}" if rel else f"{self.layers}.{layer}"

    def module(self, model: nn.Module, layer: int, part: str) -> nn.Module:
        self.check_layer(model, layer)
        return get_module(model, self.site(layer, part))

    def weight_name(self, layer: int, part: str) -> str:
        return f"{self.site(layer, part)}.weight"

    def as_out_in(self, weight: torch.Tensor) -> torch.Tensor:
        """View a projection weight as a matrix mapping inputs to outputs, shape ``[out, in]``."""
        return weight if self.layout == "out_in" else weight.T

    def from_out_in(self, matrix: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`as_out_in`: an ``[out, in]`` matrix in this architecture's storage layout."""
        return matrix if self.layout == "out_in" else matrix.T


def get_module(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        if not hasattr(mod, part):
            raise AttributeError(f"{type(root).__name__} has no module {path!r} (missing {part!r})")
        mod = getattr(mod, part)
    if not isinstance(mod, nn.Module):
        raise TypeError(f"{path!r} is {type(mod).__name__}, not a module")
    return mod


def _llama_like(name: str, mlp_out_norm: str = "") -> Callable[[PretrainedConfig], ArchAdapter]:
    def make(config: PretrainedConfig) -> ArchAdapter:
        return ArchAdapter(
            name=name,
            layers="model.layers",
            mlp_in="mlp.up_proj",
            mlp_out="mlp.down_proj",
            attn_out="self_attn.o_proj",
            embeddings="model.embed_tokens",
            final_norm="model.norm",
            head="lm_head",
            layout="out_in",
            mlp_out_norm=mlp_out_norm,
        )

    return make


def _gpt2(config: PretrainedConfig) -> ArchAdapter:
    return ArchAdapter(
        name="gpt2",
        layers="transformer.h",
        mlp_in="mlp.c_fc",
        mlp_out="mlp.c_proj",
        attn_out="attn.c_proj",
        embeddings="transformer.wte",
        final_norm="transformer.ln_f",
        head="lm_head",
        layout="in_out",
    )


def _gptj(config: PretrainedConfig) -> ArchAdapter:
    return ArchAdapter(
        name="gptj",
        layers="transformer.h",
        mlp_in="mlp.fc_in",
        mlp_out="mlp.fc_out",
        attn_out="attn.out_proj",
        embeddings="transformer.wte",
        final_norm="transformer.ln_f",
        head="lm_head",
        layout="out_in",
    )


def _gpt_neox(config: PretrainedConfig) -> ArchAdapter:
    return ArchAdapter(
        name="gpt_neox",
        layers="gpt_neox.layers",
        mlp_in="mlp.dense_h_to_4h",
        mlp_out="mlp.dense_4h_to_h",
        attn_out="attention.dense",
        embeddings="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        head="lm_head",
        layout="out_in",
    )


def _t5(config: PretrainedConfig) -> ArchAdapter:
    gated = bool(getattr(config, "is_gated_act", False))
    return ArchAdapter(
        name="t5",
        layers="encoder.block",
        mlp_in="layer.1.DenseReluDense." + ("wi_1" if gated else "wi"),
        mlp_out="layer.1.DenseReluDense.wo",
        attn_out="layer.0.SelfAttention.o",
        embeddings="shared",
        final_norm="encoder.final_layer_norm",
        head="lm_head",
        layout="out_in",
        is_encoder_decoder=True,
        sequential_layers=False,
    )


_FACTORIES: dict[str, Callable[[PretrainedConfig], ArchAdapter]] = {
    "LlamaConfig": _llama_like("llama"),
    "Gemma3TextConfig": _llama_like("gemma3", mlp_out_norm="post_feedforward_layernorm"),
    "GPT2Config": _gpt2,
    "GPTJConfig": _gptj,
    "GPTNeoXConfig": _gpt_neox,
    "T5Config": _t5,
}


def supported_config_classes() -> list[str]:
    return sorted(_FACTORIES)


def adapter_for(config: PretrainedConfig) -> ArchAdapter:
    """The adapter for a model config, looked up by the config's class (and its base classes)."""
    for cls in type(config).__mro__:
        factory = _FACTORIES.get(cls.__name__)
        if factory is not None:
            return factory(config)
    raise UnsupportedArchitectureError(
        f"no architecture adapter for {type(config).__name__}; supported config classes: "
        f"{', '.join(supported_config_classes())}"
    )
