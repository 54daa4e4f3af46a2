"""The forward passes of a target-residual optimisation (:meth:`~editkit.editors.locate.LocateEditor.target_residuals`).

One batch holds, for every request optimised together, its context-prefixed rewriting prompts with its target
appended and its KL prompt (:class:`PassRows`). :meth:`Passes.capture` reads, without a change, the keys
entering the edited layer's MLP output projection at each row's subject token, the original output of the
optimised site and the logits at the target positions; :meth:`Passes.step` gives those logits with each
request's residual delta added to the site's output at its rows' subject tokens. Requests do not interact
(each row attends only to itself), so a batch of requests is one set of passes where one request at a time
would be many.

Neither the layers below the edited one nor the tokens before the subject depend on delta, so
:class:`FastPasses` computes both once and caches them: every step runs only the edited layer and those above
it, on the tokens from the subject on (the layers below are replaced by stubs that replay their cached output,
:func:`replay_prefix`). :class:`ReferencePasses` does plain full passes; it serves encoder-decoder models and
is the reference the fast path is tested against.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from editkit.models.hooks import hooks
from editkit.models.lm import CACHE_KEY, LanguageModel


class _Replay(nn.Module):
    """Stands in for layer 0 of a replayed prefix: returns the cached input of the first live layer."""

    def __init__(self, value: torch.Tensor, like: Any, attrs: dict[str, Any]) -> None:
        super().__init__()
        self.value = value
        self.like = like
        self.__dict__.update(attrs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return _with_hidden(self.like, self.value)


class _PassThrough(nn.Module):
    def __init__(self, like: Any, attrs: dict[str, Any]) -> None:
        super().__init__()
        self.like = like
        self.__dict__.update(attrs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        return _with_hidden(self.like, hidden)


def layer_output_hidden(out: Any) -> torch.Tensor:
    """The hidden states in a module's output (a layer may return a tuple)."""
    return out if isinstance(out, torch.Tensor) else out[0]


def _with_hidden(like: Any, hidden: torch.Tensor) -> Any:
    if isinstance(like, torch.Tensor):
        return hidden
    return (hidden, *like[1:])


def _plain_attrs(module: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and isinstance(v, str | int | float | bool)}


def step_cache(cache: Any) -> Any:
    """A copy of a prefix's KV cache that a forward pass may extend without touching ``cache``: new cache and
    layer objects sharing the prefix's tensors. A transformers dynamic cache layer extends its keys and values
    by concatenation (a new tensor bound to the layer), never in place, so the tensors need no copy (a deep copy
    cost ~4 ms a step on an H200 and grows with the rows of a batch)."""
    fresh = copy.copy(cache)
    fresh.layers = [copy.copy(layer) for layer in cache.layers]
    return fresh


@contextmanager
def replay_prefix(layers: nn.ModuleList, upto: int, cached_input: torch.Tensor, like: Any) -> Iterator[None]:
    """Replace layers ``0..upto-1`` by stubs so a forward pass starts at layer ``upto`` from ``cached_input``."""
    saved = [layers[i] for i in range(upto)]
    try:
        for i in range(upto):
            attrs = _plain_attrs(saved[i])
            layers[i] = _Replay(cached_input, like, attrs) if i == 0 else _PassThrough(like, attrs)
        yield
    finally:
        for i, mod in enumerate(saved):
            layers[i] = mod


@dataclass
class PassRows:
    """The rows of a target-residual optimisation over one or more requests.

    Each request contributes its rewriting prompt in every context template, the target appended, followed by
    one KL prompt ("{subject} is a"). ``owner[r]`` is the request of row r, ``kl[r]`` whether it is that
    request's KL row, ``subject_idx[r]`` the index of the subject's last token in ``texts[r]``.
    """

    texts: list[str]
    subject_idx: list[int]
    targets: list[str]
    owner: list[int]
    kl: list[bool]

    @property
    def n_requests(self) -> int:
        return max(self.owner) + 1

    def first_rows(self) -> list[int]:
        """Each request's first row (its bare prompt)."""
        return [self.owner.index(i) for i in range(self.n_requests)]


