"""KE's hypernetwork (editors/ke.py), trained as KnowledgeEditor's constrained optimisation, optionally as SLAG.

Each step draws ``edits`` training cases. Their updates are predicted from their gradients and encodings
(:func:`editkit.editors.ke.edit_deltas`), and the edited model is scored on two sets of inputs:

- the edit loss: mean NLL of the new answer on the edit's prompt and its rephrases (probes of kind ``edit`` and
  ``rephrase``; with ``slag`` also ``hard_in``, the entailed inputs of Hase et al., 2021);
- the constraint: ``C`` = mean KL(p_unedited || p_edited) over the answer positions of the case's unrelated
  probes (kinds ``out`` and ``neighborhood``), which KE keeps below a margin ``m``.

KE (De Cao et al., 2021, §3) solves ``min_phi L_edit s.t. C <= m`` through its Lagrangian ``L_edit + lambda (C -
m)``, minimised in the hypernetwork's parameters and maximised in ``lambda >= 0``. Here ``lambda =
softplus(rho)`` and the step minimises::

    L_edit + [lambda] (C - m) + ([lambda] - lambda) ([C] - m)        ([x]: x without gradient)

whose value is the Lagrangian and whose gradient in rho is ``-(C - m) dlambda/drho``: descent in rho is
gradient ascent in lambda (by Adam, at ``lagrange_lr``), so lambda grows while the constraint is violated and
shrinks towards 0 once it holds.

Without ``slag`` (KE) each of the step's edits is applied alone (its own update, scored on its own probes); with
``slag`` the step's updates are summed into one and every edit's probes are scored under it, as the editor does
when given several requests. The part's record names the method (``KE`` or ``SLAG``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from editkit.editors.ke import PART, HyperNetwork, edit_deltas, edited_weights, row_deltas
from editkit.edits import EditCase, ProbeKind
from editkit.errors import ConfigError
from editkit.models.lm import LanguageModel
from editkit.trained import write_part
from editkit.training.loop import DATA_HELP, seed_torch, train_part, training_cases
from editkit.training.registry import Trainer, register_trainer
from editkit.typedconfig import TypedConfig

EDIT_KINDS = (ProbeKind.EDIT, ProbeKind.REPHRASE)
LOCAL_KINDS = (ProbeKind.OUT, ProbeKind.NEIGHBORHOOD)


@dataclass
class KETrainConfig(TypedConfig):
    data: list[str] = field(default_factory=list, metadata={"help": DATA_HELP})
    out: str = field(default="", metadata={"help": "folder for the trained artifact"})
    base_model: str = field(default="smollm2-135m", metadata={"help": "the model whose edits KE learns to make"})
    layers: list[int] = field(
        default_factory=lambda: [-2, -1], metadata={"help": "layers whose matrices are edited (negative: from the top)"}
    )
    parts: list[str] = field(
        default_factory=lambda: ["mlp_in", "mlp_out"], metadata={"help": "matrices edited in each layer"}
    )
    hidden: int = field(default=128, metadata={"help": "width of the hypernetwork's trunk"})
    max_scale: float = field(default=0.1, metadata={"help": "largest step size sigma(eta) * max_scale can reach"})
    init_step: float = field(default=0.01, metadata={"help": "the untrained hypernetwork's gradient step size"})
    slag: bool = field(
        default=False,
        metadata={"help": "SLAG: the step's edits applied together as one summed update, hard_in probes in L_edit"},
    )
    edits: int = field(default=4, metadata={"help": "edits per step (KE: each alone; SLAG: applied together)"})
    probes_per_edit: int = field(default=4, metadata={"help": "at most this many in-scope probes per edit and step"})
    local_per_edit: int = field(default=2, metadata={"help": "at most this many unrelated probes per edit and step"})
    margin: float = field(default=0.01, metadata={"help": "m: the KL the constraint allows on unrelated inputs"})
    lagrange_init: float = field(default=1.0, metadata={"help": "lambda at the start"})
    lagrange_lr: float = field(default=1e-2, metadata={"help": "Adam learning rate of the multiplier (ascent)"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate of the hypernetwork"})
    steps: int = field(default=600, metadata={"help": "optimisation steps"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and case sampling"})
    checkpoint_every: int = field(default=50, metadata={"help": "steps between resumable checkpoints"})

    def validate(self) -> None:
        if min(self.steps, self.edits, self.probes_per_edit, self.checkpoint_every, self.hidden) < 1:
            raise ConfigError("steps, edits, probes_per_edit, checkpoint_every and hidden must be at least 1")
        if self.local_per_edit < 0 or self.margin < 0 or self.lagrange_init <= 0:
            raise ConfigError("local_per_edit and margin must be >= 0 and lagrange_init > 0")
        if not 0 < self.init_step < self.max_scale:
            raise ConfigError(f"init_step must lie in (0, max_scale = {self.max_scale})")
        if not self.layers or not self.parts or set(self.parts) - {"mlp_in", "mlp_out", "attn_out"}:
            raise ConfigError("layers must name at least one layer, parts some of mlp_in, mlp_out, attn_out")


class Trainable(nn.Module):
    """The hypernetwork and the Lagrange multiplier's pre-image rho (``lambda = softplus(rho)``)."""

    def __init__(self, hyper: HyperNetwork, lagrange_init: float) -> None:
        super().__init__()
        self.hyper = hyper
        self.rho = nn.Parameter(torch.tensor(lagrange_init).expm1().log())

    def multiplier(self) -> torch.Tensor:
        return F.softplus(self.rho)


