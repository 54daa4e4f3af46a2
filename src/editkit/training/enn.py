"""ENN's editable training (Sinitsin et al., 2020, eq. 4-6), on the shared training loop.

The trainable part is a copy of the MLP weights of the top ``layers`` layers (``sites``), started from the base
model's values, and optionally one log inner learning rate per weight (``learn_lr``); the rest of the model is
frozen. Each step samples ``batch`` training cases and minimises

    edit_weight * L_edit + locality_weight * L_loc + base_weight * L_base

* L_edit: after ``inner_steps`` gradient steps on the requests' target NLL from the meta-trained weights
  (:func:`editkit.editors.enn.edit_steps`, differentiated through), the target NLL on the edit prompts and their
  rephrase probes (the edit must take, and on equivalent inputs);
* L_loc: KL(meta-trained || after the steps) at the answer positions of the cases' out / neighborhood probes
  (the edit must leave unrelated outputs alone);
* L_base: KL(base || meta-trained) at the same positions (the paper's L_base: the meta-trained model must
  stay close to the base model it replaces).

The artifact's part ``enn`` holds the meta-trained weights (in the model's dtype), and its manifest the sha256 of
the base weights they were trained from (the editor's check of what a model holds), the inner rates and steps.
With ``steps: 0`` the part is the base weights themselves: ENN without editable training (plain gradient steps).

:data:`RECIPES` is what ``editkit edit --method enn`` trains on first use when it finds no parts
(:func:`editkit.training.registry.first_use_training`): for SmolLM2-135M, the settings of
``benchmarks/configs/train_enn.yaml`` (300 steps; tests/test_enn_first_use.py keeps the two equal).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from editkit.editors.enn import PART, SITES, edit_steps, enn_parameter_names, logits_with, target_nll
from editkit.edits import EditCase, ProbeKind
from editkit.errors import ConfigError
from editkit.files import tensor_sha256
from editkit.models.lm import LanguageModel, TeacherForcedBatch
from editkit.trained import write_part
from editkit.training.loop import DATA_HELP, seed_torch, train_part, training_cases
from editkit.training.registry import Recipe, Trainer, register_trainer
from editkit.typedconfig import TypedConfig

LOCAL = (ProbeKind.OUT, ProbeKind.NEIGHBORHOOD)

# The default recipe, trained on first use: training splits only (zsRE train 1k, MEND schema; CounterFact train,
# EasyEdit schema), the rest of ENNTrainConfig's defaults. docs/benchmarks.md, "The learned editors", scores it.
RECIPES = {
    "smollm2-135m": Recipe(
        data=("zsre/mend_format/zsre_mend_train-1k.json", "counterfact/easyedit/counterfact-train.json"),
        settings={"base_model": "smollm2-135m", "seed": 0, "steps": 300, "batch": 4, "checkpoint_every": 25},
        seconds_per_step=1.6,
        measured="first use measured on one thread of a 2-core CPU beside one other job; 27 min beside five",
    )
}


@dataclass
class ENNTrainConfig(TypedConfig):
    data: list[str] = field(default_factory=list, metadata={"help": DATA_HELP})
    out: str = field(default="", metadata={"help": "folder for the trained artifact"})
    base_model: str = field(default="smollm2-135m", metadata={"help": "the model whose weights are meta-trained"})
    max_cases: int | None = field(default=None, metadata={"help": "use at most this many cases of each file"})
    seed: int = field(default=0, metadata={"help": "seed of batch sampling"})
    steps: int = field(default=300, metadata={"help": "meta-training steps (0: the base weights, untrained)"})
    batch: int = field(default=4, metadata={"help": "cases per step"})
    lr: float = field(default=1e-5, metadata={"help": "Adam learning rate of the meta-trained weights"})
    lr_lr: float = field(default=1e-2, metadata={"help": "Adam learning rate of the log inner learning rates"})
    layers: int = field(default=2, metadata={"help": "meta-train and edit the top this many layers"})
    sites: list[str] = field(
        default_factory=lambda: list(SITES), metadata={"help": "weights per layer: mlp_in, mlp_out"}
    )
    inner_steps: int = field(default=1, metadata={"help": "gradient steps per edit (the editor's default)"})
    inner_lr: float = field(default=1e-2, metadata={"help": "inner learning rate (initial value if learned)"})
    learn_lr: bool = field(default=True, metadata={"help": "learn one inner learning rate per weight"})
    edit_weight: float = field(default=1.0, metadata={"help": "weight of the edit loss after the inner steps"})
    locality_weight: float = field(default=1.0, metadata={"help": "weight of the KL before / after the edit"})
    base_weight: float = field(default=1.0, metadata={"help": "weight of the KL from the base model (L_base)"})
    locality_probes: int = field(default=2, metadata={"help": "out / neighborhood probes per case and step, at most"})
    checkpoint_every: int = field(default=25, metadata={"help": "steps between resumable checkpoints"})

    def validate(self) -> None:
        if self.steps < 0 or min(self.batch, self.layers, self.inner_steps, self.checkpoint_every) < 1:
            raise ConfigError("ENN training: steps >= 0; batch, layers, inner_steps, checkpoint_every >= 1")
        weights = (self.edit_weight, self.locality_weight, self.base_weight)
        if min(self.lr, self.lr_lr, self.inner_lr) <= 0 or min(weights) < 0:
            raise ConfigError("ENN training: learning rates must be > 0 and loss weights >= 0")
        if self.locality_probes < 0:
            raise ConfigError("ENN training: locality_probes must be >= 0")


class MetaWeights(nn.Module):
    """The meta-trained weights (one parameter per declared weight) and their log inner learning rates."""

    def __init__(self, base: dict[str, torch.Tensor], inner_lr: float, learn_lr: bool) -> None:
        super().__init__()
        self.names = list(base)
        self.weights = nn.ParameterList([nn.Parameter(w.detach().clone()) for w in base.values()])
        self.log_lr = nn.Parameter(torch.full((len(base),), math.log(inner_lr)), requires_grad=learn_lr)

    def values(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.weights, strict=True))

    def lrs(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.log_lr.exp(), strict=True))


def _kl_at(p_logits: torch.Tensor, q_logits: torch.Tensor, tf: TeacherForcedBatch) -> torch.Tensor:
    """Mean KL(p || q) over ``tf``'s valid answer positions."""
    _, valid = tf.positions()
    logp = F.log_softmax(p_logits.float(), dim=-1)
    logq = F.log_softmax(q_logits.float(), dim=-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    return (kl * valid).sum() / valid.sum()


def meta_loss(
    lm: LanguageModel, meta: MetaWeights, cases: list[EditCase], cfg: ENNTrainConfig, rng: random.Random
) -> torch.Tensor:
    """One step's loss on ``cases`` (see the module docstring)."""
    requests = [c.request for c in cases]
    edit_tf = lm.teacher_forced([r.text for r in requests], [r.target_new for r in requests])
    weights = meta.values()
    edited, _ = edit_steps(lm, weights, meta.lrs(), edit_tf, cfg.inner_steps, create_graph=True)
    general = [(r.text, r.target_new) for r in requests]
    general += [(p.prompt, p.expected) for c in cases for p in c.probes if p.kind == ProbeKind.REPHRASE]
    gen_tf = lm.teacher_forced([g[0] for g in general], [g[1] for g in general])
    loss = cfg.edit_weight * target_nll(lm, edited, gen_tf)
    local: list[tuple[str, str]] = []
    for c in cases:
        probes = [(p.prompt, p.expected) for p in c.probes if p.kind in LOCAL]
        local += rng.sample(probes, min(cfg.locality_probes, len(probes)))
    if local:
        loc_tf = lm.teacher_forced([x[0] for x in local], [x[1] for x in local])
        with torch.no_grad():
            base_logits = logits_with(lm, {}, loc_tf)
        meta_logits = logits_with(lm, weights, loc_tf)
        loss = loss + cfg.locality_weight * _kl_at(meta_logits, logits_with(lm, edited, loc_tf), loc_tf)
        loss = loss + cfg.base_weight * _kl_at(base_logits, meta_logits, loc_tf)
    return loss


@register_trainer
class ENNTrainer(Trainer):
    """Editable training of the top layers' MLP weights (ENN)."""

    name = "enn"
    config_cls: ClassVar[type[TypedConfig]] = ENNTrainConfig
    recipes: ClassVar[Mapping[str, Recipe]] = RECIPES
    config: ENNTrainConfig

    def train(self, *, progress: bool = True) -> dict[str, Any]:
        from editkit.models.zoo import load

        cfg = self.config
        if not cfg.out:
            raise ConfigError("ENN training needs out: FOLDER")
        cases, datasets = training_cases(cfg.data, cfg.max_cases)
        cases = [c for c in cases if c.request.prompt]
        if not cases:
            raise ConfigError("ENN training found no input-output edit cases in its data")
        if not any(p.kind in LOCAL for c in cases for p in c.probes):
            raise ConfigError("ENN's locality terms need probes of kind out or neighborhood; the data has none")
        lm = load(cfg.base_model, progress=False)
        lm.model.requires_grad_(False)
        names = enn_parameter_names(lm, cfg.layers, cfg.sites)
        params = dict(lm.model.named_parameters())
        base = {n: params[n].detach() for n in names}
        seed_torch(cfg.seed, PART)
        meta = MetaWeights(base, cfg.inner_lr, cfg.learn_lr)
        groups: list[dict[str, Any]] = [{"params": list(meta.weights), "lr": cfg.lr}]
        if cfg.learn_lr:
            groups.append({"params": [meta.log_lr], "lr": cfg.lr_lr})
        opt = torch.optim.Adam(groups)

        def loss_fn(rng: random.Random) -> torch.Tensor:
            # differentiating through the inner steps is a second derivative: fused attention kernels have none
            with sdpa_kernel(SDPBackend.MATH):
                return meta_loss(lm, meta, rng.sample(cases, min(cfg.batch, len(cases))), cfg, rng)

        result = train_part(PART, cfg, meta, opt, loss_fn, [d.sha256 for d in datasets], progress=progress)
        info = {
            "part": PART,
            **result.summary(),
            "base_model": lm.name,
            "parameters": names,
            "base_sha256": {n: tensor_sha256(w) for n, w in base.items()},
            "lrs": {n: float(v.detach()) for n, v in meta.lrs().items()},
            "inner_steps": cfg.inner_steps,
            "dtype": str(lm.dtype),
        }
        tensors = {n: w.detach().clone().contiguous() for n, w in meta.values().items()}
        return write_part(Path(cfg.out), cfg.to_dict(), datasets, lm.name, PART, info, tensors)
