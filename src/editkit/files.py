"""Files that are whole or absent, and content hashes.

Every file editkit writes for later reading (results, run state, caches, trained parts, manifests) goes through
:func:`atomic_open`: the bytes go to a temporary file beside the target, are flushed to disk, and the temporary
file is renamed over the target. A crash at any moment leaves the old file or the new one, never half of one.
:func:`read_json` reads a JSON file back with every way it can be unreadable (missing, a folder, not UTF-8,
truncated, nested past Python's recursion limit) as one :class:`~editkit.errors.ValidationError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import save_file

from editkit.errors import ValidationError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name (safetensors, torch.save): what is
    written there replaces ``path`` when the block ends without an error, and is removed otherwise."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open ``path`` for writing (``"w"`` text in UTF-8, ``"wb"`` bytes) such that it is replaced whole when the
    block ends without an error, and left as it was otherwise."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, encoding="utf-8" if mode == "w" else None) as f:
        yield f
        f.flush()


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` whole (:func:`atomic_open`)."""
    with atomic_open(path, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)


def atomic_save_tensors(
    tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write tensors as safetensors to ``path`` whole (CPU, contiguous copies where needed)."""
    with atomic_path(path) as tmp:
        save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, str(tmp), metadata=metadata)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` whole."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (its dtype's bit pattern, on the CPU, in row-major order)."""
    return hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | Path, what: str = "file") -> Any:
    """The parsed content of JSON file ``path``; any reason it cannot be read is one ValidationError naming
    ``what`` it was meant to be."""
    path = Path(path)
    if path.is_dir():
        raise ValidationError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise ValidationError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{what} {path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:
        raise ValidationError(f"{what} {path} is nested too deeply to read") from None
    except OSError as exc:
        raise ValidationError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
