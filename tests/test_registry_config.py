import pytest

from editkit.editors import available_methods, create_editor, get_editor_class
from editkit.editors.ft import FTCConfig
from editkit.editors.rome import ROMEConfig
from editkit.errors import ConfigError, UnknownNameError


def test_builtin_methods_registered():
    assert {"ft", "ft-c", "rome"} <= set(available_methods())


def test_unknown_method_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'rome'"):
        get_editor_class("romee")


def test_unknown_setting_is_rejected_with_suggestion():
    with pytest.raises(ConfigError, match="Did you mean 'v_lr'"):
        create_editor("rome", {"v_lrr": 0.1})


def test_values_are_typed_and_coerced_from_strings():
    cfg = ROMEConfig.from_dict({"v_steps": "7", "v_lr": "0.25", "fast_path": "false", "layer": None})
    assert cfg.v_steps == 7 and cfg.v_lr == 0.25 and cfg.fast_path is False and cfg.layer is None
    assert FTCConfig.from_dict({"layers": "1,2", "norm": "l2"}).layers == [1, 2]
    with pytest.raises(ConfigError, match="expected int"):
        ROMEConfig.from_dict({"v_steps": "many"})
    with pytest.raises(ConfigError, match="not one of"):
        FTCConfig.from_dict({"norm": "l3"})
    with pytest.raises(ConfigError, match="integer"):
        ROMEConfig.from_dict({"v_steps": 2.5})


def test_ranges_are_validated():
    with pytest.raises(ConfigError, match="radius"):
        FTCConfig(radius=0)
    with pytest.raises(ConfigError, match="does not exist"):
        ROMEConfig(corpus="/nonexistent/corpus.txt")


def test_caller_config_is_not_mutated():
    settings = {"layers": [2, 1]}
    editor = create_editor("ft", settings)
    assert settings == {"layers": [2, 1]}
    assert editor.config.layers == [2, 1]


def test_every_setting_has_help():
    for name in available_methods():
        for setting, _default, help_text in get_editor_class(name).config_cls.describe():
            assert help_text, f"{name}.{setting} has no help text"


def test_one_number_for_a_list_setting_is_the_list_of_it():
    """`--set layers=6` means layers [6]; a word or a flag is still refused."""
    from editkit.configfile import parse_overrides

    assert create_editor("ft", parse_overrides(["layers=6"])).config.layers == [6]
    assert create_editor("ft", {"layers": "1,2"}).config.layers == [1, 2]
    with pytest.raises(ConfigError, match="layers"):
        create_editor("ft", {"layers": True})
