"""The one Editor contract, its registry, typed configs and the one `EditHandle` type.

Every method, whatever it changes, returns an :class:`EditHandle`: the edited model surface
(:attr:`EditHandle.model`, a :class:`~editkit.models.lm.LanguageModel`), a bit-exact rollback, save / load
(safetensors + JSON) and a summary of what changed. Weight editors compute new parameter values without
leaving the model changed (the base class enforces it: the declared parameters are snapshotted before the
computation and restored after it, even if it fails), and only then apply them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import time
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from editkit.edits import EditRequest
from editkit.errors import ConfigError, UnknownNameError, ValidationError, did_you_mean
from editkit.files import tensor_sha256
from editkit.models.lm import LanguageModel

log = logging.getLogger(__name__)

HANDLE_FORMAT = 1


# --------------------------------------------------------------------------- configs
C = TypeVar("C", bound="EditorConfig")


@dataclass
class EditorConfig:
    """Base of every method's config. Subclasses are dataclasses whose fields carry ``metadata={"help": ...}``."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check value ranges; raise :class:`ConfigError`."""

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any] | None = None) -> C:
        values = dict(values or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k not in fields]
        if unknown:
            k = unknown[0]
            raise ConfigError(
                f"{cls.__name__} has no setting {k!r}.{did_you_mean(k, fields)} Settings: {', '.join(fields)}"
            )
        hints = typing.get_type_hints(cls)
        for k, v in values.items():
            values[k] = _coerce(cls.__name__, k, hints[k], v)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """``(name, default, help)`` for every setting."""
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
            out.append((f.name, repr(default), f.metadata.get("help", "")))
        return out


