"""A test-only trained editor and its trainer, both named "toy": everything a new trained method's author writes
(an editor, its config, a trainer and its config), in one module, and nothing elsewhere. ``tests/conftest.py``
imports it, so the toy runs through the contract suite (tests/test_contract.py) with the built-in methods.

The trainer fits a steering vector v: added to the output of one layer's MLP output projection at the prompt's
last token, it raises the targets of a few training cases (the shared loop: seeded, resumable). The artifact is
written with :mod:`editkit.trained` and records the base model it was trained on. The editor loads it through
the same module (verified, refused for another base model) and writes v into the projection as a rank-one
change keyed on each request's prompt: ``W += V K^+`` with K the requests' keys at that token.
"""

from __future__ import annotations

import atexit
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from editkit.data import load_cases
from editkit.editors.base import Capabilities, EditorConfig, WeightEditor, WeightUpdate, register
from editkit.edits import EditRequest
from editkit.errors import ConfigError, ValidationError
from editkit.models.hooks import hooks
from editkit.models.lm import LanguageModel, TeacherForcedBatch
from editkit.trained import find, load_tensors, verify, write_part
from editkit.training.loop import seed_torch, train_part
from editkit.training.registry import Trainer, create_trainer, register_trainer
from editkit.typedconfig import TypedConfig

PART = "steer"