class Passes(ABC):
    """The forward passes of a target-residual optimisation over :class:`PassRows`.

    ``capture`` returns the keys at each row's subject token ``[B, d_in]``, the original output of the site
    (the MLP output projection, or the whole layer) at each request's bare prompt ``[N, d]``, and logits at
    ``index``; ``step(delta)`` (``[N, d]``, one residual per request) returns logits at ``index`` with each
    request's delta added to the site's output at its rows' subject tokens. ``index`` selects each rewriting
    row's target-predicting positions and, in column 0, each KL row's subject position; ``targets``/``valid``
    give the target token at each selected position (``valid`` False past a row's target).
    """

    targets: torch.Tensor
    valid: torch.Tensor
    index: torch.Tensor

    def __init__(self, lm: LanguageModel, layer: int, site: str, rows: PassRows) -> None:
        self.lm = lm
        self.mlp_out = lm.adapter.module(lm.model, layer, "mlp_out")
        self.site = self.mlp_out if site == "mlp_out" else lm.adapter.layer_list(lm.model)[layer]
        dev = lm.device
        self.owner = torch.tensor(rows.owner, device=dev)
        self.first = torch.tensor(rows.first_rows(), device=dev)
        self.kl_rows = torch.tensor(rows.kl, device=dev)

    @abstractmethod
    def capture(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    @abstractmethod
    def step(self, delta: torch.Tensor) -> torch.Tensor: ...

    def keep(self, rows: torch.Tensor) -> None:
        """Run only the rows where ``rows`` (``[B]`` bool) is True from now on: the rows of requests whose
        optimisation has stopped are dropped from later steps."""
        self.owner, self.kl_rows = self.owner[rows], self.kl_rows[rows]
        self.index, self.targets, self.valid = self.index[rows], self.targets[rows], self.valid[rows]


class ReferencePasses(Passes):
    """Plain full forward passes over right-padded prompts (any architecture, encoder-decoders included)."""

    def __init__(self, lm: LanguageModel, layer: int, site: str, rows: PassRows) -> None:
        super().__init__(lm, layer, site, rows)
        self.batch = lm.teacher_forced(rows.texts, rows.targets)
        self.inputs = dict(self.batch.inputs)
        self.rows = torch.arange(len(rows.texts), device=lm.device)
        self.idx = torch.tensor(rows.subject_idx, device=lm.device)
        index, valid = self.batch.positions()
        self.targets = self.batch.packed_targets()
        self.valid = valid
        self.index = index.clone()
        # The essence-drift KL is read at the subject's last token (ROME); an encoder-decoder model's logits
        # live on the decoder, so there it is read at the first decoder position.
        self.index[self.kl_rows, 0] = 0 if lm.is_encoder_decoder else self.idx[self.kl_rows]

    def capture(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        got: dict[str, torch.Tensor] = {}

        def grab_key(_m: nn.Module, args: tuple[Any, ...]) -> None:
            got["keys"] = args[0][self.rows, self.idx].detach()

        def grab_out(_m: nn.Module, _args: Any, out: Any) -> None:
            got["v"] = layer_output_hidden(out)[self.first, self.idx[self.first]].detach()

        with hooks([(self.mlp_out, "forward_pre", grab_key), (self.site, "forward", grab_out)]):
            logits = self.lm.logits_at(self.inputs, self.index)
        return got["keys"], got["v"], logits

    def step(self, delta: torch.Tensor) -> torch.Tensor:
        def add_delta(_m: nn.Module, _args: Any, out: Any) -> Any:
            hidden = layer_output_hidden(out).clone()
            hidden[self.rows, self.idx] = hidden[self.rows, self.idx] + delta[self.owner].to(hidden.dtype)
            return _with_hidden(out, hidden)

        with hooks([(self.site, "forward", add_delta)]):
            return self.lm.logits_at(self.inputs, self.index)

    def keep(self, rows: torch.Tensor) -> None:
        super().keep(rows)
        self.inputs = {k: v[rows] for k, v in self.inputs.items()}
        self.idx = self.idx[rows]
        self.rows = torch.arange(len(self.idx), device=self.idx.device)


class FastPasses(Passes):
    """Only what depends on delta is recomputed at each step.

    Rows are left-padded so that every row's subject token sits in one column S. Tokens before S never see
    delta: they run once, and their attention keys/values are cached (a copy of the cache per step). Layers
    below the edited one never see delta either: their output for the tokens from S on is cached too and
    replayed (:func:`replay_prefix`). A step then runs the edited layer and those above it on the tokens from
    the subject on: about a third of the tokens and four fifths of the layers of a full pass on SmolLM2.
    """

    def __init__(self, lm: LanguageModel, layer: int, site: str, rows: PassRows) -> None:
        super().__init__(lm, layer, site, rows)
        self.layer = layer
        self.layers = lm.adapter.layer_list(lm.model)
        encoded = {t: lm.encode(t, special=False) for t in set(rows.targets)}
        target_ids = [encoded[t] for t in rows.targets]
        prompt_ids = [lm.encode(t) for t in rows.texts]
        split = max(rows.subject_idx)
        shifts = [split - i for i in rows.subject_idx]
        width = max(sh + len(p) + len(t) for sh, p, t in zip(shifts, prompt_ids, target_ids, strict=True))
        b = len(rows.texts)
        pad = int(lm.tokenizer.pad_token_id)
        ids = torch.full((b, width), pad, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for r, (sh, p, t) in enumerate(zip(shifts, prompt_ids, target_ids, strict=True)):
            row = p + t
            ids[r, sh : sh + len(row)] = torch.tensor(row)
            mask[r, sh : sh + len(row)] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        n_t = max(len(t) for t in target_ids)
        # Selected positions, relative to the split: row r's prompt ends at sh + len(p) - 1; a row with a
        # shorter target repeats its last position (masked out by ``valid``).
        index = torch.zeros((b, n_t), dtype=torch.long)
        targets = torch.zeros((b, n_t), dtype=torch.long)
        valid = torch.zeros((b, n_t), dtype=torch.bool)
        for r, (sh, p, t) in enumerate(zip(shifts, prompt_ids, target_ids, strict=True)):
            if rows.kl[r]:
                continue  # the KL row reads column 0: its subject token
            index[r] = (torch.arange(n_t) + sh + len(p) - 1 - split).clamp(max=sh + len(p) + len(t) - 2 - split)
            targets[r, : len(t)] = torch.tensor(t)
            valid[r, : len(t)] = True
        dev = lm.device
        self.split = split
        self.index = index.to(dev)
        self.targets = targets.to(dev)
        self.valid = valid.to(dev)
        self.suffix = {
            "input_ids": ids[:, split:].to(dev),
            "attention_mask": mask.to(dev),
            "position_ids": positions[:, split:].to(dev),
        }
        self.cache: Any = None
        if split > 0:
            with torch.no_grad():
                out = lm.model(
                    input_ids=ids[:, :split].to(dev),
                    attention_mask=mask[:, :split].to(dev),
                    position_ids=positions[:, :split].to(dev),
                    use_cache=True,
                )
            self.cache = out[CACHE_KEY]
        self.layer_in: torch.Tensor | None = None
        self.like: Any = None

    def _inputs(self) -> dict[str, Any]:
        if self.cache is None:
            return dict(self.suffix)
        return {**self.suffix, CACHE_KEY: step_cache(self.cache), "use_cache": True}

    def capture(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        got: dict[str, Any] = {}

        def grab_key(_m: nn.Module, args: tuple[Any, ...]) -> None:
            got["keys"] = args[0][:, 0].detach()

        def grab_out(_m: nn.Module, _args: Any, out: Any) -> None:
            got["v"] = layer_output_hidden(out)[self.first, 0].detach()

        def grab_layer_input(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            got["layer_in"] = (args[0] if args else kwargs["hidden_states"]).detach()

        def grab_prev_out(_m: nn.Module, _args: Any, out: Any) -> None:
            got["like"] = out

        specs: list[Any] = [(self.mlp_out, "forward_pre", grab_key), (self.site, "forward", grab_out)]
        if self.layer > 0:
            specs.append((self.layers[self.layer - 1], "forward", grab_prev_out))
        with hooks(specs):
            pre = self.layers[self.layer].register_forward_pre_hook(grab_layer_input, with_kwargs=True)
            try:
                logits = self.lm.logits_at(self._inputs(), self.index)
            finally:
                pre.remove()
        self.layer_in, self.like = got["layer_in"], got.get("like")
        return got["keys"], got["v"], logits

    def keep(self, rows: torch.Tensor) -> None:
        super().keep(rows)
        self.suffix = {k: v[rows] for k, v in self.suffix.items()}
        if self.cache is not None:
            self.cache = step_cache(self.cache)
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[rows], layer.values[rows]
        if self.layer_in is not None:
            self.layer_in = self.layer_in[rows]

    def step(self, delta: torch.Tensor) -> torch.Tensor:
        per_row = delta[self.owner]

        def add_delta(_m: nn.Module, _args: Any, out: Any) -> Any:
            hidden = layer_output_hidden(out).clone()
            hidden[:, 0] = hidden[:, 0] + per_row.to(hidden.dtype)
            return _with_hidden(out, hidden)

        with hooks([(self.site, "forward", add_delta)]):
            if self.layer == 0:
                return self.lm.logits_at(self._inputs(), self.index)
            assert self.layer_in is not None
            with replay_prefix(self.layers, self.layer, self.layer_in, self.like):
                return self.lm.logits_at(self._inputs(), self.index)


__all__ = ["FastPasses", "PassRows", "Passes", "ReferencePasses", "layer_output_hidden", "replay_prefix", "step_cache"]
