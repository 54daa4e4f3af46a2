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

from editkit.errors import EditkitError, ValidationError


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


def require_file(path: str | Path, what: str = "file", error: type[EditkitError] = ValidationError) -> Path:
    """``path`` as a Path, or ``error`` saying that it is a folder or that it does not exist."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise error(f"{what} {path} {'is not a regular file' if path.exists() else 'does not exist'}")
    return path


def read_json(path: str | Path, what: str = "file") -> Any:
    """The parsed content of JSON file ``path``; any reason it cannot be read is one ValidationError naming
    ``what`` it was meant to be."""
    path = require_file(path, what)
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


def check_writable(path: str | Path, what: str, *, folder: bool = False) -> None:
    """Raise a ValidationError, before any work, when ``path`` (a file, or with ``folder`` a folder) could not be
    written: it is the wrong kind of thing, or the nearest folder that exists above it refuses a new file.
    Nothing is created: the probe file is removed again."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise ValidationError(f"{what} {path} is {kind}; give {'a folder' if folder else 'a file name'}")
    above = path if folder and path.is_dir() else path.parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise ValidationError(f"{what} {path} cannot be written: {above} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=above, prefix=".editkit-probe-"):
            pass
    except OSError as exc:
        raise ValidationError(f"{what} {path} cannot be written: {above}: {exc.strerror or exc}") from None
