"""The one Editor contract, its registry, and the base of every weight editor.

Every method, whatever it changes, returns an :class:`~editkit.editors.handle.EditHandle` (its own module, with
save / load) and takes a typed :class:`~editkit.editors.config.EditorConfig` (its own module). Weight editors
compute new parameter values without leaving the model changed (:class:`WeightEditor` enforces it: the
declared parameters are snapshotted before the computation and restored after it, even if it fails), and only
then apply them; :meth:`WeightEditor.committed` lets a method keep what it needs of an edit once it is applied.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import torch

from editkit.editors.config import EditorConfig
from editkit.editors.handle import EditHandle, ParamChange
from editkit.edits import EditRequest
from editkit.errors import ConfigError, ValidationError
from editkit.models.lm import LanguageModel
from editkit.registry import Registry

log = logging.getLogger(__name__)


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
    free_form: bool = False  # also takes statements: free-form descriptors without a prompt (EditRequest.statement)
    replay: bool = False  # replay(): an edit applied again from its recorded info, without its search


_EDITORS: Registry[type[Editor]] = Registry("method", builtins="editkit.editors")

E = TypeVar("E", bound="Editor")


def register(cls: type[E]) -> type[E]:
    """Class decorator: add an editor to the registry under ``cls.name``."""
    _EDITORS.add(cls.name, cls)
    return cls


def available_methods() -> list[str]:
    return _EDITORS.names()


def get_editor_class(name: str) -> type[Editor]:
    return _EDITORS.get(name)


def create_editor(name: str, config: Mapping[str, Any] | EditorConfig | None = None) -> Editor:
    cls = get_editor_class(name)
    if isinstance(config, EditorConfig):
        return cls(config)
    return cls(cls.config_cls.from_dict(config))


def statement_methods() -> list[str]:
    """The registered methods that take statements (free-form descriptors without a prompt): those whose
    capabilities say ``free_form``."""
    return [n for n in available_methods() if get_editor_class(n).capabilities.free_form]


def check_edit_kinds(editor: Editor, requests: Sequence[EditRequest]) -> None:
    """The one refusal of statement edits by an editor that edits with input-output pairs: a one-line
    :class:`ValidationError` naming the methods that take statements. Needs no model, so a front end calls it
    before loading one; :meth:`Editor.validate` calls it before any work."""
    if editor.capabilities.free_form:
        return
    statement = next((r for r in requests if isinstance(r, EditRequest) and r.is_statement), None)
    if statement is not None:
        raise ValidationError(
            f"{editor.name} edits with input-output pairs (a prompt and target_new), not statements such as "
            f"{(statement.descriptor or '')[:60]!r}; methods that take statements: {', '.join(statement_methods())}"
        )


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
        check_edit_kinds(self, requests)
        for r in requests:
            if self.capabilities.needs_subject:
                r.require_subject(self.name)
            lm.check_fits((r.descriptor or "") if r.is_statement else r.text + r.target_new)

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


@dataclass(frozen=True)
class WeightUpdate:
    """What a weight editor's :meth:`~WeightEditor.compute` (or ``recompute``) returns: the new values of (some of)
    the declared parameters, diagnostics for the handle's ``info``, and ``remember``: tensors per parameter name
    that the editor keeps of this edit once it is applied (MEMIT: the keys each layer's update was solved for),
    handed back to :meth:`WeightEditor.committed` and never saved with the handle."""

    values: dict[str, torch.Tensor]
    info: dict[str, Any]
    remember: dict[str, torch.Tensor] = field(default_factory=dict)


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
    ) -> WeightUpdate:
        """Return the new values of (some of) the declared parameters and diagnostics. May change the declared
        parameters while it works; they are restored afterwards."""

    def recompute(
        self,
        lm: LanguageModel,
        requests: Sequence[EditRequest],
        params: dict[str, torch.nn.Parameter],
        recorded: Mapping[str, Any],
    ) -> WeightUpdate:
        """As :meth:`compute`, from what an earlier compute of the same requests on the same weights recorded in
        its ``info["replay"]`` (``recorded``), skipping the search that found the edit. Editors that implement
        it set ``capabilities.replay``."""
        raise NotImplementedError(f"{self.name} sets capabilities.replay but does not implement recompute")

    def committed(self, lm: LanguageModel, handle: EditHandle, update: WeightUpdate) -> None:
        """Called once an edit (``apply`` or ``replay``) is applied to ``lm``, with its handle and the update
        that made it: an editor that remembers its edits keeps what it needs here (AlphaEdit: the keys, and a
        watcher on the handle's rollbacks). Default: nothing."""

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
        work: Callable[[dict[str, torch.nn.Parameter]], WeightUpdate],
    ) -> EditHandle:
        """Run ``work`` (the update from the declared parameters) under the guarantees above, apply its result
        and tell :meth:`committed`."""
        self.validate(lm, requests)
        t0 = time.perf_counter()
        names = self.target_parameters(lm, requests)
        all_params = dict(lm.model.named_parameters())
        params = {n: all_params[n] for n in names}
        originals = {n: p.detach().cpu().clone() for n, p in params.items()}
        grad_flags = {n: p.requires_grad for n, p in all_params.items()}
        was_training = lm.model.training
        try:
            update = work(params)
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(originals[n].to(p.device))
            for n, p in all_params.items():
                p.requires_grad_(grad_flags[n])
                p.grad = None
            lm.model.train(was_training)
        unexpected = set(update.values) - set(names)
        if unexpected:
            raise RuntimeError(f"{self.name} returned undeclared parameters {sorted(unexpected)}")
        changes = {
            n: ParamChange(original=originals[n], edited=v.detach().to("cpu", originals[n].dtype).clone())
            for n, v in update.values.items()
        }
        for n, ch in changes.items():
            if not torch.isfinite(ch.edited).all():
                raise ValidationError(f"{self.name} produced non-finite values for {n}; the model was not changed")
        info = {**update.info, "seconds": time.perf_counter() - t0}
        log.info("%s changed %d parameter(s) of %s in %.2f s", self.name, len(changes), lm.name, info["seconds"])
        handle = EditHandle(self.name, self.config.to_dict(), requests, lm, changes, info, applied=False)
        handle.reapply()
        self.committed(lm, handle, update)
        not_taken = edits_not_taken(lm, requests)
        if not_taken:
            handle.info["not_taken"] = not_taken
            log.warning(
                "%s: %d of %d edit(s) did not take (the new target is still less likely than the old one): %s",
                self.name,
                len(not_taken),
                len(requests),
                "; ".join(f"{requests[i].text!r} ->{requests[i].target_new!r}" for i in not_taken[:3]),
            )
        return handle


def edits_not_taken(lm: LanguageModel, requests: Sequence[EditRequest]) -> list[int]:
    """Indices of the requests (those with an old target) whose new target the model, as it is now, still finds
    less likely than the old one on the edit prompt (length-normalised log-likelihoods, as efficacy compares)."""
    checked = [i for i, r in enumerate(requests) if r.target_true is not None and r.target_true != r.target_new]
    if not checked:
        return []
    prompts = [requests[i].text for i in checked for _ in range(2)]
    answers = [a for i in checked for a in (requests[i].target_new, requests[i].target_true or "")]
    scores = [float(s.mean()) for s in lm.score(prompts, answers)]
    return [i for j, i in enumerate(checked) if scores[2 * j] <= scores[2 * j + 1]]


__all__ = [
    "Capabilities",
    "EditHandle",
    "Editor",
    "EditorConfig",
    "WeightEditor",
    "WeightUpdate",
    "available_methods",
    "check_edit_kinds",
    "create_editor",
    "edits_not_taken",
    "get_editor_class",
    "register",
    "statement_methods",
]
