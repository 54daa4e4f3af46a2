"""Reading a YAML config file into a mapping, with errors a user can act on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from editkit.errors import ConfigError, ValidationError


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a YAML file; dashes in keys become underscores (``edits-per-step`` = ``edits_per_step``)."""
    import yaml

    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder, not a file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply to read") from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as settings, each value read as YAML (``6``, ``0.1``, ``true``, ``[1, 2]``, ``a``)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValidationError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except (yaml.YAMLError, RecursionError):
            raise ValidationError(f"--set {key.strip()}: {value!r} is not a valid value (YAML: 6, [1, 2], a)") from None
    return out
