"""AlphaEdit: null-space constrained knowledge editing (Fang et al., 2025), MEMIT's update projected so that it
leaves the preserved knowledge alone.

Everything is MEMIT's (targets z at the last layer, the layer walk, the residual shared out) except the update
of each layer. With C = E[k k^T] of the preserved keys (the corpus statistics) and P the projection onto the
span of C's eigenvectors whose eigenvalues are below ``nullspace_threshold`` times the largest (the paper uses
an absolute threshold, 2e-2 for its models; key scales differ by orders of magnitude between models, measured
from 3e-4 to 18 for the largest eigenvalue of tiny test models alone, so editkit's threshold is relative),
AlphaEdit solves

    Delta = R K^T P (K_p K_p^T P + K K^T P + alpha I)^{-1}

where K are this batch's keys, K_p the keys of earlier edits still applied to the model (so a sequence of
edits does not undo its own past), and alpha = ``l2``. Since (P A + alpha I)^{-1} P = P (A P + alpha I)^{-1},
the update is zero on every key that P removes: the outputs of the preserved keys do not move, however many
edits follow. That is the remedy the forgetting study asks for: MEMIT's damage accumulates through keys it
was told to preserve only softly.

Earlier edits are tracked per model: each apply keeps its keys (a few KB per layer) and follows its handle's
rollbacks, so an edit rolled back no longer counts in K_p; K_p K_p^T is a running sum, recomputed only after a
rollback. ``export_state`` / ``import_state`` carry the keys over to a new process (a resumed sequential run);
an edit re-applied with ``EditHandle.load`` brings no keys, so a new editor does not protect it.
AlphaEdit needs a corpus: without one C = I has no null space.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from editkit.editors.base import WeightUpdate, register
from editkit.editors.handle import EditHandle
from editkit.editors.memit import MEMIT, MEMITConfig
from editkit.errors import ConfigError, ValidationError
from editkit.models.lm import LanguageModel


@dataclass
class _Made:
    """One apply of the editor to a model: its keys per layer (``[in, n]``) and whether it is applied now."""

    keys: dict[int, torch.Tensor]
    applied: bool = True

    def follow(self, applied: bool) -> None:
        self.applied = applied


@dataclass
class AlphaEditConfig(MEMITConfig):
    nullspace_threshold: float = field(
        default=1e-2,
        metadata={"help": "eigenvalues of C = E[kk^T] below this fraction of the largest span the null space"},
    )
    l2: float = field(default=10.0, metadata={"help": "alpha: weight of the identity term of the update"})

    def validate(self) -> None:
        if self.corpus is None:
            raise ConfigError(
                "AlphaEditConfig: a corpus is needed (corpus=FILE): the null space is that of its key statistics"
            )
        super().validate()
        if self.nullspace_threshold <= 0 or self.l2 <= 0:
            raise ConfigError("AlphaEditConfig: nullspace_threshold and l2 must be positive")


def null_space_projection(cov: torch.Tensor, threshold: float) -> torch.Tensor:
    """P = U_0 U_0^T over the eigenvectors of the symmetric ``cov`` whose eigenvalues are below ``threshold``
    times the largest one."""
    values, vectors = torch.linalg.eigh(cov.double())
    kept = vectors[:, values < threshold * values.max()]
    return (kept @ kept.T).float()


def alphaedit_update(
    resid: torch.Tensor, keys: torch.Tensor, projection: torch.Tensor, previous: torch.Tensor, alpha: float
) -> torch.Tensor:
    """``[out, in]`` update ``R K^T P (K_p K_p^T P + K K^T P + alpha I)^{-1}`` for residuals ``R`` ``[out, n]``,
    keys ``K`` ``[in, n]``, projection ``P`` and ``previous`` = K_p K_p^T (both ``[in, in]``)."""
    k, p = keys.double(), projection.double()
    a = previous.double() + k @ k.T
    eye = torch.eye(p.shape[0], dtype=torch.float64)
    # Solve X^T (A P + alpha I) = R K^T P as (P A + alpha I) X = P K R^T (A and P are symmetric).
    x = torch.linalg.solve(p @ a + alpha * eye, p @ k @ resid.double().T)
    return x.T.float()


@register
class AlphaEdit(MEMIT):
    name = "alphaedit"
    config_cls = AlphaEditConfig
    config: AlphaEditConfig

    def __init__(self, config: AlphaEditConfig | None = None) -> None:
        super().__init__(config)
        self._projections: dict[tuple[int, int], torch.Tensor] = {}
        # Per model: every apply made, in order; and per layer (entries summed, their K_p K_p^T).
        self._history: weakref.WeakKeyDictionary[nn.Module, list[_Made]] = weakref.WeakKeyDictionary()
        self._grams: weakref.WeakKeyDictionary[nn.Module, dict[int, tuple[tuple[int, ...], torch.Tensor]]] = (
            weakref.WeakKeyDictionary()
        )

    def projection(self, lm: LanguageModel, layer: int) -> torch.Tensor:
        key = (id(lm.model), layer)
        if key not in self._projections:
            cov = self.preserved_covariance(lm, layer)
            assert cov is not None  # the config requires a corpus
            self._projections[key] = null_space_projection(cov, self.config.nullspace_threshold)
        return self._projections[key]

    def previous_keys(self, lm: LanguageModel, layer: int, dim: int) -> torch.Tensor:
        """K_p K_p^T at ``layer`` (float64): the keys of this editor's edits that are applied to ``lm`` now,
        summed in the order they were made. Edits added since the last call are added to the kept sum; after a
        rollback or reapply the sum is made again."""
        made = self._history.get(lm.model, [])
        active = tuple(i for i, m in enumerate(made) if m.applied)
        grams = self._grams.setdefault(lm.model, {})
        cached = grams.get(layer)
        if cached is None or active[: len(cached[0])] != cached[0]:
            cached = ((), torch.zeros((dim, dim), dtype=torch.float64))
        summed, total = cached
        for i in active[len(summed) :]:
            k = made[i].keys[layer].double()
            total = total + k @ k.T
        grams[layer] = (active, total)
        return total

    def layer_update(self, lm: LanguageModel, layer: int, resid: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return alphaedit_update(
            resid,
            keys,
            self.projection(lm, layer),
            self.previous_keys(lm, layer, keys.shape[0]).to(keys.device),
            self.config.l2,
        )

    def prepare(self, lm: LanguageModel, *, progress: bool = False) -> None:
        super().prepare(lm, progress=progress)
        for layer in self.layers(lm):
            self.projection(lm, layer)

    def committed(self, lm: LanguageModel, handle: EditHandle, update: WeightUpdate) -> None:
        """Keep the edit's keys per layer (the ones MEMIT's walk solved each update for) and follow its handle's
        rollbacks, so that they count in K_p while the edit is applied."""
        made = _Made({layer: update.remember[lm.adapter.weight_name(layer, "mlp_out")] for layer in self.layers(lm)})
        handle.watchers.append(made.follow)
        self._history.setdefault(lm.model, []).append(made)
        dims = {layer: int((self.projection(lm, layer).diagonal().sum()).round()) for layer in self.layers(lm)}
        handle.info["null_space_dims"] = dims

    def export_state(self, lm: LanguageModel) -> dict[str, torch.Tensor]:
        """The keys of the edits applied now: ``keys.LAYER`` ``[in, total]`` and ``counts`` (keys per edit)."""
        made = [m for m in self._history.get(lm.model, []) if m.applied]
        if not made:
            return {}
        state = {"counts": torch.tensor([next(iter(m.keys.values())).shape[1] for m in made])}
        for layer in made[0].keys:
            state[f"keys.{layer}"] = torch.cat([m.keys[layer] for m in made], dim=1).contiguous()
        return state

    def import_state(self, lm: LanguageModel, tensors: Mapping[str, torch.Tensor]) -> None:
        if not tensors:
            return
        layers = sorted(int(k.removeprefix("keys.")) for k in tensors if k.startswith("keys."))
        if "counts" not in tensors or layers != sorted(self.layers(lm)):
            raise ValidationError(
                f"alphaedit: saved state holds keys of layers {layers}, this editor edits {sorted(self.layers(lm))}"
            )
        counts = [int(n) for n in tensors["counts"].tolist()]
        if any(tensors[f"keys.{layer}"].shape[1] != sum(counts) for layer in layers):
            raise ValidationError("alphaedit: saved state's keys do not add up to its counts")
        history = self._history.setdefault(lm.model, [])
        start = 0
        for n in counts:
            history.append(_Made({layer: tensors[f"keys.{layer}"][:, start : start + n].clone() for layer in layers}))
            start += n


__all__ = ["AlphaEdit", "AlphaEditConfig", "alphaedit_update", "null_space_projection"]
