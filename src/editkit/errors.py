"""Errors a user can cause. The CLI prints these as one line; everything else is a bug and keeps its traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EditkitError(Exception):
    """Base class for errors caused by input, configuration or environment (not by a bug)."""


class ValidationError(EditkitError, ValueError):
    """An edit request, case or config value is malformed."""


class ConfigError(EditkitError, ValueError):
    """A configuration has unknown keys or values of the wrong type."""


class LayerRangeError(ValidationError, IndexError):
    """A layer number the model does not have."""


class UnknownNameError(EditkitError, KeyError):
    """A method, model or architecture name is not registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        super().__init__(f"unknown {kind} {name!r}.{did_you_mean(name, known)} Known: {', '.join(known)}.")
        self.name = name

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class ModelUnavailableError(EditkitError, RuntimeError):
    """Weights cannot be found locally and cannot be fetched."""


class UnsupportedArchitectureError(EditkitError, TypeError):
    """The model's config class has no architecture adapter."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A hint naming the closest known name (by edit similarity, or by a shared prefix), or ""."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if not close:
        low = name.lower()
        close = [k for k in known if k.lower().startswith(low[:3]) or low in k.lower()][:1]
    return f" Did you mean {close[0]!r}?" if close else ""
