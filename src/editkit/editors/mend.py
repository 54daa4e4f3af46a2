"""MEND (Mitchell et al., 2022): an edit's fine-tuning gradient, transformed by small trained editor networks.

"Fast Model Editing at Scale", §3.

For a linear weight W (``[out, in]``) applied at every token t, the gradient of a loss is a sum of rank-one terms,
``dL/dW = sum_t delta_t u_t^T`` with u_t the layer's input and delta_t the gradient of the loss at its output.
:func:`gradient_factors` captures both in one forward and backward pass of the edit (the loss of each request is
its mean target NLL; the requests' losses are summed, so a batch of edits is the sum of their gradients). An
editor network g, one per weight shape and shared by every edited weight of that shape, maps each token's
``z_t = [u_t; delta_t]``, normalised per feature (statistics fixed at training), through ``blocks`` residual
blocks ``z + U relu(s_l * (V z + b) + o_l)`` of rank ``rank`` (a scale s_l and shift o_l per edited weight, U
initialised to zero) and back to the inputs' scale, to ``(u~_t, delta~_t)``: an untrained network is the
identity. The update is ``W - alpha_l sum_t delta~_t u~_t^T`` with alpha_l learned per
weight: an untrained MEND is one step of gradient descent with step alpha_l. The weights edited (the MLP input
and output projections of the top layers, by default) are chosen at training time (``editkit train mend``,
:mod:`editkit.training.mend`) and recorded with the parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from editkit.editors.base import Capabilities, EditorConfig, WeightEditor, WeightUpdate, register
from editkit.edits import EditRequest
from editkit.errors import ValidationError
from editkit.models.hooks import hooks
from editkit.models.lm import LanguageModel, TeacherForcedBatch
from editkit.trained import find, load_tensors, part_fingerprint, verify

PART = "editor"
Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # weight name -> (u [T, in], delta [T, out])


# --------------------------------------------------------------------------- the gradient's rank-one factors
def site_names(lm: LanguageModel, sites: Sequence[tuple[int, str]]) -> list[str]:
    return [lm.adapter.weight_name(layer, part) for layer, part in sites]


def gradient_factors(
    lm: LanguageModel, sites: Sequence[tuple[int, str]], batch: TeacherForcedBatch
) -> tuple[Factors, torch.Tensor]:
    """Each site's inputs u and output gradients delta at the input's real (unpadded) tokens, float32, for the
    loss ``sum over rows of the row's mean target NLL``; and that loss (detached). ``sum_t delta_t u_t^T`` is the
    loss's gradient of the site's weight as an ``[out, in]`` matrix. The model's parameters and their ``grad``
    are left alone (the gradient is taken of the sites' outputs only)."""
    names = site_names(lm, sites)
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def capture(name: str) -> tuple[Any, Any]:
        def pre(_m: nn.Module, args: tuple[Any, ...]) -> None:
            inputs[name] = args[0].detach()

        def post(_m: nn.Module, _args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
            if output.requires_grad:
                outputs[name] = output
                return None
            outputs[name] = output.detach().requires_grad_()  # frozen model: differentiate from here
            return outputs[name]

        return pre, post

    specs: list[Any] = []
    for (layer, part), name in zip(sites, names, strict=True):
        module = lm.adapter.module(lm.model, layer, part)
        pre, post = capture(name)
        specs += [(module, "forward_pre", pre), (module, "forward", post)]
    index, valid = batch.positions()
    with torch.enable_grad(), hooks(specs):
        logprobs = batch.token_logprobs(lm.logits_at(batch.inputs, index))
        loss = -(logprobs.sum(1) / valid.sum(1)).sum()
        grads = torch.autograd.grad(loss, [outputs[n] for n in names])
    real = batch.inputs["attention_mask"].bool()  # the edited stack's tokens (the encoder's, for encoder-decoders)
    factors = {n: (inputs[n][real].float(), g[real].float()) for n, g in zip(names, grads, strict=True)}
    return factors, loss.detach()


# --------------------------------------------------------------------------- the editor networks
def shape_key(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


class EditorNet(nn.Module):
    """g for one weight shape ``[out, in]``: normalised ``[u; delta]`` through ``blocks`` low-rank residual
    blocks, with a scale and shift per site sharing it, back to the inputs' scale. Identity at initialisation."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, shape: Sequence[int], n_sites: int, rank: int, blocks: int) -> None:
        super().__init__()
        self.out_dim, self.in_dim = int(shape[0]), int(shape[1])
        dim = self.in_dim + self.out_dim
        self.down = nn.ModuleList(nn.Linear(dim, rank) for _ in range(blocks))
        ups = [nn.Linear(rank, dim, bias=False) for _ in range(blocks)]
        for up in ups:
            nn.init.zeros_(up.weight)
        self.up = nn.ModuleList(ups)
        self.scale = nn.Parameter(torch.ones(blocks, n_sites, rank))
        self.shift = nn.Parameter(torch.zeros(blocks, n_sites, rank))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, u: torch.Tensor, delta: torch.Tensor, site: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = (torch.cat([u, delta], dim=1) - self.mean) / self.std
        for b, (down, up) in enumerate(zip(self.down, self.up, strict=True)):
            z = z + up(torch.relu(self.scale[b, site] * down(z) + self.shift[b, site]))
        z = z * self.std + self.mean
        return z[:, : self.in_dim], z[:, self.in_dim :]


class MENDParts(nn.Module):
    """Every editor network of one artifact and alpha_l per site. ``spec`` (recorded with the part) says which
    sites: ``{"sites": [[layer, part], ...], "shapes": [[out, in], ...], "rank", "blocks", "alpha_init"}``."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__()
        self.sites = [(int(layer), str(part)) for layer, part in spec["sites"]]
        shapes = [shape_key(s) for s in spec["shapes"]]
        self.shape_of = dict(zip(self.sites, shapes, strict=True))
        self.index: dict[tuple[int, str], int] = {}
        counts: dict[str, int] = {}
        for site, key in self.shape_of.items():
            self.index[site] = counts.get(key, 0)
            counts[key] = self.index[site] + 1
        self.nets = nn.ModuleDict(
            {
                key: EditorNet([int(d) for d in key.split("x")], n, int(spec["rank"]), int(spec["blocks"]))
                for key, n in counts.items()
            }
        )
        self.log_alpha = nn.Parameter(torch.full((len(self.sites),), float(spec["alpha_init"])).log())

    def net(self, key: str) -> EditorNet:
        net = self.nets[key]
        assert isinstance(net, EditorNet)
        return net

    def set_normalisation(self, factors: Sequence[Factors], names: Sequence[str]) -> None:
        """Mean and standard deviation of ``[u; delta]`` per weight shape, over every token of ``factors``."""
        with torch.no_grad():
            for key in self.nets:
                net = self.net(key)
                z = torch.cat(
                    [
                        torch.cat(f[n], dim=1)
                        for f in factors
                        for n, site in zip(names, self.sites, strict=True)
                        if self.shape_of[site] == key
                    ]
                )
                net.mean.copy_(z.mean(0))
                net.std.copy_(z.std(0).clamp_min(1e-6) if len(z) > 1 else torch.ones_like(z[0]))

    def updates(self, factors: Factors, names: Sequence[str], scale: float = 1.0) -> dict[str, torch.Tensor]:
        """Each site's change ``-alpha_l sum_t delta~_t u~_t^T`` (``[out, in]``), differentiable in the parts."""
        alpha = self.log_alpha.exp() * scale
        changes = {}
        for i, (site, name) in enumerate(zip(self.sites, names, strict=True)):
            u, delta = factors[name]
            u_t, delta_t = self.net(self.shape_of[site])(u, delta, self.index[site])
            changes[name] = -alpha[i] * (delta_t.T @ u_t)
        return changes


# --------------------------------------------------------------------------- the editor
@dataclass
class MENDConfig(EditorConfig):
    artifacts: str | None = field(
        default=None,
        metadata={
            "help": "folder written by `editkit train mend` ({model} in it is replaced by the base model's name); "
            "default: the parts packaged with editkit"
        },
    )
    edit_scale: float = field(default=1.0, metadata={"help": "multiplies every learned step size alpha_l"})


@register
class MEND(WeightEditor):
    name = "mend"
    config_cls: ClassVar[type[EditorConfig]] = MENDConfig
    capabilities: ClassVar[Capabilities] = Capabilities(storage="weights", trained=True, batch=True)
    config: MENDConfig

    def __init__(self, config: EditorConfig | None = None) -> None:
        super().__init__(config)
        self._loaded: dict[str, tuple[Path, MENDParts]] = {}

    def folder(self, lm: LanguageModel) -> Path:
        return find("mend", self.config.artifacts, model=lm.name)

    def parts(self, lm: LanguageModel) -> MENDParts:
        """The trained parts for ``lm``: verified (refused when trained for another model) once per model."""
        if lm.name not in self._loaded:
            folder = self.folder(lm)
            manifest = verify(folder, [PART], base_model=lm.name)
            parts = MENDParts(manifest["parts"][PART]["spec"])
            try:
                parts.load_state_dict(load_tensors(folder / PART))
            except RuntimeError as e:
                first = str(e).strip().splitlines()[-1].strip()
                raise ValidationError(f"{folder / PART} does not hold the parts its manifest describes: {first}") from e
            for layer, part in parts.sites:
                lm.adapter.check_layer(lm.model, layer)
                weight = lm.model.get_parameter(lm.adapter.weight_name(layer, part))
                shape = tuple(lm.adapter.as_out_in(weight).shape)
                if shape_key(shape) != parts.shape_of[(layer, part)]:
                    raise ValidationError(f"{folder / PART} edits layer {layer} {part} of another shape than {shape}")
            self._loaded[lm.name] = (folder, parts.eval().requires_grad_(False))
        return self._loaded[lm.name][1]

    def prepare(self, lm: LanguageModel, *, progress: bool = False) -> None:
        """Load and verify the parts for ``lm`` (so that a run's header records their fingerprint)."""
        self.parts(lm)

    def provenance(self) -> dict[str, str]:
        return {f"{PART}:{model}": part_fingerprint(folder / PART) for model, (folder, _) in self._loaded.items()}

    def target_parameters(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> list[str]:
        return site_names(lm, self.parts(lm).sites)

    def compute(
        self, lm: LanguageModel, requests: Sequence[EditRequest], params: dict[str, nn.Parameter]
    ) -> WeightUpdate:
        parts = self.parts(lm)
        names = site_names(lm, parts.sites)
        batch = lm.teacher_forced([r.text for r in requests], [r.target_new for r in requests])
        factors, before = gradient_factors(lm, parts.sites, batch)
        with torch.no_grad():
            changes = parts.updates(factors, names, self.config.edit_scale)
            for name, change in changes.items():
                params[name].add_(lm.adapter.from_out_in(change).to(params[name].dtype))
            index, valid = batch.positions()
            after = -(batch.token_logprobs(lm.logits_at(batch.inputs, index)).sum(1) / valid.sum(1)).sum()
        info = {
            "nll_before": float(before) / len(requests),
            "nll_after": float(after) / len(requests),
            "update_norms": {n: float(c.norm()) for n, c in changes.items()},
        }
        return WeightUpdate({n: params[n].detach().clone() for n in names}, info)
