"""Training MEND's editor networks (Mitchell et al., 2022, §3; the editor is :mod:`editkit.editors.mend`).

Each step takes ``batch`` training cases and edits the frozen base model with all of them at once: their edit
gradients' rank-one factors (u, delta) per edited weight go through the editor networks, giving
``W~ = W - alpha_l sum_t delta~_t u~_t^T``. The loss is MEND's ``c_edit L_e + c_loc L_loc``:

* L_e: the mean target NLL, under W~, of each case's edit prompt and up to ``rephrases`` of its rephrase probes
  (the edit's equivalence neighbourhood);
* L_loc: the KL divergence from the unedited model's next-token distributions to W~'s, at the answer positions
  of up to ``local_per_edit`` locality probes of each edited case (kinds ``out`` and ``neighborhood``: for zsRE
  the unrelated NQ question MEND's paper uses, for CounterFact the case's own neighbourhood, the prompts of the
  same relation and old object that an edit must leave alone).

The post-edit passes run the model with the edited weights substituted (``torch.func.functional_call``), so the
loss's gradient flows through the update into the editor networks and alpha_l; the base model never changes.
The normalisation statistics of ``[u; delta]`` come from the first ``norm_cases`` training cases before
training starts (the base model is frozen, so they would not move during training; being recomputed from the
same cases, they need no checkpoint). The artifact has one part, ``editor``: the networks' tensors and, in
the manifest, the spec that rebuilds them (edited sites, their shapes, rank, blocks).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.func import functional_call

from editkit.data.formats import Dataset
from editkit.editors.mend import PART, MENDParts, gradient_factors, site_names
from editkit.edits import EditCase, ProbeKind
from editkit.errors import ConfigError, ValidationError
from editkit.models.adapters import get_module
from editkit.models.hooks import hooks
from editkit.models.lm import LanguageModel, TeacherForcedBatch
from editkit.trained import write_part
from editkit.training.loop import DATA_HELP, seed_torch, train_part, training_cases
from editkit.training.registry import Trainer, register_trainer
from editkit.typedconfig import TypedConfig

LOCALITY = (ProbeKind.OUT, ProbeKind.NEIGHBORHOOD)
PARTS = ("mlp_in", "mlp_out")


@dataclass
class MENDTrainConfig(TypedConfig):
    data: list[str] = field(default_factory=list, metadata={"help": DATA_HELP})
    out: str = field(default="", metadata={"help": "folder for the trained parts"})
    base_model: str = field(default="smollm2-135m", metadata={"help": "the model the editor networks edit"})
    max_cases: int | None = field(default=None, metadata={"help": "at most this many cases per file"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and case sampling"})
    top_layers: int = field(default=3, metadata={"help": "edit the weights of this many top layers"})
    layers: list[int] | None = field(
        default=None, metadata={"help": "edit the weights of these layers instead of the top ones (0-based)"}
    )
    parts: list[str] = field(
        default_factory=lambda: list(PARTS), metadata={"help": "weights edited per layer: mlp_in, mlp_out"}
    )
    rank: int = field(default=64, metadata={"help": "hidden width of the editor networks' low-rank blocks"})
    blocks: int = field(default=2, metadata={"help": "residual blocks per editor network"})
    alpha_init: float = field(
        default=1e-2,
        metadata={"help": "initial step alpha_l of every edited weight (the untrained editor's gradient step)"},
    )
    steps: int = field(default=500, metadata={"help": "optimisation steps"})
    batch: int = field(default=4, metadata={"help": "cases edited together per step"})
    rephrases: int = field(default=2, metadata={"help": "rephrase probes per case in the edit loss"})
    local_per_edit: int = field(default=1, metadata={"help": "each edited case's own locality probes in L_loc"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate of the editor networks"})
    alpha_lr: float = field(default=3e-3, metadata={"help": "Adam learning rate of log alpha_l"})
    c_edit: float = field(default=0.1, metadata={"help": "weight of the edit loss L_e"})
    c_loc: float = field(default=1.0, metadata={"help": "weight of the locality KL L_loc"})
    norm_cases: int = field(default=32, metadata={"help": "cases whose edit gradients give the normalisation"})
    checkpoint_every: int = field(default=50, metadata={"help": "steps between resumable checkpoints"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)"})

    def validate(self) -> None:
        if min(self.top_layers, self.rank, self.blocks, self.steps, self.batch, self.norm_cases) < 1:
            raise ConfigError("top_layers, rank, blocks, steps, batch and norm_cases must be at least 1")
        if self.checkpoint_every < 1 or self.rephrases < 0 or self.local_per_edit < 1:
            raise ConfigError("checkpoint_every and local_per_edit must be at least 1, rephrases at least 0")
        if min(self.alpha_init, self.lr, self.alpha_lr) <= 0 or self.c_edit < 0 or self.c_loc < 0:
            raise ConfigError("alpha_init, lr and alpha_lr must be positive, c_edit and c_loc at least 0")
        bad = [p for p in self.parts if p not in PARTS]
        if bad or not self.parts:
            raise ConfigError(f"parts must be among {', '.join(PARTS)}; got {self.parts}")


def sites_of(lm: LanguageModel, config: MENDTrainConfig) -> list[tuple[int, str]]:
    """The edited weights: ``parts`` of ``layers`` if given, else of the top ``top_layers`` layers."""
    n = lm.adapter.n_layers(lm.model)
    if config.layers is not None:
        bad = [layer for layer in config.layers if not 0 <= layer < n]
        if bad or not config.layers or len(set(config.layers)) != len(config.layers):
            raise ConfigError(f"layers must be distinct layers of {lm.name} (0-{n - 1}); got {config.layers}")
        chosen = sorted(config.layers)
    elif config.top_layers > n:
        raise ConfigError(f"top_layers is {config.top_layers} but {lm.name} has {n} layers")
    else:
        chosen = list(range(n - config.top_layers, n))
    return [(layer, part) for layer in chosen for part in config.parts]


def spec_of(lm: LanguageModel, config: MENDTrainConfig, sites: Sequence[tuple[int, str]]) -> dict[str, Any]:
    weights = [lm.model.get_parameter(name) for name in site_names(lm, sites)]
    shapes = [list(lm.adapter.as_out_in(w).shape) for w in weights]
    return {
        "sites": [list(s) for s in sites],
        "shapes": shapes,
        "rank": config.rank,
        "blocks": config.blocks,
        "alpha_init": config.alpha_init,
    }


def logits_with(
    lm: LanguageModel, weights: dict[str, torch.Tensor], batch: TeacherForcedBatch
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at ``batch``'s predicting positions with ``weights`` in place of the model's (a functional call:
    differentiable in ``weights``, the model unchanged), and the positions' validity mask."""
    index, valid = batch.positions()
    head = get_module(lm.model, lm.adapter.head)

    def select(_m: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0].gather(1, index.unsqueeze(-1).expand(-1, -1, args[0].shape[-1])), *args[1:])

    with hooks([(head, "forward_pre", select)]):
        out = functional_call(lm.model, weights, args=(), kwargs={"use_cache": False, **batch.inputs}, strict=False)
    return out.logits, valid


