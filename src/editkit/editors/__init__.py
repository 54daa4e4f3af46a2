"""Editors: one contract (:class:`Editor`), one handle type (:class:`EditHandle`), one registry.

Importing this package registers the built-in methods.
"""

from editkit.editors import alphaedit, ft, lu, memit, rome, serac
from editkit.editors.base import (
    Capabilities,
    EditHandle,
    Editor,
    EditorConfig,
    WeightEditor,
    available_methods,
    create_editor,
    get_editor_class,
    register,
)

__all__ = [
    "Capabilities",
    "EditHandle",
    "Editor",
    "EditorConfig",
    "WeightEditor",
    "alphaedit",
    "available_methods",
    "create_editor",
    "ft",
    "get_editor_class",
    "lu",
    "memit",
    "register",
    "rome",
    "serac",
]
