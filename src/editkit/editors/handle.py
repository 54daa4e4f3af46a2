"""The one handle type every edit returns, its save / load, and the tensors an edit's record carries.

An :class:`EditHandle` is the edited model surface (:attr:`EditHandle.model`), a bit-exact rollback, save /
load and a summary of what changed. The base class is a weight edit: the original and edited values of each
changed parameter. Another kind of edit (a memory edit, :mod:`editkit.editors.memory`) subclasses it, names its
``handle_type`` and registers a loader for it (:func:`register_handle_loader`): ``save`` writes the type into
``handle.json`` (key ``kind``; files without one are weight edits) and :meth:`EditHandle.load` dispatches on it.

Everything saved is hashed and checked on load: handle.json records the sha256 of its own content (key
``sha256``), a weight edit the sha256 of every edited tensor, so flipped bytes, a truncated file or garbled JSON
are one :class:`~editkit.errors.ValidationError`, never an edit applied with other values. Files are written whole
(the tensors first, handle.json last).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file

from editkit.edits import EditRequest
from editkit.errors import ValidationError
from editkit.files import atomic_save_tensors, atomic_write, read_json, tensor_sha256
from editkit.models.lm import LanguageModel
from editkit.registry import Registry

log = logging.getLogger(__name__)

HANDLE_FORMAT = 1
HANDLE_FILE = "handle.json"

HandleLoader = Callable[[Path, dict[str, Any], LanguageModel], "EditHandle"]
"""Applies a saved edit to a model: ``loader(folder, meta, lm)``, ``meta`` being the folder's handle.json."""

_LOADERS: Registry[HandleLoader] = Registry("handle type", builtins="editkit.editors")


def register_handle_loader(handle_type: str, loader: HandleLoader) -> None:
    """Make :meth:`EditHandle.load` read folders whose handle.json has ``"kind": handle_type`` with ``loader``."""
    _LOADERS.add(handle_type, loader)


def handle_types() -> list[str]:
    """The handle types :meth:`EditHandle.load` can read."""
    return _LOADERS.names()


@dataclass
class ParamChange:
    original: torch.Tensor
    edited: torch.Tensor