# --------------------------------------------------------------------------- trainer
@dataclass
class ToyTrainConfig(TypedConfig):
    data: list[str] = field(default_factory=list, metadata={"help": "training files"})
    out: str = field(default="", metadata={"help": "folder for the trained artifact"})
    base_model: str = field(default="tiny-llama", metadata={"help": "the model the vector is trained for"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and batch sampling"})
    steps: int = field(default=6, metadata={"help": "optimisation steps"})
    batch: int = field(default=3, metadata={"help": "cases per step"})
    lr: float = field(default=0.1, metadata={"help": "Adam learning rate"})
    checkpoint_every: int = field(default=2, metadata={"help": "steps between resumable checkpoints"})

    def validate(self) -> None:
        if min(self.steps, self.batch, self.checkpoint_every) < 1:
            raise ConfigError("steps, batch and checkpoint_every must be at least 1")


class Steer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.vector = nn.Parameter(0.01 * torch.randn(dim))


def _last_prompt_token(
    lm: LanguageModel, prompts: Sequence[str], targets: Sequence[str]
) -> tuple[TeacherForcedBatch, torch.Tensor]:
    """The teacher-forced batch and each row's last prompt position (in the encoder for encoder-decoders)."""
    tf = lm.teacher_forced(prompts, targets)
    return tf, torch.tensor(tf.prompt_lengths) - 1


@register_trainer
class ToyTrainer(Trainer):
    """A steering vector on one MLP output (test-only)."""

    name = "toy"
    config_cls: ClassVar[type[TypedConfig]] = ToyTrainConfig
    config: ToyTrainConfig

    def train(self, *, progress: bool = True) -> dict[str, Any]:
        from editkit.models.zoo import load

        cfg = self.config
        if not cfg.out or not cfg.data:
            raise ConfigError("toy training needs data: [FILE, ...] and out: FOLDER")
        datasets = [load_cases(p) for p in cfg.data]
        requests = [c.request for d in datasets for c in d.cases]
        lm = load(cfg.base_model, progress=False)
        lm.model.requires_grad_(False)
        layer = lm.default_edit_layer
        site = lm.adapter.module(lm.model, layer, "mlp_out")
        seed_torch(cfg.seed, PART)
        steer = Steer(lm.adapter.as_out_in(site.weight).shape[0])
        opt = torch.optim.Adam(steer.parameters(), lr=cfg.lr)

        def loss_fn(rng: random.Random) -> torch.Tensor:
            batch = rng.sample(requests, min(cfg.batch, len(requests)))
            tf, last = _last_prompt_token(lm, [r.text for r in batch], [r.target_new for r in batch])
            index, valid = tf.positions()

            def add(_m: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
                shifted = output.clone()
                shifted[torch.arange(len(batch)), last] += steer.vector
                return shifted

            with hooks([(site, "forward", add)]):
                return -(tf.token_logprobs(lm.logits_at(tf.inputs, index)).sum() / valid.sum())

        result = train_part(PART, cfg, steer, opt, loss_fn, [d.sha256 for d in datasets], progress=progress)
        meta = {"part": PART, **result.summary(), "layer": layer, "base_model": lm.name}
        tensors = {"vector": steer.vector.detach()}
        return write_part(Path(cfg.out), cfg.to_dict(), datasets, lm.name, PART, meta, tensors)


# --------------------------------------------------------------------------- editor
@dataclass
class ToyConfig(EditorConfig):
    artifacts: str | None = field(
        default=None,
        metadata={"help": "folder written by `editkit train toy`; default: trained for the tiny model at first use"},
    )
    scale: float = field(default=1.0, metadata={"help": "multiplies the trained vector"})


_DEFAULT_ARTIFACTS: dict[str, Path] = {}


def default_artifacts(lm: LanguageModel) -> Path:
    """The toy has no packaged artifact: one is trained per tiny model on first use, for this process."""
    base = lm.name.removesuffix("-s0")
    if not base.startswith("tiny-") or base == lm.name:
        raise ValidationError(f"toy has no default artifact for {lm.name}; pass artifacts=FOLDER")
    if base not in _DEFAULT_ARTIFACTS:
        from conftest import write_tiny_cases

        root = Path(tempfile.mkdtemp(prefix="editkit-toy-"))
        atexit.register(shutil.rmtree, root, True)
        data = write_tiny_cases(root / "cases.jsonl")
        create_trainer("toy", {"data": [str(data)], "out": str(root / "toy"), "base_model": base}).train(progress=False)
        _DEFAULT_ARTIFACTS[base] = root / "toy"
    return _DEFAULT_ARTIFACTS[base]


@register
class Toy(WeightEditor):
    name = "toy"
    config_cls: ClassVar[type[EditorConfig]] = ToyConfig
    capabilities: ClassVar[Capabilities] = Capabilities(storage="weights", trained=True)
    config: ToyConfig

    def steer(self, lm: LanguageModel) -> tuple[int, torch.Tensor]:
        """The trained layer and vector for ``lm``, verified (and refused if trained for another model)."""
        folder = find("toy", self.config.artifacts) if self.config.artifacts else default_artifacts(lm)
        manifest = verify(folder, [PART], base_model=lm.name)
        return int(manifest["parts"][PART]["layer"]), load_tensors(folder / PART)["vector"]

    def target_parameters(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> list[str]:
        return [lm.adapter.weight_name(self.steer(lm)[0], "mlp_out")]

    def compute(
        self, lm: LanguageModel, requests: Sequence[EditRequest], params: dict[str, nn.Parameter]
    ) -> WeightUpdate:
        layer, vector = self.steer(lm)
        name = lm.adapter.weight_name(layer, "mlp_out")
        tf, last = _last_prompt_token(lm, [r.text for r in requests], [r.target_new for r in requests])
        index, _ = tf.positions()
        keys: list[torch.Tensor] = []

        def capture(_m: nn.Module, args: tuple[Any, ...]) -> None:
            keys.append(args[0][torch.arange(len(requests)), last].detach().float())

        with torch.no_grad():
            with hooks([(lm.adapter.module(lm.model, layer, "mlp_out"), "forward_pre", capture)]):
                before = tf.token_logprobs(lm.logits_at(tf.inputs, index)).sum()
            values = self.config.scale * vector[:, None].expand(-1, len(requests))  # [out, n]
            delta = values @ torch.linalg.pinv(keys[0].T)  # [out, in]: W k_i gains v for every request
            weight = params[name]
            weight.add_(lm.adapter.from_out_in(delta).to(weight.dtype))
            after = tf.token_logprobs(lm.logits_at(tf.inputs, index)).sum()
        info = {"layer": layer, "target_logprob_before": float(before), "target_logprob_after": float(after)}
        return WeightUpdate({name: weight.detach().clone()}, info)
