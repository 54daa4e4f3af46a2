"""ENN: Editable Neural Networks (Sinitsin et al., 2020).

Editable training (``editkit train enn``, :mod:`editkit.training.enn`) meta-learns the MLP weights of the top
layers of a base model (the rest stay frozen) so that a few plain gradient steps on an edit's loss make the edit
take while other outputs stay; at edit time ENN is exactly those steps: ``theta <- theta - lr_p * grad_p
L_edit(theta)`` for every declared parameter p, ``steps`` times, with the trained (possibly learned
per-parameter) inner rates. :func:`edit_steps` is that loop, shared with the trainer (which differentiates
through it).

The meta-trained weights are the model ENN edits, but the model a user holds is the base model; the handle's
contract (rollback bit for bit to what the model held before ``apply``; only declared parameters change) is
kept by choosing each declared parameter's starting point from what it holds now:

* it holds the base weights the parts were trained from (checked by sha256, recorded at training): the edit
  starts from the meta-trained values, so the applied edit writes meta-trained + edit steps;
* anything else (an earlier ENN edit, or :meth:`ENN.meta_trained` applied): the edit starts from the current
  values.

Rollback restores what the model held before, the base weights included. So in a sequential run the unedited
model (the one scored before any edit) is the base model, the first edit carries the meta-training's change
with it (its drift includes ``||meta - base||``), and every later edit starts from the weights the earlier ones
left. :meth:`ENN.meta_trained` applies the meta-trained unedited model as a rollbackable handle, for scoring
what editable training itself cost (and, applied before a run, making it the run's unedited model).
ENN assumes it is the only editor of its parameters: a parameter another method changed counts as "current".
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from editkit.editors.base import Capabilities, WeightEditor, WeightUpdate, register
from editkit.editors.config import EditorConfig
from editkit.editors.handle import EditHandle, ParamChange
from editkit.edits import EditRequest
from editkit.errors import ConfigError, ValidationError
from editkit.files import tensor_sha256
from editkit.models.lm import LanguageModel, TeacherForcedBatch
from editkit.trained import find, load_tensors, part_fingerprint, verify

PART = "enn"
SITES = ("mlp_in", "mlp_out")


# --------------------------------------------------------------------------- the inner loop (editor and trainer)
def enn_parameter_names(lm: LanguageModel, layers: int, sites: Sequence[str]) -> list[str]:
    """The weights ENN meta-trains and edits: ``sites`` of the top ``layers`` layers, lowest layer first."""
    n = lm.adapter.n_layers(lm.model)
    if not 1 <= layers <= n:
        raise ConfigError(f"ENN edits the top 1..{n} layers of {lm.name}; got layers={layers}")
    bad = [s for s in sites if s not in SITES]
    if bad or not sites:
        raise ConfigError(f"ENN sites must be among {', '.join(SITES)}; got {list(sites)}")
    return [lm.adapter.weight_name(layer, site) for layer in range(n - layers, n) for site in sites]


class _LogitsAt(nn.Module):
    """``lm.logits_at`` as a module over ``lm.model``, so :func:`torch.func.functional_call` can run it with some
    parameters replaced by other tensors (the meta-trained or edited weights, inside an autograd graph)."""

    def __init__(self, lm: LanguageModel) -> None:
        super().__init__()
        self.model = lm.model
        self.lm = lm

    def forward(self, inputs: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        return self.lm.logits_at(inputs, index)


def logits_with(lm: LanguageModel, weights: Mapping[str, torch.Tensor], tf: TeacherForcedBatch) -> torch.Tensor:
    """Logits at ``tf``'s predicting positions with the named parameters replaced by ``weights``."""
    index, _ = tf.positions()
    replaced = {f"model.{n}": w for n, w in weights.items()}
    out: torch.Tensor = torch.func.functional_call(_LogitsAt(lm), replaced, (tf.inputs, index))
    return out