@dataclass
class EditHandle:
    """What an edit did, and how to undo, save or explain it. One type for every method.

    ``model`` is the edited model surface. For weight edits it is the same :class:`LanguageModel` that was
    edited (its parameters now hold the edited values); ``changes`` maps parameter names to their original and
    edited tensors (CPU copies), so rollback is exact to the bit. ``watchers`` are called with the new value of
    ``applied`` whenever a rollback or reapply changes it (an editor that remembers its edits, like AlphaEdit,
    follows them this way without keeping the handle alive).
    """

    handle_type: ClassVar[str] = "weights"  # handle.json's "kind"; the loader registered for it reads the folder
    method: str
    config: dict[str, Any]
    requests: list[EditRequest]
    model: LanguageModel
    changes: dict[str, ParamChange] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    applied: bool = True
    watchers: list[Callable[[bool], None]] = field(default_factory=list, repr=False, compare=False)

    def _set_applied(self, applied: bool) -> None:
        self.applied = applied
        for watch in self.watchers:
            watch(applied)

    # ---- undo / redo
    def _params(self) -> dict[str, torch.nn.Parameter]:
        params = dict(self.model.model.named_parameters())
        missing = [n for n in self.changes if n not in params]
        if missing:
            raise ValidationError(f"the model has no parameters {missing}; was this handle made for another model?")
        return params

    @torch.no_grad()
    def rollback(self, *, force: bool = False) -> None:
        """Restore every changed parameter to its original value, bit for bit.

        Refuses (unless ``force``) when a parameter no longer holds this edit's values, i.e. something edited
        it since: rolling back then would silently discard the later change too.
        """
        if not self.applied:
            return
        params = self._params()
        if not force:
            for name, ch in self.changes.items():
                if not torch.equal(params[name].detach().cpu(), ch.edited):
                    raise ValidationError(
                        f"{name} changed after this edit; roll back later edits first (or pass force=True)"
                    )
        for name, ch in self.changes.items():
            params[name].copy_(ch.original.to(params[name].device))
        self._set_applied(False)

    @torch.no_grad()
    def reapply(self) -> None:
        if self.applied:
            return
        params = self._params()
        for name, ch in self.changes.items():
            params[name].copy_(ch.edited.to(params[name].device))
        self._set_applied(True)

    def __enter__(self) -> EditHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.rollback()

    # ---- explain
    def summary(self) -> dict[str, Any]:
        params = {}
        for name, ch in self.changes.items():
            delta = ch.edited.double() - ch.original.double()
            params[name] = {
                "shape": list(ch.original.shape),
                "delta_norm": float(delta.norm()),
                "relative_delta": float(delta.norm() / ch.original.double().norm().clamp_min(1e-12)),
                "changed_elements": int((delta != 0).sum()),
            }
        return {
            "method": self.method,
            "applied": self.applied,
            "requests": [r.to_dict() for r in self.requests],
            "parameters": params,
            "info": self.info,
        }

    # ---- persistence
    def save(self, path: str | Path) -> Path:
        """Write into folder ``path`` ``handle.json`` (format, kind, method, model, config, requests and this
        handle type's own fields) and the handle type's own files (:meth:`save_payload`)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": HANDLE_FORMAT,
            "kind": self.handle_type,
            "method": self.method,
            "model": self.model.name,
            "config": self.config,
            "requests": [r.to_dict() for r in self.requests],
            **self.save_payload(folder),
        }
        meta["sha256"] = _meta_digest(meta)
        atomic_write(folder / HANDLE_FILE, json.dumps(meta, indent=2))
        return folder

    def save_payload(self, folder: Path) -> dict[str, Any]:
        """Write this handle type's files into ``folder`` and return its fields of handle.json. A weight edit:
        the edited tensors (``changes.safetensors``), the sha256 of each original and of each edited tensor, and
        the info."""
        tensors = {f"edited::{n}": ch.edited.contiguous() for n, ch in self.changes.items()}
        atomic_save_tensors(tensors, folder / "changes.safetensors")
        return {
            "original_sha256": {n: tensor_sha256(ch.original) for n, ch in self.changes.items()},
            "edited_sha256": {n: tensor_sha256(ch.edited) for n, ch in self.changes.items()},
            "info": _jsonable(self.info),
        }

    @classmethod
    @torch.no_grad()
    def load(cls, path: str | Path, lm: LanguageModel) -> EditHandle:
        """Apply a saved edit to ``lm`` with the loader of its handle type (handle.json's ``kind``)."""
        folder = Path(path)
        meta_path = folder / HANDLE_FILE
        if not meta_path.is_file():
            raise ValidationError(f"{folder} holds no saved edit (no {HANDLE_FILE})")
        try:
            meta = read_json(meta_path, "saved edit")
        except ValidationError as exc:
            raise ValidationError(f"{exc}: the saved edit is damaged") from None
        if not isinstance(meta, dict):
            raise ValidationError(f"{meta_path} is damaged: not the JSON object editkit wrote")
        if "sha256" not in meta:
            log.warning("%s records no digest (saved by an older editkit): its content cannot be verified", meta_path)
        elif meta["sha256"] != _meta_digest(meta):
            raise ValidationError(f"{meta_path} is damaged: its content does not match the sha256 it was saved with")
        if meta.get("format") != HANDLE_FORMAT:
            raise ValidationError(f"{meta_path}: unsupported handle format {meta.get('format')!r}")
        kind = meta.get("kind", EditHandle.handle_type)
        known = handle_types()
        if kind not in known:
            raise ValidationError(f"{meta_path}: unknown handle type {kind!r}; known: {', '.join(known)}")
        try:
            return _LOADERS.get(kind)(folder, meta, lm)
        except (KeyError, TypeError, AttributeError) as exc:  # a field missing or of the wrong type
            raise ValidationError(f"{meta_path} is damaged: field {exc} missing or malformed") from None


def _meta_digest(meta: Mapping[str, Any]) -> str:
    """sha256 of handle.json's content but its own digest (canonical JSON, so a reload hashes the same)."""
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _load_weights(folder: Path, meta: dict[str, Any], lm: LanguageModel) -> EditHandle:
    """A saved weight edit, applied: the parameters it changes must hold the values it was made from."""
    changes_file = folder / "changes.safetensors"
    try:
        tensors = load_file(str(changes_file))
    except Exception as exc:  # safetensors reports truncation and garbage as its own SafetensorError
        raise ValidationError(f"{changes_file} is damaged or missing ({str(exc).splitlines()[0]})") from None
    edited_sha = meta.get("edited_sha256")
    if edited_sha is None:
        log.warning("%s records no digest of its edited values (saved by an older editkit)", folder / HANDLE_FILE)
    for name in meta["original_sha256"]:
        stored = tensors.get(f"edited::{name}")
        if stored is None or (edited_sha is not None and tensor_sha256(stored) != edited_sha.get(name)):
            raise ValidationError(
                f"{changes_file} is damaged: the edited values of {name} do not match the sha256 they were saved with"
            )
    params = dict(lm.model.named_parameters())
    changes: dict[str, ParamChange] = {}
    for name, sha in meta["original_sha256"].items():
        if name not in params:
            raise ValidationError(f"saved edit changes {name}, which {lm.name} does not have")
        current = params[name].detach().cpu().clone()
        if tensor_sha256(current) != sha:
            raise ValidationError(
                f"saved edit was made on a different {name} than {lm.name} holds now "
                "(another base model, or it is already edited)"
            )
        changes[name] = ParamChange(original=current, edited=tensors[f"edited::{name}"])
    handle = EditHandle(
        method=meta["method"],
        config=meta["config"],
        requests=[EditRequest.from_dict(r) for r in meta["requests"]],
        model=lm,
        changes=changes,
        info=meta.get("info", {}),
        applied=False,
    )
    handle.reapply()
    return handle


register_handle_loader(EditHandle.handle_type, _load_weights)


def pack_tensor(t: torch.Tensor) -> dict[str, Any]:
    """A float tensor as JSON, bit for bit: ``{"shape", "float32"}`` with the little-endian float32 bytes in
    base64 (a few KB for a hidden state, a third of what a list of decimals takes)."""
    data = t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes()
    return {"shape": list(t.shape), "float32": base64.b64encode(data).decode("ascii")}


def unpack_tensor(packed: Mapping[str, Any]) -> torch.Tensor:
    """The tensor :func:`pack_tensor` wrote."""
    try:
        shape = [int(n) for n in packed["shape"]]
        values = np.frombuffer(base64.b64decode(packed["float32"], validate=True), dtype="<f4")
        return torch.from_numpy(values.astype(np.float32).reshape(shape))
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ValidationError(f"not a packed tensor ({exc})") from None


def recorded_tensor(recorded: Mapping[str, Any], key: str) -> torch.Tensor:
    """The tensor an edit's ``info["replay"]`` (``recorded``) keeps under ``key``, or a clear error."""
    packed = recorded.get(key) if isinstance(recorded, Mapping) else None
    if not isinstance(packed, Mapping):
        raise ValidationError(f"the edit's record holds no {key!r} to replay it from")
    return unpack_tensor(packed)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float | int | str | bool) or obj is None:
        return obj
    return str(obj)


__all__ = [
    "EditHandle",
    "HandleLoader",
    "ParamChange",
    "handle_types",
    "pack_tensor",
    "recorded_tensor",
    "register_handle_loader",
    "unpack_tensor",
]