def edit_loss(lm: LanguageModel, weights: dict[str, torch.Tensor], batch: TeacherForcedBatch) -> torch.Tensor:
    """Mean over rows of each row's mean target NLL under ``weights``."""
    logits, valid = logits_with(lm, weights, batch)
    return -(batch.token_logprobs(logits).sum(1) / valid.sum(1)).mean()


def locality_loss(
    lm: LanguageModel, weights: dict[str, torch.Tensor], batch: TeacherForcedBatch, before: torch.Tensor
) -> torch.Tensor:
    """KL(unedited || edited) of the next-token distributions at ``batch``'s answer positions, averaged over
    them; ``before`` is the unedited model's log-distributions there."""
    logits, valid = logits_with(lm, weights, batch)
    after = F.log_softmax(logits.float(), dim=-1)
    kl = (before.exp() * (before - after)).sum(-1)
    return (kl * valid).sum() / valid.sum()


def load_training_cases(config: MENDTrainConfig) -> tuple[list[EditCase], list[Dataset]]:
    """The training cases that have a locality probe (the others cannot enter L_loc), and the datasets."""
    cases, datasets = training_cases(config.data, config.max_cases)
    cases = [c for c in cases if c.of_kind(*LOCALITY)]
    if not cases:
        raise ValidationError("no training case has a locality probe (kinds out or neighborhood)")
    return cases, datasets


