"""evaluation/ talks to editors through their interfaces only: no module imports a concrete editor class, and the
memory editors' model and handle satisfy the routing protocols that the scope breakdown reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from editkit.data import demo_cases
from editkit.editors import create_editor
from editkit.editors.routing import RecordedEditHandle, RoutingModel
from editkit.errors import ValidationError
from editkit.evaluation.scope import scope_breakdown
from editkit.models.tiny import tiny_model

EVALUATION = Path(__file__).parents[1] / "src" / "editkit" / "evaluation"

# What evaluation may import from editkit.editors: the contract, the registry and the routing interfaces.
ALLOWED = {
    "editkit.editors": {"create_editor", "check_edit_kinds"},  # check_edit_kinds: the contract's statement refusal
    "editkit.editors.base": {"Editor", "EditHandle", "Capabilities"},
    "editkit.editors.routing": {"RoutingModel", "RecordedEditHandle"},
}


def _editor_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every import from editkit.editors in a source file, at any depth (function bodies too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("editkit.editors"):
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "*") for alias in node.names if alias.name.startswith("editkit.editors")]
    return found


def test_evaluation_imports_no_concrete_editor_class():
    modules = sorted(EVALUATION.glob("*.py"))
    assert len(modules) > 10
    seen = {(m.name, module, name) for m in modules for module, name in _editor_imports(m)}
    bad = sorted((f, module, name) for f, module, name in seen if name not in ALLOWED.get(module, set()))
    assert not bad, f"evaluation imports concrete editor code: {bad}"
    assert ("scope.py", "editkit.editors.routing", "RoutingModel") in seen  # the check sees what it should


def test_the_check_catches_a_concrete_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from editkit.editors.memory import RoutedModel\nimport editkit.editors.rome\n")
    found = sorted(_editor_imports(source))
    assert found == [("editkit.editors.memory", "RoutedModel"), ("editkit.editors.rome", "*")]


def test_memory_editors_satisfy_the_routing_protocols_and_weight_editors_do_not():
    lm = tiny_model("llama")
    case = demo_cases()[0]
    handle = create_editor("lu").apply(lm, [case.request])
    try:
        model = handle.model
        assert isinstance(model, RoutingModel) and isinstance(handle, RecordedEditHandle)
        (route,) = model.memory.lookup([case.request.text])
        assert route.record is not None and route.record.id == handle.record_ids[0]
        assert model.memory.store.get(handle.record_ids[0]).request == case.request
    finally:
        handle.rollback()
    weights = create_editor("ft", {"steps": 1}).apply(lm, [case.request])
    assert not isinstance(weights.model, RoutingModel) and not isinstance(weights, RecordedEditHandle)
    weights.rollback()


def test_scope_breakdown_refuses_an_editor_that_does_not_route():
    with pytest.raises(ValidationError, match="does not route"):
        scope_breakdown(tiny_model("llama"), create_editor("ft", {"steps": 1}), demo_cases()[:2], 1, progress=False)
