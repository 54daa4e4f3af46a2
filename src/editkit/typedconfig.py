"""Typed configs: dataclasses whose fields carry help text, built from dicts (YAML, the command line) with unknown
keys rejected ("did you mean"), command-line strings coerced to the field's type, and ranges checked by each
config's ``validate``. Configs are never mutated. Editors' settings, run settings, trainers' settings and the
guard's all derive from :class:`TypedConfig`; this module imports nothing heavy, so the CLI can build its options
from a config without loading torch's model code."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from editkit.errors import ConfigError, did_you_mean

C = TypeVar("C", bound="TypedConfig")


@dataclass
class TypedConfig:
    """Base of every typed config. Subclasses are dataclasses whose fields carry ``metadata={"help": ...}``."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check value ranges; raise :class:`ConfigError`."""

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any] | None = None) -> C:
        values = dict(values or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k not in fields]
        if unknown:
            k = unknown[0]
            raise ConfigError(
                f"{cls.__name__} has no setting {k!r}.{did_you_mean(k, fields)} Settings: {', '.join(fields)}"
            )
        hints = typing.get_type_hints(cls)
        for k, v in values.items():
            values[k] = _coerce(cls.__name__, k, hints[k], v)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every setting's default, as :meth:`to_dict` writes values."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            factory: Any = f.default_factory
            out[f.name] = f.default if f.default is not dataclasses.MISSING else factory()
        return out

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """``(name, default, help)`` for every setting."""
        defaults = cls.defaults()
        return [(f.name, repr(defaults[f.name]), f.metadata.get("help", "")) for f in dataclasses.fields(cls)]


def _coerce(owner: str, key: str, hint: Any, value: Any) -> Any:
    """Accept a value for a typed field, converting strings from the command line; reject wrong types."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(owner, key, arg, value)
            except ConfigError:
                continue
        raise ConfigError(f"{owner}.{key}: {value!r} is not a valid {hint}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{owner}.{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]  # one item given alone (layers=6): the list of it
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{owner}.{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(owner, key, inner, v) for v in value]
        return items if origin is list else tuple(items)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{owner}.{key}: expected true/false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{owner}.{key}: expected a number, got {value!r}")
        try:
            converted = hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{owner}.{key}: expected {hint.__name__}, got {value!r}") from None
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{owner}.{key}: expected an integer, got {value!r}")
        return converted
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{owner}.{key}: expected a string, got {value!r}")
        return value
    return value


__all__ = ["TypedConfig"]
