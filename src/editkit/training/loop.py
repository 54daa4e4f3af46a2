"""The one training loop every trainer uses: seeded, resumable, with progress.

A trainer builds its trainable module after :func:`seed_torch` (so initialisation and dropout follow the config's
seed and the part's tag), an optimiser, and a loss function that draws its batch from the Python RNG it is
given; :func:`train_loop` runs the steps. Every ``checkpoint_every`` steps (and at the last) the trainable
parameters, the optimiser, the Python and torch RNG states and the losses so far go to
``OUT/.checkpoints/TAG.pt`` (written whole), keyed by :func:`checkpoint_key` (the settings that shape the
result and the training data's hashes): a rerun with the same key continues from there, bit for bit as if it
had not stopped, and a checkpoint of other settings is refused. Leaving the step count out of the key lets a
finished part be trained further by raising it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from editkit.data.formats import FORMATS, Dataset, load_cases
from editkit.edits import EditCase
from editkit.errors import ConfigError, ValidationError
from editkit.files import atomic_torch_save
from editkit.progress import progress_bar
from editkit.provenance import peak_memory_mb

log = logging.getLogger(__name__)


def seed_torch(seed: int, tag: str) -> None:
    """Seed torch's global RNG from a config seed and a part tag (before building the part's trainable module)."""
    torch.manual_seed(int(hashlib.sha256(f"{seed}:{tag}".encode()).hexdigest()[:8], 16))


def checkpoint_key(tag: str, settings: Mapping[str, Any], data_hashes: Sequence[str]) -> str:
    """What a checkpoint must match to be resumed: the part, the settings that shape it, the data's hashes."""
    payload = json.dumps({"part": tag, "config": dict(settings), "data": list(data_hashes)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class LoopResult:
    losses: list[float]  # every step's loss, the resumed steps' included
    seconds: float  # this run's training time
    peak_memory_mb: float  # the process's peak resident memory at the end of the run

    def summary(self) -> dict[str, Any]:
        """Steps, first loss, mean of the last 20, this run's seconds and peak memory: what a manifest records of a
        part."""
        tail = self.losses[-20:]
        return {
            "steps": len(self.losses),
            "loss_first": self.losses[0] if self.losses else None,
            "loss_last20_mean": sum(tail) / len(tail) if tail else None,
            "seconds_this_run": self.seconds,
            "peak_memory_mb": round(self.peak_memory_mb, 1),
        }


class _Checkpoint:
    def __init__(self, out: Path, tag: str, key: str) -> None:
        self.path = out / ".checkpoints" / f"{tag}.pt"
        self.key = key

    def load(self, trainable: nn.Module, opt: torch.optim.Optimizer) -> tuple[int, list[float], random.Random]:
        rng = random.Random()
        if not self.path.is_file():
            return 0, [], rng
        state = torch.load(self.path, weights_only=False)
        if state["key"] != self.key:
            raise ValidationError(
                f"{self.path} was written with other settings or data; delete it to start this part afresh"
            )
        trainable.load_state_dict(state["trainable"], strict=False)
        opt.load_state_dict(state["optimizer"])
        rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resuming %s at step %d", self.path.stem, state["step"])
        return int(state["step"]), list(state["losses"]), rng

    def save(
        self, step: int, losses: list[float], trainable: nn.Module, opt: torch.optim.Optimizer, rng: random.Random
    ) -> None:
        params = {n for n, p in trainable.named_parameters() if p.requires_grad}
        state = {
            "key": self.key,
            "step": step,
            "losses": losses,
            "trainable": {n: t for n, t in trainable.state_dict().items() if n in params},
            "optimizer": opt.state_dict(),
            "python_rng": rng.getstate(),
            "torch_rng": torch.get_rng_state(),
        }
        atomic_torch_save(state, self.path)


def train_loop(
    tag: str,
    steps: int,
    trainable: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: Callable[[random.Random], torch.Tensor],
    *,
    out: Path,
    key: str,
    seed: int,
    checkpoint_every: int,
    progress: bool,
) -> LoopResult:
    """Run ``steps`` optimisation steps of ``loss_fn`` (given the Python RNG, seeded from ``seed`` and ``tag``)
    on ``trainable``'s parameters, resuming from ``out/.checkpoints/TAG.pt`` when its key is ``key``."""
    checkpoint = _Checkpoint(out, tag, key)
    start, losses, rng = checkpoint.load(trainable, opt)
    if start == 0:
        rng.seed(f"{seed}:{tag}")
    trainable.train()
    t0 = time.perf_counter()
    with progress_bar(steps, f"training {tag}", progress, start=start) as bar, torch.enable_grad():
        for step in range(start, steps):
            opt.zero_grad()
            loss = loss_fn(rng)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
                checkpoint.save(step + 1, losses, trainable, opt, rng)
            bar.advance()
    trainable.eval()
    return LoopResult(losses, time.perf_counter() - t0, peak_memory_mb())


class PartConfig(Protocol):
    """What :func:`train_part` reads of a single-part trainer's config."""

    out: str
    steps: int
    seed: int
    checkpoint_every: int

    def to_dict(self) -> dict[str, Any]: ...


# Settings that do not change what a step computes: a checkpoint stays valid when they change (more steps train
# a finished part further).
NOT_IN_KEY = ("out", "steps", "checkpoint_every", "threads")


def train_part(
    tag: str,
    config: PartConfig,
    trainable: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: Callable[[random.Random], torch.Tensor],
    data_hashes: Sequence[str],
    *,
    progress: bool,
) -> LoopResult:
    """:func:`train_loop` for a trainer of one part whose config has ``out``, ``steps``, ``seed`` and
    ``checkpoint_every``: the checkpoint is keyed on every other setting and the training data's hashes."""
    settings = {k: v for k, v in config.to_dict().items() if k not in NOT_IN_KEY}
    return train_loop(
        tag,
        config.steps,
        trainable,
        opt,
        loss_fn,
        out=Path(config.out),
        key=checkpoint_key(tag, settings, data_hashes),
        seed=config.seed,
        checkpoint_every=config.checkpoint_every,
        progress=progress,
    )


DATA_HELP = "training files (training splits only); FORMAT:PATH reads one in a named format"


def data_entry(entry: str) -> tuple[str, str | None]:
    """A training data entry -> (path, format). ``FORMAT:PATH`` reads the file in a named format
    (``counterfact-fc:counterfact-train.json``: the same file as fact-checking cases); a bare path is detected."""
    name, sep, rest = entry.partition(":")
    if sep and name in FORMATS:
        if not rest:
            raise ConfigError(f"training data entry {entry!r} names a format but no file")
        return rest, name
    return entry, None


def training_cases(data: Sequence[str], max_cases: int | None = None) -> tuple[list[EditCase], list[Dataset]]:
    """The cases of every training file (at most ``max_cases`` each; invalid records skipped, as the datasets
    list them) and the datasets, whose sha256 a trainer's checkpoint key and manifest record. An entry may name
    its format (:func:`data_entry`), so one file can serve twice, read two ways."""
    if not data:
        raise ConfigError("no training data given (data: [FILE, ...])")
    datasets = [load_cases(path, format=fmt, limit=max_cases, skip_invalid=True) for path, fmt in map(data_entry, data)]
    cases = [c for d in datasets for c in d.cases]
    if not cases:
        raise ValidationError(f"the training files hold no usable cases: {', '.join(data)}")
    return cases, datasets