def target_nll(lm: LanguageModel, weights: Mapping[str, torch.Tensor], tf: TeacherForcedBatch) -> torch.Tensor:
    """ENN's edit loss: the mean negative log-likelihood per target token of ``tf``'s continuations."""
    _, valid = tf.positions()
    return -(tf.token_logprobs(logits_with(lm, weights, tf)).sum() / valid.sum())


def edit_steps(
    lm: LanguageModel,
    start: Mapping[str, torch.Tensor],
    lrs: Mapping[str, torch.Tensor | float],
    tf: TeacherForcedBatch,
    steps: int,
    *,
    create_graph: bool,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """``steps`` gradient steps on :func:`target_nll` from ``start``: ``w <- w - lrs[name] * grad``. With
    ``create_graph`` the result stays differentiable in ``start`` and ``lrs`` (editable training); without,
    each step's weights are detached (editing). Returns the weights and each step's loss."""
    weights = {n: w if create_graph else w.detach().requires_grad_(True) for n, w in start.items()}
    losses: list[float] = []
    with torch.enable_grad():
        for _ in range(steps):
            loss = target_nll(lm, weights, tf)
            grads = torch.autograd.grad(loss, list(weights.values()), create_graph=create_graph, allow_unused=True)
            stepped = {n: w if g is None else w - lrs[n] * g for (n, w), g in zip(weights.items(), grads, strict=True)}
            weights = stepped if create_graph else {n: w.detach().requires_grad_(True) for n, w in stepped.items()}
            losses.append(float(loss.detach()))
    return weights, losses


# --------------------------------------------------------------------------- trained parts
@dataclass(frozen=True)
class ENNParts:
    """One verified ENN artifact for one base model."""

    names: list[str]  # declared parameters, in training order
    weights: dict[str, torch.Tensor]  # meta-trained values
    base_sha256: dict[str, str]  # sha256 of the base values they were trained from
    lrs: dict[str, float]  # inner learning rate per parameter (learned or fixed at training)
    steps: int  # inner steps used at training
    dtype: str
    fingerprint: str


def load_parts(folder: Path, lm: LanguageModel) -> ENNParts:
    """Verify and load the ENN part in ``folder`` for ``lm`` (refused, in one line, for another base model)."""
    manifest = verify(folder, [PART], base_model=lm.name)
    meta = manifest["parts"][PART]
    tensors = load_tensors(folder / PART)
    names = list(meta["parameters"])
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValidationError(f"{folder / PART} lacks the trained values of {missing[0]}; retrain it")
    return ENNParts(
        names=names,
        weights={n: tensors[n] for n in names},
        base_sha256=dict(meta["base_sha256"]),
        lrs={n: float(v) for n, v in meta["lrs"].items()},
        steps=int(meta["inner_steps"]),
        dtype=str(meta["dtype"]),
        fingerprint=part_fingerprint(folder / PART),
    )


# --------------------------------------------------------------------------- editor
@dataclass
class ENNConfig(EditorConfig):
    artifacts: str | None = field(
        default=None,
        metadata={
            "help": "folder written by `editkit train enn` ({model} in it: the base model's name); "
            "default: the user cache's parts, trained there on first use for SmolLM2-135M "
            "(EDITKIT_TRAIN_ON_FIRST_USE=0: off)"
        },
    )
    steps: int | None = field(
        default=None, metadata={"help": "gradient steps per edit; default: the inner steps it was meta-trained with"}
    )
    lr: float | None = field(
        default=None,
        metadata={"help": "one inner learning rate for every parameter; default: the trained per-parameter rates"},
    )

    def validate(self) -> None:
        if self.steps is not None and self.steps < 0:
            raise ConfigError(f"ENN: steps must be >= 0, got {self.steps}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"ENN: lr must be > 0, got {self.lr}")


@register
class ENN(WeightEditor):
    """A few gradient steps on the edit, from weights meta-trained to take them (see the module docstring)."""

    name = "enn"
    config_cls: ClassVar[type[EditorConfig]] = ENNConfig
    capabilities: ClassVar[Capabilities] = Capabilities(storage="weights", trained=True, batch=True)
    config: ENNConfig

    def __init__(self, config: EditorConfig | None = None) -> None:
        super().__init__(config)
        self._parts: dict[str, ENNParts] = {}

    def parts(self, lm: LanguageModel) -> ENNParts:
        """The verified parts for ``lm`` (loaded once per base model)."""
        if lm.name not in self._parts:
            self._parts[lm.name] = load_parts(find(PART, self.config.artifacts, model=lm.name), lm)
        return self._parts[lm.name]

    def provenance(self) -> dict[str, str]:
        return {f"{PART}:{model}": parts.fingerprint for model, parts in sorted(self._parts.items())}

    def target_parameters(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> list[str]:
        return list(self.parts(lm).names)

    def _check_dtype(self, parts: ENNParts, params: Mapping[str, torch.Tensor]) -> None:
        for n, p in params.items():
            if str(p.dtype) != parts.dtype:
                raise ValidationError(f"ENN parts were trained in {parts.dtype}; {n} holds {p.dtype}")

    def starting_point(
        self, lm: LanguageModel, params: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], str]:
        """Where an edit starts, per parameter: the meta-trained values where the model holds the base weights
        they were trained from, else the current values; and which ("meta-trained", "current" or "mixed")."""
        parts = self.parts(lm)
        self._check_dtype(parts, params)
        start: dict[str, torch.Tensor] = {}
        origins = set()
        for n, p in params.items():
            if tensor_sha256(p) == parts.base_sha256[n]:
                start[n] = parts.weights[n].to(p.device)
                origins.add("meta-trained")
            else:
                start[n] = p.detach().clone()
                origins.add("current")
        return start, origins.pop() if len(origins) == 1 else "mixed"

    def compute(
        self, lm: LanguageModel, requests: Sequence[EditRequest], params: dict[str, nn.Parameter]
    ) -> WeightUpdate:
        parts = self.parts(lm)
        steps = parts.steps if self.config.steps is None else self.config.steps
        lrs = {n: parts.lrs[n] if self.config.lr is None else self.config.lr for n in params}
        start, origin = self.starting_point(lm, params)
        tf = lm.teacher_forced([r.text for r in requests], [r.target_new for r in requests])
        edited, losses = edit_steps(lm, start, lrs, tf, steps, create_graph=False)
        with torch.no_grad():
            after = float(target_nll(lm, edited, tf))
        info: dict[str, Any] = {"start": origin, "steps": steps, "target_nll_after": after}
        if losses:
            info["target_nll_before"] = losses[0]
        return WeightUpdate({n: w.detach() for n, w in edited.items()}, info)

    def meta_trained(self, lm: LanguageModel) -> EditHandle:
        """Write the meta-trained weights into ``lm`` (which must hold the base weights they were trained from)
        and return the handle: the meta-trained unedited model, for scoring what editable training cost; its
        rollback restores the base weights bit for bit. ENN edits made while it is applied start from it."""
        t0 = time.perf_counter()
        parts = self.parts(lm)
        all_params = dict(lm.model.named_parameters())
        params = {n: all_params[n] for n in parts.names}
        self._check_dtype(parts, params)
        held = [n for n, p in params.items() if tensor_sha256(p) != parts.base_sha256[n]]
        if held:
            raise ValidationError(
                f"{lm.name} does not hold the base weights ENN was trained from at {held[0]}; roll back its edits first"
            )
        changes = {
            n: ParamChange(original=p.detach().cpu().clone(), edited=parts.weights[n].clone())
            for n, p in params.items()
        }
        info = {"meta_trained": True, "seconds": time.perf_counter() - t0}
        handle = EditHandle(self.name, self.config.to_dict(), [], lm, changes, info, applied=False)
        handle.reapply()
        return handle
