"""Named registries: editors, trainers, handle loaders and edit-store schemes are each one :class:`Registry`, so
registering twice, listing and looking up an unknown name (a one-line error with "did you mean") behave the
same everywhere.

A registry's built-in entries are found, not listed: on first use it imports every module of its ``builtins``
package, and each module registers what it defines (``@register`` on an editor, ``@register_trainer`` on a
trainer). Adding a method therefore touches only the new module (its editor, its config, its trainer): no list
elsewhere names it."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

from editkit.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names (case-insensitive) to values. ``kind`` names what is registered in error messages; ``builtins`` is a
    package whose modules register the built-in entries, all imported on the first listing or lookup (so
    importing the registry itself stays cheap and free of import cycles)."""

    def __init__(self, kind: str, builtins: str | None = None) -> None:
        self.kind = kind
        self._builtins = builtins
        self._loaded = builtins is None
        self._entries: dict[str, T] = {}

    def add(self, name: str, value: T) -> None:
        """Register ``value`` under ``name``; the same value again is a no-op, another one a :class:`ValueError`."""
        if not name:
            raise TypeError(f"a {self.kind} needs a name")
        key = name.lower()
        if self._entries.get(key, value) is not value:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[key] = value

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries (what a test registers into it stays there)."""
        self._load_builtins()
        twin: Registry[T] = Registry(self.kind)
        twin._entries = dict(self._entries)
        return twin

    def names(self) -> list[str]:
        """Every registered name, sorted (the built-in entries included)."""
        self._load_builtins()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The value registered under ``name``; an unknown name is an :class:`UnknownNameError` listing the known."""
        names = self.names()
        key = name.lower()
        if key not in self._entries:
            raise UnknownNameError(self.kind, name, names)
        return self._entries[key]

    def _load_builtins(self) -> None:
        if self._loaded or self._builtins is None:
            return
        package = importlib.import_module(self._builtins)
        for module in pkgutil.iter_modules(package.__path__, f"{self._builtins}."):
            importlib.import_module(module.name)
        self._loaded = True

    def __contains__(self, name: str) -> bool:
        return name.lower() in self.names()