def train(config: MENDTrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train MEND's editor networks into ``config.out`` (resuming a run with the same settings) and return the
    artifact's manifest."""
    from editkit.models.zoo import load

    if not config.out:
        raise ConfigError("no output folder given (out: FOLDER)")
    if config.threads:
        torch.set_num_threads(config.threads)
    cases, datasets = load_training_cases(config)
    lm = load(config.base_model, progress=False)
    lm.model.requires_grad_(False)
    sites = sites_of(lm, config)
    names = site_names(lm, sites)
    originals = dict(lm.model.named_parameters())
    spec = spec_of(lm, config, sites)

    def factors_of(batch_cases: Sequence[EditCase]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        requests = [c.request for c in batch_cases]
        tf = lm.teacher_forced([r.text for r in requests], [r.target_new for r in requests])
        return gradient_factors(lm, sites, tf)[0]

    norm_sample = cases[: config.norm_cases]
    stats = [factors_of(norm_sample[i : i + config.batch]) for i in range(0, len(norm_sample), config.batch)]
    seed_torch(config.seed, PART)
    parts = MENDParts(spec)
    parts.set_normalisation(stats, names)
    opt = torch.optim.Adam(
        [
            {"params": [p for n, p in parts.named_parameters() if n != "log_alpha"], "lr": config.lr},
            {"params": [parts.log_alpha], "lr": config.alpha_lr},
        ]
    )

    def loss_fn(rng: random.Random) -> torch.Tensor:
        chosen = rng.sample(cases, min(config.batch, len(cases)))
        changes = parts.updates(factors_of(chosen), names)
        weights = {n: originals[n] + lm.adapter.from_out_in(changes[n]).to(originals[n].dtype) for n in names}
        prompts, targets, probes = [], [], []
        for case in chosen:
            rephrases = case.of_kind(ProbeKind.REPHRASE)
            picked = rng.sample(rephrases, min(config.rephrases, len(rephrases)))
            prompts += [case.request.text, *(p.prompt for p in picked)]
            targets += [case.request.target_new] * (1 + len(picked))
            local = case.of_kind(*LOCALITY)
            probes += rng.sample(local, min(config.local_per_edit, len(local)))
        loss_e = edit_loss(lm, weights, lm.teacher_forced(prompts, targets))
        loc = lm.teacher_forced([p.prompt for p in probes], [p.expected for p in probes])
        with torch.no_grad():
            before = F.log_softmax(lm.logits_at(loc.inputs, loc.positions()[0]).float(), dim=-1)
        loss_loc = locality_loss(lm, weights, loc, before)
        return config.c_edit * loss_e + config.c_loc * loss_loc

    result = train_part(PART, config, parts, opt, loss_fn, [d.sha256 for d in datasets], progress=progress)
    meta = {"part": PART, **result.summary(), "base_model": lm.name, "spec": spec}
    tensors = {k: v.detach().contiguous() for k, v in parts.state_dict().items()}
    return write_part(Path(config.out), config.to_dict(), datasets, lm.name, PART, meta, tensors)


@register_trainer
class MENDTrainer(Trainer):
    """MEND's editor networks (one per edited weight shape) and per-weight step sizes."""

    name = "mend"
    config_cls: ClassVar[type[TypedConfig]] = MENDTrainConfig
    config: MENDTrainConfig

    def train(self, *, progress: bool = True) -> dict[str, Any]:
        return train(self.config, progress=progress)