def lagrangian(edit_loss: torch.Tensor, constraint: torch.Tensor, margin: float, lam: torch.Tensor) -> torch.Tensor:
    """``L_edit + lambda (C - m)`` in value; its gradient descends in everything but lambda and ascends in lambda."""
    slack = constraint - margin
    return edit_loss + lam.detach() * slack + (lam.detach() - lam) * slack.detach()


def _rows(
    cases: list[EditCase], rng: random.Random, kinds: tuple[ProbeKind, ...], limit: int, with_request: bool
) -> tuple[list[str], list[str], list[int]]:
    prompts: list[str] = []
    answers: list[str] = []
    owner: list[int] = []
    for g, case in enumerate(cases):
        probes = [(p.prompt, p.expected) for p in case.probes if p.kind in kinds]
        if with_request:
            probes = [(case.request.text, case.request.target_new), *[p for p in probes if p[0] != case.request.text]]
            probes = probes[:1] + rng.sample(probes[1:], min(limit - 1, len(probes) - 1))
        else:
            probes = rng.sample(probes, min(limit, len(probes)))
        for prompt, answer in probes:
            prompts.append(prompt)
            answers.append(answer)
            owner.append(g)
    return prompts, answers, owner


def step_loss(
    lm: LanguageModel, trainable: Trainable, cases: list[EditCase], rng: random.Random, cfg: KETrainConfig
) -> torch.Tensor:
    """One step's Lagrangian for ``cases`` (see the module docstring)."""
    deltas, _ = edit_deltas(lm, trainable.hyper, [c.request for c in cases])
    if cfg.slag:
        deltas = {n: d.sum(0, keepdim=True) for n, d in deltas.items()}

    def groups(owner: list[int]) -> list[int]:
        return [0] * len(owner) if cfg.slag else owner

    kinds = (*EDIT_KINDS, ProbeKind.HARD_IN) if cfg.slag else EDIT_KINDS
    prompts, answers, owner = _rows(cases, rng, kinds, cfg.probes_per_edit, with_request=True)
    tf = lm.teacher_forced(prompts, answers)
    index, valid = tf.positions()
    with row_deltas(lm, deltas, groups(owner)):
        logprobs = tf.token_logprobs(lm.logits_at(tf.inputs, index))
    edit_loss = -(logprobs.sum(1) / valid.sum(1)).mean()

    prompts, answers, owner = _rows(cases, rng, LOCAL_KINDS, cfg.local_per_edit, with_request=False)
    if not prompts:
        return lagrangian(edit_loss, torch.zeros(()), cfg.margin, trainable.multiplier())
    tf = lm.teacher_forced(prompts, answers)
    index, valid = tf.positions()
    with torch.no_grad():
        base = F.log_softmax(lm.logits_at(tf.inputs, index).float(), -1)
    with row_deltas(lm, deltas, groups(owner)):
        edited = F.log_softmax(lm.logits_at(tf.inputs, index).float(), -1)
    kl = (base.exp() * (base - edited)).sum(-1)
    constraint = (kl * valid).sum() / valid.sum()
    return lagrangian(edit_loss, constraint, cfg.margin, trainable.multiplier())


@register_trainer
class KETrainer(Trainer):
    """KnowledgeEditor's hypernetwork (SLAG with ``slag: true``)."""

    name = "ke"
    config_cls: ClassVar[type[TypedConfig]] = KETrainConfig
    config: KETrainConfig

    def train(self, *, progress: bool = True) -> dict[str, Any]:
        from editkit.models.zoo import load

        cfg = self.config
        if not cfg.out:
            raise ConfigError("ke training needs out: FOLDER")
        cases, datasets = training_cases(cfg.data)
        lm = load(cfg.base_model, progress=False)
        lm.model.requires_grad_(False)
        shapes = edited_weights(lm, cfg.layers, cfg.parts)
        cond_dim = int(lm.model.get_output_embeddings().weight.shape[1])
        seed_torch(cfg.seed, PART)
        hyper = HyperNetwork(cond_dim, cfg.hidden, shapes, cfg.max_scale, cfg.init_step)
        trainable = Trainable(hyper, cfg.lagrange_init)
        opt = torch.optim.Adam(
            [
                {"params": list(trainable.hyper.parameters()), "lr": cfg.lr},
                {"params": [trainable.rho], "lr": cfg.lagrange_lr},
            ]
        )

        def loss_fn(rng: random.Random) -> torch.Tensor:
            return step_loss(lm, trainable, rng.sample(cases, min(cfg.edits, len(cases))), rng, cfg)

        result = train_part(PART, cfg, trainable, opt, loss_fn, [d.sha256 for d in datasets], progress=progress)
        meta = {
            "part": PART,
            "method": "SLAG" if cfg.slag else "KE",
            **result.summary(),
            "lagrange_multiplier": float(trainable.multiplier().detach()),
            "base_model": lm.name,
            "weights": {n: list(s) for n, s in shapes.items()},
            "cond_dim": cond_dim,
            "hidden": cfg.hidden,
            "max_scale": cfg.max_scale,
        }
        tensors = {n: t.detach().contiguous() for n, t in trainable.hyper.state_dict().items()}
        return write_part(Path(cfg.out), cfg.to_dict(), datasets, lm.name, PART, meta, tensors)
