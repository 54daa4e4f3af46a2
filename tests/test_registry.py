"""One registry behaviour for editors, trainers, handle loaders and store schemes (editkit.registry)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from editkit.errors import UnknownNameError
from editkit.registry import Registry


def test_names_are_case_insensitive_and_a_second_value_under_one_name_is_refused() -> None:
    reg: Registry[int] = Registry("widget")
    one, other = 1000, 2000  # distinct objects: "is" decides what counts as the same value
    reg.add("Alpha", one)
    reg.add("alpha", one)  # the same value again: a no-op
    with pytest.raises(ValueError, match="widget 'ALPHA' registered twice"):
        reg.add("ALPHA", other)
    with pytest.raises(TypeError, match="needs a name"):
        reg.add("", one)
    assert reg.get("ALPHA") is one and "alpha" in reg and reg.names() == ["alpha"]
    twin = reg.copy()
    twin.add("beta", other)
    assert reg.names() == ["alpha"] and twin.names() == ["alpha", "beta"]


def test_an_unknown_name_is_one_line_with_a_suggestion_and_the_known_names() -> None:
    reg: Registry[str] = Registry("widget")
    reg.add("rome", "r")
    reg.add("memit", "m")
    with pytest.raises(UnknownNameError) as err:
        reg.get("romee")
    assert str(err.value) == "unknown widget 'romee'. Did you mean 'rome'? Known: memit, rome."


def test_every_module_of_the_builtins_package_registers_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new built-in is one new module in the package: no list elsewhere names it."""
    (tmp_path / "widget_registry.py").write_text(
        "from editkit.registry import Registry\nREG = Registry('widget', builtins='widget_builtins')\n"
    )
    package = tmp_path / "widget_builtins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("alpha", "beta"):
        (package / f"{name}.py").write_text(f"from widget_registry import REG\nREG.add({name!r}, {name.upper()!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("widget_registry", "widget_builtins", "widget_builtins.alpha", "widget_builtins.beta"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import widget_registry  # type: ignore[import-not-found]

    assert "widget_builtins.alpha" not in sys.modules  # nothing imported before the registry is used
    assert widget_registry.REG.names() == ["alpha", "beta"]
    assert widget_registry.REG.get("Beta") == "BETA"


def test_the_editor_and_trainer_registries_share_it() -> None:
    from editkit.editors import available_methods, get_editor_class
    from editkit.training.registry import available_trainers

    assert {"rome", "memit", "serac", "ft"} <= set(available_methods())
    assert "serac" in available_trainers()
    with pytest.raises(UnknownNameError, match=r"unknown method 'rmoe'\. Did you mean 'rome'"):
        get_editor_class("rmoe")
