"""Weight drift: how far edited weights have moved from the originals (Gupta et al., forgetting paper, §3.4 and
footnote 5: the L2 norm between original and edited weights, normalised by the number of neurons of the layer).

The originals come from the edit handles (the first original seen for each parameter), so any method that
changes weights is tracked and methods that change none report no drift. "Neurons" are the output units of
the module that owns the parameter (``out_features`` of a linear layer, ``nf`` of GPT-2's Conv1D), else the
parameter's first dimension.
"""

from __future__ import annotations

import torch
from torch import nn

from editkit.editors.base import EditHandle


def neurons(model: nn.Module, name: str, param: torch.Tensor) -> int:
    owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    for attr in ("out_features", "nf"):
        value = getattr(owner, attr, None)
        if isinstance(value, int):
            return value
    return int(param.shape[0]) if param.dim() else 1


class DriftTracker:
    """Remembers the original of every parameter any tracked edit changed."""

    def __init__(self) -> None:
        self.originals: dict[str, torch.Tensor] = {}

    def track(self, handle: EditHandle) -> None:
        for name, change in handle.changes.items():
            self.originals.setdefault(name, change.original)

    @torch.no_grad()
    def measure(self, model: nn.Module) -> dict[str, float]:
        """``||W - W_0||_2 / neurons`` per changed parameter."""
        params = dict(model.named_parameters())
        out = {}
        for name, original in self.originals.items():
            current = params[name].detach().cpu().double()
            out[name] = float((current - original.double()).norm() / neurons(model, name, current))
        return out


@torch.no_grad()
def edit_drift(model: nn.Module, handle: EditHandle) -> float:
    """How far one edit moved the weights: the sum over the parameters it changed of
    ``||W_after - W_before||_2 / neurons`` (the increment a sequential run's drift curve takes at this edit)."""
    total = 0.0
    for name, change in handle.changes.items():
        delta = change.edited.double() - change.original.double()
        total += float(delta.norm() / neurons(model, name, change.edited))
    return total
