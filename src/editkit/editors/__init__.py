"""Editors: one contract (:class:`Editor`), one handle type (:class:`EditHandle`), one registry.

Importing this package registers the built-in methods and the handle types they save.
"""

from editkit.editors import alphaedit, ft, lu, memit, rome, serac
from editkit.editors.base import (
    Capabilities,
    Editor,
    WeightEditor,
    available_methods,
    create_editor,
    get_editor_class,
    register,
)
from editkit.editors.config import EditorConfig
from editkit.editors.handle import EditHandle

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
