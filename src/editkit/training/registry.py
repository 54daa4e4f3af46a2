"""The trainers' registry: ``editkit train NAME`` serves every trainer registered here.

A trainer makes the parts an editor of the same name needs (``capabilities.trained``). It is a class with a
``name``, a ``config_cls`` (a typed :class:`~editkit.typedconfig.TypedConfig`: unknown keys are rejected,
command-line strings coerced; it has an ``out`` folder) and :meth:`Trainer.train`, which trains into that folder
through :func:`~editkit.training.loop.train_loop`, writes the artifact with :mod:`editkit.trained` and returns
its manifest.

A trainer may ship default recipes (``recipes``: a :class:`Recipe` per base model name): when an editor of the
same name finds no parts for that model (no ``artifacts`` setting, none packaged for it, none in the user cache),
:func:`editkit.trained.find` trains them once into the user cache with :func:`first_use_training`. A recipe's
data are training splits named relative to ``$EDITKIT_DATA`` (the benchmark data's folder), never files of the
repository.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from editkit.errors import ConfigError, UnknownNameError, ValidationError
from editkit.registry import Registry
from editkit.typedconfig import TypedConfig

_TRAINERS: Registry[type[Trainer]] = Registry("trainer", builtins="editkit.training")

T = TypeVar("T", bound="Trainer")

log = logging.getLogger(__name__)

DATA_ENV = "EDITKIT_DATA"


@dataclass(frozen=True)
class Recipe:
    """A trainer's packaged default training for one base model, trained on an editor's first use."""

    data: tuple[str, ...]  # training files (training splits only), relative to $EDITKIT_DATA
    settings: Mapping[str, Any] = field(default_factory=dict)  # every other setting but data and out
    seconds_per_step: float = 0.0  # measured (``measured`` says where): the estimate said before training starts
    measured: str = ""

    def files(self, trainer: str) -> list[str]:
        """The training files under ``$EDITKIT_DATA``; a missing one is a one-line error saying what to pass."""
        root = os.environ.get(DATA_ENV)
        missing = [rel for rel in self.data if not root or not (Path(root) / rel).is_file()]
        if missing:
            where = f"{DATA_ENV}={root}" if root else f"{DATA_ENV} is not set"
            raise ValidationError(
                f"training {trainer.upper()}'s parts on first use needs {missing[0]} under {DATA_ENV} ({where}): "
                f"set {DATA_ENV} to the benchmark data's folder, or pass artifacts=FOLDER from `editkit train "
                f"{trainer} --config FILE`"
            )
        return [str(Path(root or "") / rel) for rel in self.data]


class Trainer(ABC):
    """Trains one editor's parts. Subclasses set ``name`` and ``config_cls`` and register with
    :func:`register_trainer`."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[TypedConfig]] = TypedConfig
    recipes: ClassVar[Mapping[str, Recipe]] = {}  # base model name -> what first use trains (none: no first use)

    def __init__(self, config: TypedConfig) -> None:
        if not isinstance(config, self.config_cls):
            raise ConfigError(f"trainer {self.name} takes a {self.config_cls.__name__}, got {type(config).__name__}")
        self.config = config

    @abstractmethod
    def train(self, *, progress: bool = True) -> dict[str, Any]:
        """Train into the config's ``out`` folder (resuming what a run with the same settings left there) and
        return the artifact's manifest: its ``config`` and, per part, ``steps``, ``loss_first`` and
        ``loss_last20_mean`` (:mod:`editkit.trained`)."""


def register_trainer(cls: type[T]) -> type[T]:
    """Class decorator: add a trainer to the registry under ``cls.name``."""
    _TRAINERS.add(cls.name, cls)
    return cls


def available_trainers() -> list[str]:
    return _TRAINERS.names()


def get_trainer_class(name: str) -> type[Trainer]:
    return _TRAINERS.get(name)


def create_trainer(name: str, settings: Mapping[str, Any] | TypedConfig | None = None) -> Trainer:
    cls = get_trainer_class(name)
    if isinstance(settings, TypedConfig):
        return cls(settings)
    return cls(cls.config_cls.from_dict(settings))


def first_use_training(name: str, model: str, folder: Path) -> Callable[[Path], object] | None:
    """How to train trainer ``name``'s parts for ``model`` on first use (into a staging folder it is given, for
    :func:`editkit.trained.build_once`, which installs them at ``folder``), or ``None`` when no trainer of that
    name has a recipe for ``model``. The training data are checked now, before anything starts."""
    try:
        recipe = get_trainer_class(name).recipes.get(model)
    except UnknownNameError:  # an editor with parts but no trainer here: nothing to train
        return None
    if recipe is None:
        return None
    settings = {**recipe.settings, "data": recipe.files(name)}
    trainer = create_trainer(name, {**settings, "out": str(folder)})  # the settings checked before any work
    steps = int(getattr(trainer.config, "steps", 0))
    seconds = steps * recipe.seconds_per_step
    length = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    estimate = f"about {length} at {recipe.seconds_per_step:g} s a step"
    if recipe.measured:
        estimate += f" ({recipe.measured})"

    def train(staging: Path) -> object:
        from editkit.trained import FIRST_USE_ENV

        log.warning(
            "%s has no trained parts for %s: training them once (%d steps, %s; the progress bar's ETA is this "
            "machine's) into %s; %s=0 turns this off",
            name.upper(),
            model,
            steps,
            estimate,
            folder,
            FIRST_USE_ENV,
        )
        return create_trainer(name, {**settings, "out": str(staging)}).train(progress=True)

    return train
