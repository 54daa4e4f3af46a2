"""Editors' typed configs (:class:`~editkit.typedconfig.TypedConfig`): every method's settings derive from
:class:`EditorConfig`, so ``editkit methods NAME`` can list them and ``create_editor`` can build them from a dict."""

from __future__ import annotations

from dataclasses import dataclass

from editkit.typedconfig import TypedConfig


@dataclass
class EditorConfig(TypedConfig):
    """Base of every method's config. Subclasses are dataclasses whose fields carry ``metadata={"help": ...}``."""


__all__ = ["EditorConfig"]
