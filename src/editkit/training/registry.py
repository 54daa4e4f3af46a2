"""The trainers' registry: ``editkit train NAME`` serves every trainer registered here.

A trainer makes the parts an editor of the same name needs (``capabilities.trained``). It is a class with a
``name``, a ``config_cls`` (a typed :class:`~editkit.typedconfig.TypedConfig`: unknown keys are rejected,
command-line strings coerced; it has an ``out`` folder) and :meth:`Trainer.train`, which trains into that folder
through :func:`~editkit.training.loop.train_loop`, writes the artifact with :mod:`editkit.trained` and returns
its manifest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from editkit.errors import ConfigError
from editkit.registry import Registry
from editkit.typedconfig import TypedConfig

_TRAINERS: Registry[type[Trainer]] = Registry("trainer", builtins="editkit.training")

T = TypeVar("T", bound="Trainer")


class Trainer(ABC):
    """Trains one editor's parts. Subclasses set ``name`` and ``config_cls`` and register with
    :func:`register_trainer`."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[TypedConfig]] = TypedConfig

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
