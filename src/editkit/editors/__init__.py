"""Editors: one contract (:class:`Editor`), one handle type (:class:`EditHandle`), one registry.

The registries find the built-in methods and the handle types they save by importing every module of this
package on first use (:mod:`editkit.registry`): a new method is one new module here.
"""

from editkit.editors.base import (
    Capabilities,
    Editor,
    WeightEditor,
    available_methods,
    check_edit_kinds,
    create_editor,
    get_editor_class,
    register,
    statement_methods,
)
from editkit.editors.config import EditorConfig
from editkit.editors.handle import EditHandle

__all__ = [
    "Capabilities",
    "EditHandle",
    "Editor",
    "EditorConfig",
    "WeightEditor",
    "available_methods",
    "check_edit_kinds",
    "create_editor",
    "get_editor_class",
    "register",
    "statement_methods",
]
