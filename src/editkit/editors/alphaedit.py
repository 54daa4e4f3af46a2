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

With P = U U^T (U: the r null-space eigenvectors) the transposed update X solves (P A + alpha I) X = P K R^T,
whose solution lies in the range of P: X = U Z with the r x r positive definite system
(U^T A U + alpha I) Z = U^T K R^T, solved by Cholesky for U^T K alone (Z = W R^T, so the update is R (U W)^T),
and U^T K_p K_p^T U kept as a running sum. That is the formula's update (tested against it) for a fraction of
the d x d solve's arithmetic.

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


def null_space_basis(cov: torch.Tensor, threshold: float) -> torch.Tensor:
    """U ``[in, r]`` (float64, orthonormal columns): the eigenvectors of the symmetric ``cov`` whose eigenvalues
    are below ``threshold`` times the largest one. P = U U^T projects onto the null space."""
    values, vectors = torch.linalg.eigh(cov.double())
    return vectors[:, values < threshold * values.max()].contiguous()


def alphaedit_update(
    resid: torch.Tensor, keys: torch.Tensor, basis: torch.Tensor, previous: torch.Tensor, alpha: float
) -> torch.Tensor:
    """``[out, in]`` update ``R K^T P (K_p K_p^T P + K K^T P + alpha I)^{-1}`` with P = U U^T, for residuals
    ``R`` ``[out, n]``, keys ``K`` ``[in, n]``, the null space's basis ``U`` ``[in, r]`` and ``previous`` =
    U^T K_p K_p^T U ``[r, r]``: solved in the null space (see the module docstring)."""
    u = basis.double()
    uk = u.T @ keys.double()  # [r, n]
    system = previous.double() + uk @ uk.T
    system.diagonal().add_(alpha)
    w = torch.cholesky_solve(uk, torch.linalg.cholesky(system))  # [r, n]: Z = w R^T
    return (resid.double() @ (u @ w).T).float()


@register
class AlphaEdit(MEMIT):
    name = "alphaedit"
    config_cls = AlphaEditConfig
    config: AlphaEditConfig

    def __init__(self, config: AlphaEditConfig | None = None) -> None:
        super().__init__(config)
        self._bases: dict[tuple[int, int], torch.Tensor] = {}
        # Per model: every apply made, in order; and per layer (entries summed, their U^T K_p K_p^T U).
        self._history: weakref.WeakKeyDictionary[nn.Module, list[_Made]] = weakref.WeakKeyDictionary()
        self._grams: weakref.WeakKeyDictionary[nn.Module, dict[int, tuple[tuple[int, ...], torch.Tensor]]] = (
            weakref.WeakKeyDictionary()
        )

    def basis(self, lm: LanguageModel, layer: int) -> torch.Tensor:
        """U ``[in, r]``: the null space of the preserved keys' statistics at ``layer`` (:func:`null_space_basis`)."""
        key = (id(lm.model), layer)
        if key not in self._bases:
            cov = self.preserved_covariance(lm, layer)
            assert cov is not None  # the config requires a corpus
            self._bases[key] = null_space_basis(cov, self.config.nullspace_threshold)
        return self._bases[key]

    def previous_keys(self, lm: LanguageModel, layer: int) -> torch.Tensor:
        """U^T K_p K_p^T U at ``layer`` (float64, ``[r, r]``): the keys of this editor's edits that are applied to
        ``lm`` now, in the null space's basis, summed in the order they were made. Edits added since the last
        call are added to the kept sum; after a rollback or reapply the sum is made again."""
        made = self._history.get(lm.model, [])
        active = tuple(i for i, m in enumerate(made) if m.applied)
        grams = self._grams.setdefault(lm.model, {})
        cached = grams.get(layer)
        u = self.basis(lm, layer)
        if cached is None or active[: len(cached[0])] != cached[0]:
            cached = ((), torch.zeros((u.shape[1], u.shape[1]), dtype=torch.float64))
        summed, total = cached
        for i in active[len(summed) :]:
            uk = u.T @ made[i].keys[layer].double().to(u.device)
            total = total + uk @ uk.T
        grams[layer] = (active, total)
        return total

    def layer_update(self, lm: LanguageModel, layer: int, resid: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        basis = self.basis(lm, layer).to(keys.device)
        previous = self.previous_keys(lm, layer).to(keys.device)
        return alphaedit_update(resid, keys, basis, previous, self.config.l2)

    def prepare(self, lm: LanguageModel, *, progress: bool = False) -> None:
        super().prepare(lm, progress=progress)
        for layer in self.layers(lm):
            self.basis(lm, layer)

    def committed(self, lm: LanguageModel, handle: EditHandle, update: WeightUpdate) -> None:
        """Keep the edit's keys per layer (the ones MEMIT's walk solved each update for) and follow its handle's
        rollbacks, so that they count in K_p while the edit is applied."""
        made = _Made({layer: update.remember[lm.adapter.weight_name(layer, "mlp_out")] for layer in self.layers(lm)})
        handle.watchers.append(made.follow)
        self._history.setdefault(lm.model, []).append(made)
        handle.info["null_space_dims"] = {layer: self.basis(lm, layer).shape[1] for layer in self.layers(lm)}

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


__all__ = ["AlphaEdit", "AlphaEditConfig", "alphaedit_update", "null_space_basis"]
