"""Fine-tuning baselines.

* FT: gradient descent (Adam) on the edit's negative log-likelihood, updating chosen weights of chosen layers
  (SERAC §5 "FT"; ROME's "FT").
* FT-C: the same with the weight change held inside a norm ball after every step. With the L-infinity ball
  this is ROME's FT+L and the forgetting paper's FT-C (its appendix A.2: ``||theta_G - theta_G'||_inf <= eps``,
  Adam, lr 5e-4, one MLP layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from editkit.editors.base import Capabilities, WeightEditor, WeightUpdate, register
from editkit.editors.config import EditorConfig
from editkit.edits import EditRequest
from editkit.errors import ConfigError
from editkit.models.lm import LanguageModel

Part = Literal["mlp_out", "mlp_in", "attn_out"]


@dataclass
class FTConfig(EditorConfig):
    layers: list[int] | None = field(default=None, metadata={"help": "layers to tune; default: the model's edit layer"})
    parts: list[str] = field(
        default_factory=lambda: ["mlp_out"], metadata={"help": "weights per layer: mlp_out, mlp_in, attn_out"}
    )
    lr: float = field(default=5e-4, metadata={"help": "Adam learning rate"})
    steps: int = field(default=25, metadata={"help": "maximum optimisation steps"})
    stop_loss: float = field(default=1e-2, metadata={"help": "stop once the mean target NLL is below this"})

    def validate(self) -> None:
        if self.lr <= 0 or self.steps < 1:
            raise ConfigError(f"{type(self).__name__}: lr must be > 0 and steps >= 1")
        bad = [p for p in self.parts if p not in ("mlp_out", "mlp_in", "attn_out")]
        if bad or not self.parts:
            raise ConfigError(f"{type(self).__name__}: parts must be among mlp_out, mlp_in, attn_out; got {self.parts}")


@dataclass
class FTCConfig(FTConfig):
    norm: Literal["linf", "l2"] = field(
        default="linf", metadata={"help": "norm of the ball around the original weights"}
    )
    radius: float = field(default=5e-4, metadata={"help": "ball radius (linf: per element; l2: Frobenius, per matrix)"})

    def validate(self) -> None:
        super().validate()
        if self.radius <= 0:
            raise ConfigError("FT-C: radius must be positive")


@register
class FT(WeightEditor):
    name = "ft"
    config_cls: ClassVar[type[EditorConfig]] = FTConfig
    capabilities = Capabilities(storage="weights", batch=True)
    config: FTConfig

    def target_parameters(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> list[str]:
        layers = self.config.layers if self.config.layers is not None else [lm.default_edit_layer]
        for layer in layers:
            lm.adapter.check_layer(lm.model, layer)
        return [lm.adapter.weight_name(layer, part) for layer in layers for part in self.config.parts]

    def project(self, params: dict[str, torch.Tensor], originals: dict[str, torch.Tensor]) -> None:
        """Hook for constrained variants: called after every optimiser step."""

    def compute(
        self, lm: LanguageModel, requests: Sequence[EditRequest], params: dict[str, nn.Parameter]
    ) -> WeightUpdate:
        batch = lm.teacher_forced([r.text for r in requests], [r.target_new for r in requests])
        n_tok = batch.pred_mask.sum(1).clamp_min(1)
        index, _ = batch.positions()
        for p in lm.model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        # A bfloat16 / float16 model is tuned through float32 master copies (Adam's state and the constraint in
        # float32; the model's weights follow, rounded, after every step); a float32 model's weights are tuned
        # in place.
        low = any(p.dtype != torch.float32 for p in params.values())
        masters: dict[str, torch.Tensor] = (
            {n: p.detach().float().clone().requires_grad_(True) for n, p in params.items()} if low else dict(params)
        )
        originals = {n: p.detach().clone() for n, p in masters.items()}
        opt = torch.optim.Adam(list(masters.values()), lr=self.config.lr)
        losses: list[float] = []
        with torch.enable_grad():
            for _ in range(self.config.steps):
                opt.zero_grad()
                lp = batch.token_logprobs(lm.logits_at(batch.inputs, index))
                loss = -(lp.sum(1) / n_tok).mean()
                losses.append(loss.item())
                if losses[-1] < self.config.stop_loss:
                    break
                loss.backward()
                if low:
                    for n, p in params.items():
                        masters[n].grad = None if p.grad is None else p.grad.float()
                        p.grad = None
                opt.step()
                with torch.no_grad():
                    self.project(masters, originals)
                    if low:
                        for n, p in params.items():
                            p.copy_(masters[n])
        new = {n: p.detach().clone() for n, p in masters.items()}
        return WeightUpdate(new, {"steps": len(losses), "nll_first": losses[0], "nll_last": losses[-1]})


@register
class FTC(FT):
    name = "ft-c"
    config_cls = FTCConfig
    config: FTCConfig

    def project(self, params: dict[str, torch.Tensor], originals: dict[str, torch.Tensor]) -> None:
        for n, p in params.items():
            w0 = originals[n]
            if self.config.norm == "linf":
                p.copy_(torch.maximum(torch.minimum(p, w0 + self.config.radius), w0 - self.config.radius))
            else:
                d = p - w0
                norm = d.norm()
                if norm > self.config.radius:
                    p.copy_(w0 + d * (self.config.radius / norm))
