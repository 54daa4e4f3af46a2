"""ROME: Rank-One Model Editing (Meng et al., 2022, "Locating and Editing Factual Associations in GPT").

The MLP output projection W of one layer is treated as a linear associative memory mapping keys k (its
inputs) to values v (its outputs). An edit inserts one new pair (k*, v*):

* k* (ROME eq. 3): the key at the subject's last token, averaged over the bare prompt and prompts prefixed
  with short texts sampled from the model (a seeded generator, so an edit is reproducible).
* v* (ROME eq. 4): the MLP output that makes the model say the new target. We optimise a residual delta added
  to the projection's output at the subject's last token of every (context-prefixed) prompt, minimising the
  target's NLL plus ``kl_factor`` * KL(original || edited) on "{subject} is a" (the essence-drift term),
  with weight decay on delta and its norm clamped to ``clamp_norm_factor`` times the original output's norm.
* The update (ROME eq. 2): ``W' = W + delta u^T / (u^T k_0)`` with ``u = C^{-1} k*``, C = E[k k^T] the key
  second moment (see :mod:`editkit.editors.stats`) and k_0 the key of the bare prompt. The direction
  ``C^{-1} k*`` is the closed-form minimiser of ``||W' K - W K||`` for a rank-one change; normalising by the
  bare prompt's key (as ROME's reference implementation does) makes the edit prompt itself produce exactly
  ``W k_0 + delta``. Normalising by k* instead leaves the bare prompt short of its target when its key is
  far from the context average (measured: P(" tennis") 0.003 instead of > 0.9 on one SmolLM2 edit).
  Without a corpus C = I (EasyEdit's llama default).

The search for k* and v* (context templates, the optimisation and its forward passes) is shared with MEMIT and
AlphaEdit: :mod:`editkit.editors.locate`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from editkit.editors.base import Capabilities, WeightUpdate, register
from editkit.editors.handle import pack_tensor, recorded_tensor
from editkit.editors.locate import LocateEditConfig, LocateEditor, TargetResidual
from editkit.edits import EditRequest
from editkit.models.lm import LanguageModel


@dataclass
class ROMEConfig(LocateEditConfig):
    layer: int | None = field(
        default=None, metadata={"help": "layer to edit; default: the model's ROME layer (lm.default_rome_layer)"}
    )


@register
class ROME(LocateEditor):
    name = "rome"
    config_cls = ROMEConfig
    capabilities = Capabilities(storage="weights", batch=False, needs_subject=True, replay=True)
    config: ROMEConfig

    def layer(self, lm: LanguageModel) -> int:
        layer = self.config.layer if self.config.layer is not None else lm.default_rome_layer
        lm.adapter.check_layer(lm.model, layer)
        return layer

    def target_parameters(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> list[str]:
        return [lm.adapter.weight_name(self.layer(lm), "mlp_out")]

    def residual_site(self, lm: LanguageModel) -> tuple[int, Literal["mlp_out", "block"]]:
        return self.layer(lm), "mlp_out"

    def prepare(self, lm: LanguageModel, *, progress: bool = False) -> None:
        self.context_templates(lm)
        self.covariance(lm, self.layer(lm), progress=progress)

    def compute(
        self, lm: LanguageModel, requests: Sequence[EditRequest], params: dict[str, nn.Parameter]
    ) -> WeightUpdate:
        (req,) = requests
        return self._update(lm, params, self.target_residual(lm, req, *self.residual_site(lm)))

    def recompute(
        self,
        lm: LanguageModel,
        requests: Sequence[EditRequest],
        params: dict[str, nn.Parameter],
        recorded: Mapping[str, Any],
    ) -> WeightUpdate:
        (req,) = requests
        given = recorded_tensor(recorded, "delta")
        return self._update(lm, params, self.target_residual(lm, req, *self.residual_site(lm), given=given))

    def _update(self, lm: LanguageModel, params: dict[str, nn.Parameter], r: TargetResidual) -> WeightUpdate:
        """ROME's rank-one change of the edited layer for the optimised residual; ``info["replay"]`` keeps the
        residual (v* - v), which with the keys read again from the same weights makes the same change."""
        layer = r.info["layer"]
        name = lm.adapter.weight_name(layer, "mlp_out")
        cov = self.covariance(lm, layer)
        w = params[name].detach()
        update = rank_one_update(r.k_star, r.delta, cov, anchor=r.k_bare).to(w.device)
        info = {**r.info, "replay": {"delta": pack_tensor(r.delta)}}
        # In float32: a bfloat16 / float16 weight is rounded once, when the edit is applied.
        return WeightUpdate({name: w.float() + lm.adapter.from_out_in(update)}, info)


def rank_one_update(
    k_star: torch.Tensor, delta: torch.Tensor, cov: torch.Tensor | None, anchor: torch.Tensor | None = None
) -> torch.Tensor:
    """The ``[out, in]`` update ``delta u^T / (u^T a)`` with ``u = C^{-1} k*`` and ``a = anchor`` (default k*).

    With ``anchor = k*`` it is the minimiser of ``E||(W' - W) k||^2`` over keys with second moment C, subject
    to ``W' k* = W k* + delta`` (ROME eq. 2). With another anchor the constraint holds at the anchor instead.
    """
    k = k_star.double()
    a = k if anchor is None else anchor.double()
    u = k if cov is None else torch.linalg.solve(cov.double(), k)
    return (torch.outer(delta.double(), u) / (u @ a)).float()


__all__ = ["ROME", "ROMEConfig", "rank_one_update"]