def _coerce(owner: str, key: str, hint: Any, value: Any) -> Any:
    """Accept a value for a typed field, converting strings from the command line; reject wrong types."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(owner, key, arg, value)
            except ConfigError:
                continue
        raise ConfigError(f"{owner}.{key}: {value!r} is not a valid {hint}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{owner}.{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{owner}.{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(owner, key, inner, v) for v in value]
        return items if origin is list else tuple(items)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{owner}.{key}: expected true/false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{owner}.{key}: expected a number, got {value!r}")
        try:
            converted = hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{owner}.{key}: expected {hint.__name__}, got {value!r}") from None
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{owner}.{key}: expected an integer, got {value!r}")
        return converted
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{owner}.{key}: expected a string, got {value!r}")
        return value
    return value


# --------------------------------------------------------------------------- capabilities and registry
@dataclass(frozen=True)
class Capabilities:
    """What generic code may rely on. Two questions are kept apart: where an edit lives (``storage``: in the
    model's parameters, so drift, the guard and resumable runs apply; or in a memory beside a frozen model) and
    whether the method needs parts trained beforehand (``trained``: a trainer of the same name makes them)."""

    storage: Literal["weights", "memory"]
    trained: bool = False  # needs trained parts (editkit train NAME)
    batch: bool = True  # several requests in one apply()
    needs_subject: bool = False
    free_form: bool = False  # accepts free-form descriptors instead of input-output pairs
    replay: bool = False  # replay(): an edit applied again from its recorded info, without its search


_REGISTRY: dict[str, type[Editor]] = {}

E = TypeVar("E", bound="Editor")


def register(cls: type[E]) -> type[E]:
    """Class decorator: add an editor to the registry under ``cls.name``."""
    if not getattr(cls, "name", ""):
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"editor name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    import editkit.editors  # noqa: F401  (registers the built-in methods)

    return sorted(_REGISTRY)


def get_editor_class(name: str) -> type[Editor]:
    available = available_methods()
    key = name.lower()
    if key not in _REGISTRY:
        raise UnknownNameError("method", name, available)
    return _REGISTRY[key]


def create_editor(name: str, config: Mapping[str, Any] | EditorConfig | None = None) -> Editor:
    cls = get_editor_class(name)
    if isinstance(config, EditorConfig):
        return cls(config)
    return cls(cls.config_cls.from_dict(config))


# --------------------------------------------------------------------------- handle
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
        """Write ``handle.json`` and ``changes.safetensors`` into folder ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"edited::{n}": ch.edited.contiguous() for n, ch in self.changes.items()}
        save_file(tensors, str(folder / "changes.safetensors"))
        meta = {
            "format": HANDLE_FORMAT,
            "method": self.method,
            "model": self.model.name,
            "config": self.config,
            "requests": [r.to_dict() for r in self.requests],
            "original_sha256": {n: tensor_sha256(ch.original) for n, ch in self.changes.items()},
            "info": _jsonable(self.info),
        }
        (folder / "handle.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    @torch.no_grad()
    def load(cls, path: str | Path, lm: LanguageModel) -> EditHandle:
        """Apply a saved edit to ``lm``: the parameters it changes must hold the values it was made from. A
        memory edit is added to the memory of a new editor made from the saved config."""
        folder = Path(path)
        meta_path = folder / "handle.json"
        if not meta_path.exists():
            raise ValidationError(f"{folder} holds no saved edit (no handle.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != HANDLE_FORMAT:
            raise ValidationError(f"{meta_path}: unsupported handle format {meta.get('format')!r}")
        if meta.get("kind") == "memory":  # edits held in a memory: add the requests to one again
            editor = create_editor(meta["method"], meta["config"])
            return editor.apply(lm, [EditRequest.from_dict(r) for r in meta["requests"]])
        tensors = load_file(str(folder / "changes.safetensors"))
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
        handle = cls(
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


# --------------------------------------------------------------------------- editors
class Editor(ABC):
    """A model editing method. Subclasses set ``name``, ``config_cls`` and ``capabilities`` and register
    themselves with :func:`register`."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[EditorConfig]] = EditorConfig
    capabilities: ClassVar[Capabilities]

    def __init__(self, config: EditorConfig | None = None) -> None:
        if config is None:
            config = self.config_cls()
        if not isinstance(config, self.config_cls):
            raise ConfigError(f"{self.name} takes a {self.config_cls.__name__}, got {type(config).__name__}")
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    def validate(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> None:
        if not requests:
            raise ValidationError(f"{self.name}: no edit requests given")
        if len(requests) > 1 and not self.capabilities.batch:
            raise ValidationError(f"{self.name} edits one request at a time; got {len(requests)}")
        for r in requests:
            if not isinstance(r, EditRequest):
                raise ValidationError(f"{self.name}: expected EditRequest, got {type(r).__name__}")
            if r.descriptor and not r.prompt and not self.capabilities.free_form:
                raise ValidationError(f"{self.name} needs input-output edits, not free-form descriptors")
            if self.capabilities.needs_subject:
                r.require_subject(self.name)
            lm.check_fits(r.text + r.target_new)

    def provenance(self) -> dict[str, str]:
        """What besides the config decides this editor's behaviour (trained parts it loads, by content hash),
        recorded with every result. Default: nothing."""
        return {}

    def prepare(self, lm: LanguageModel, *, progress: bool = False) -> None:
        """Compute ahead what every edit of ``lm`` will need (statistics, sampled contexts), so that the first
        edit is not slower than the rest. Optional: ``apply`` does it on demand. Default: nothing to do."""
        return None

    def export_state(self, lm: LanguageModel) -> dict[str, torch.Tensor]:
        """What this editor remembers of the edits it has made to ``lm`` and that shapes its next edits
        (AlphaEdit: their keys), as tensors, so that a run stopped in one process goes on the same in another
        (:meth:`import_state`). Default: nothing; the next edit depends on the model's weights alone."""
        return {}

    def import_state(self, lm: LanguageModel, tensors: Mapping[str, torch.Tensor]) -> None:
        """Take over what :meth:`export_state` returned, in a new editor, once ``lm`` holds the weights it was
        exported with: those edits then count as this editor's own, applied."""
        if tensors:
            raise ValidationError(f"{self.name} keeps nothing between edits; got saved state {sorted(tensors)}")

    @abstractmethod
    def apply(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> EditHandle:
        """Edit ``lm`` and return the handle. The edit stays in effect until the handle is rolled back."""

    def replay(self, lm: LanguageModel, requests: Sequence[EditRequest], recorded: Mapping[str, Any]) -> EditHandle:
        """Apply again an edit that this editor (same config) made on a model holding the weights ``lm`` holds
        now, from its handle's ``info["replay"]``: the same change without the search that found it (a
        sequential run rebuilt from its records on another machine). Only editors with ``capabilities.replay``."""
        raise ValidationError(f"{self.name} cannot apply an edit again from its record; edit anew")

    @contextmanager
    def edited(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> Iterator[LanguageModel]:
        """Apply temporarily: ``with editor.edited(lm, reqs) as model: ...`` rolls back on exit."""
        handle = self.apply(lm, requests)
        try:
            yield handle.model
        finally:
            handle.rollback(force=True)


class WeightEditor(Editor):
    """An editor that changes parameters. Subclasses implement :meth:`target_parameters` and
    :meth:`compute`; the base class guarantees that only the declared parameters change, that the model's
    modes and ``requires_grad`` flags are restored, and that a failure leaves the model untouched."""

    @abstractmethod
    def target_parameters(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> list[str]:
        """Names of the parameters this edit may change."""

    @abstractmethod
    def compute(
        self, lm: LanguageModel, requests: Sequence[EditRequest], params: dict[str, torch.nn.Parameter]
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Return the new values of (some of) the declared parameters and diagnostics. May change the declared
        parameters while it works; they are restored afterwards."""

    def recompute(
        self,
        lm: LanguageModel,
        requests: Sequence[EditRequest],
        params: dict[str, torch.nn.Parameter],
        recorded: Mapping[str, Any],
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """As :meth:`compute`, from what an earlier compute of the same requests on the same weights recorded in
        its ``info["replay"]`` (``recorded``), skipping the search that found the edit. Editors that implement
        it set ``capabilities.replay``."""
        raise NotImplementedError(f"{self.name} sets capabilities.replay but does not implement recompute")

    def apply(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> EditHandle:
        requests = list(requests)
        return self._commit(lm, requests, lambda params: self.compute(lm, requests, params))

    def replay(self, lm: LanguageModel, requests: Sequence[EditRequest], recorded: Mapping[str, Any]) -> EditHandle:
        requests = list(requests)
        if not self.capabilities.replay:
            return super().replay(lm, requests, recorded)
        return self._commit(lm, requests, lambda params: self.recompute(lm, requests, params, recorded))

    def _commit(
        self,
        lm: LanguageModel,
        requests: list[EditRequest],
        work: Callable[[dict[str, torch.nn.Parameter]], tuple[dict[str, torch.Tensor], dict[str, Any]]],
    ) -> EditHandle:
        """Run ``work`` (new parameter values and info from the declared parameters) under the guarantees above
        and apply its result."""
        self.validate(lm, requests)
        t0 = time.perf_counter()
        names = self.target_parameters(lm, requests)
        all_params = dict(lm.model.named_parameters())
        params = {n: all_params[n] for n in names}
        originals = {n: p.detach().cpu().clone() for n, p in params.items()}
        grad_flags = {n: p.requires_grad for n, p in all_params.items()}
        was_training = lm.model.training
        try:
            new_values, info = work(params)
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(originals[n].to(p.device))
            for n, p in all_params.items():
                p.requires_grad_(grad_flags[n])
                p.grad = None
            lm.model.train(was_training)
        unexpected = set(new_values) - set(names)
        if unexpected:
            raise RuntimeError(f"{self.name} returned undeclared parameters {sorted(unexpected)}")
        changes = {
            n: ParamChange(original=originals[n], edited=v.detach().to("cpu", originals[n].dtype).clone())
            for n, v in new_values.items()
        }
        for n, ch in changes.items():
            if not torch.isfinite(ch.edited).all():
                raise ValidationError(f"{self.name} produced non-finite values for {n}; the model was not changed")
        info = {**info, "seconds": time.perf_counter() - t0}
        log.info("%s changed %d parameter(s) of %s in %.2f s", self.name, len(changes), lm.name, info["seconds"])
        handle = EditHandle(self.name, self.config.to_dict(), requests, lm, changes, info, applied=False)
        handle.reapply()
        return handle
