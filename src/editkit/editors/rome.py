"""ROME: Rank-One Model Editing (Meng et al., 2022, "Locating and Editing Factual Associations in GPT").

The MLP output projection W of one layer is treated as a linear associative memory mapping keys k (its
inputs) to values v (its outputs). An edit inserts one new pair (k*, v*):

* k* (ROME eq. 3): the key at the subject's last token, averaged over the bare prompt and prompts prefixed
  with short texts sampled from the model (a seeded generator, so an edit is reproducible).
* v* (ROME eq. 4): the MLP output that makes the model say the new target. We optimise a residual delta added
  to the projection's output at the subject's last token of every (context-prefixed) prompt, minimising the
  target's NLL plus ``kl_factor`` * KL(original || edited) on "{subject} is a" (the essence-drift term),
  with weight decay on delta and its norm clamped to ``clamp_norm_factor`` times the original output's norm.
* The update (ROME eq. 2): ``W' = W + delta u^T / (u^T k_0)`` with ``u = C^{-1} k*``, C = E[k k^T] the key
  second moment (see :mod:`editkit.editors.stats`) and k_0 the key of the bare prompt. The direction
  ``C^{-1} k*`` is the closed-form minimiser of ``||W' K - W K||`` for a rank-one change; normalising by the
  bare prompt's key (as ROME's reference implementation does) makes the edit prompt itself produce exactly
  ``W k_0 + delta``. Normalising by k* instead leaves the bare prompt short of its target when its key is
  far from the context average (measured: P(" tennis") 0.003 instead of > 0.9 on one SmolLM2 edit).
  Without a corpus C = I (EasyEdit's llama default).

Speed: neither the layers below the edited one nor the tokens before the subject depend on delta, so both are
computed once and cached; every optimisation step runs only the edited layer and those above it, on the tokens
from the subject on (``fast_path``; :class:`_FastPasses`). The plain computation (:class:`_ReferencePasses`)
serves encoder-decoder models and is the reference the fast path is tested against.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from editkit.editors.base import Capabilities, EditorConfig, WeightEditor, pack_tensor, recorded_tensor, register
from editkit.editors.stats import StatsRequest, second_moments
from editkit.edits import EditRequest
from editkit.errors import ConfigError, ValidationError
from editkit.models.hooks import hooks
from editkit.models.lm import CACHE_KEY, LanguageModel


@dataclass
class LocateEditConfig(EditorConfig):
    """Settings ROME and MEMIT share: how k* is averaged, how the target residual is optimised, where C comes from."""

    n_context: int = field(
        default=10, metadata={"help": "sampled context prefixes averaged into k* (plus the bare prompt)"}
    )
    context_length: int = field(default=10, metadata={"help": "tokens per sampled context prefix"})
    seed: int = field(default=0, metadata={"help": "seed of the context-prefix sampler"})
    v_steps: int = field(default=25, metadata={"help": "maximum optimisation steps for v*"})
    v_lr: float = field(default=0.5, metadata={"help": "Adam learning rate for delta"})
    v_weight_decay: float = field(default=1e-3, metadata={"help": "weight on ||delta||^2 / ||v||^2"})
    clamp_norm_factor: float = field(default=4.0, metadata={"help": "max ||delta|| as a multiple of ||v||"})
    kl_factor: float = field(default=0.0625, metadata={"help": "weight of the essence-drift KL term"})
    stop_loss: float = field(default=5e-2, metadata={"help": "stop once the target NLL is below this"})
    corpus: str | None = field(default=None, metadata={"help": "text file for C = E[kk^T]; none: C = I"})
    mom2_n_tokens: int = field(default=100_000, metadata={"help": "corpus tokens for the key statistics"})
    fast_path: bool = field(
        default=True, metadata={"help": "recompute only what depends on v* (same result, faster; decoder-only models)"}
    )

    def validate(self) -> None:
        name = type(self).__name__
        if self.v_steps < 1 or self.n_context < 0 or self.context_length < 1:
            raise ConfigError(f"{name}: v_steps and context_length must be >= 1, n_context >= 0")
        if self.v_lr <= 0 or self.clamp_norm_factor <= 0:
            raise ConfigError(f"{name}: v_lr and clamp_norm_factor must be positive")
        if self.corpus is not None and not Path(self.corpus).is_file():
            raise ConfigError(f"{name}: corpus file {self.corpus} does not exist")


@dataclass
class ROMEConfig(LocateEditConfig):
    layer: int | None = field(default=None, metadata={"help": "layer to edit; default: the model's edit layer"})


@dataclass
class TargetResidual:
    """What one edit's optimisation yields: k* (the mean key over contexts), k_0 (the bare prompt's key), the
    original output of the optimised site at the bare prompt's subject token, and the residual delta that makes
    the model say the new target when added there."""

    k_star: torch.Tensor
    k_bare: torch.Tensor
    v_init: torch.Tensor
    delta: torch.Tensor
    info: dict[str, Any]


def subject_last_index(lm: LanguageModel, text: str, subject_end: int) -> int:
    """Index of the token (in ``lm.encode(text)``) that holds the subject's last character."""
    _, offsets = lm.encode_with_offsets(text)
    best = None
    for i, (start, end) in enumerate(offsets):
        if end > start and start < subject_end:
            best = i
    if best is None:
        raise ValidationError(f"could not locate the subject in {text!r}")
    return best


def _render(template: str, subject: str) -> tuple[str, int]:
    """Fill ``{}`` with the subject; return the text and the character index just after the subject."""
    i = template.index("{}")
    return template[:i] + subject + template[i + 2 :], i + len(subject)


class _Replay(nn.Module):
    """Stands in for layer 0 of a replayed prefix: returns the cached input of the first live layer."""

    def __init__(self, value: torch.Tensor, like: Any, attrs: dict[str, Any]) -> None:
        super().__init__()
        self.value = value
        self.like = like
        self.__dict__.update(attrs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return _withlayer_output_hidden(self.like, self.value)


class _PassThrough(nn.Module):
    def __init__(self, like: Any, attrs: dict[str, Any]) -> None:
        super().__init__()
        self.like = like
        self.__dict__.update(attrs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        return _withlayer_output_hidden(self.like, hidden)


def layer_output_hidden(out: Any) -> torch.Tensor:
    """The hidden states in a module's output (a layer may return a tuple)."""
    return out if isinstance(out, torch.Tensor) else out[0]


def _withlayer_output_hidden(like: Any, hidden: torch.Tensor) -> Any:
    if isinstance(like, torch.Tensor):
        return hidden
    return (hidden, *like[1:])


def _plain_attrs(module: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and isinstance(v, str | int | float | bool)}


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


class LocateEditor(WeightEditor):
    """What ROME and MEMIT share: seeded context prefixes, the key statistics, and the optimisation of the
    residual that makes the model say a new target when added at the subject's last token of one site."""

    config: LocateEditConfig

    def __init__(self, config: LocateEditConfig | None = None) -> None:
        super().__init__(config)
        self._contexts: dict[tuple[Any, ...], list[str]] = {}

    # ---- context prefixes (ROME: "we sample ... prefixes to average k* over contexts")
    def context_templates(self, lm: LanguageModel) -> list[str]:
        cfg = self.config
        key = (lm.name, id(lm.model), cfg.seed, cfg.n_context, cfg.context_length)
        if key not in self._contexts:
            # Sample from the start of a document: the model's own prefix or BOS when it has one.
            start = "" if lm.encode("") else (lm.tokenizer.bos_token or lm.tokenizer.eos_token or "")
            gen = torch.Generator().manual_seed(cfg.seed)
            texts = (
                lm.generate([start] * cfg.n_context, cfg.context_length, sample=True, top_k=5, generator=gen)
                if cfg.n_context
                else []
            )
            clean = [t.replace("{", "").replace("}", "").replace("\n", " ").strip() for t in texts]
            self._contexts[key] = ["{}"] + [f"{t}. {{}}" for t in clean]
        return self._contexts[key]

    def covariance(self, lm: LanguageModel, layer: int, progress: bool = False) -> torch.Tensor | None:
        return self.covariances(lm, [layer], progress=progress)[layer]

    def covariances(
        self, lm: LanguageModel, layers: Sequence[int], progress: bool = False
    ) -> dict[int, torch.Tensor | None]:
        """The key statistics of ``layers`` (one pass over the corpus for those not cached), or None for each
        when no corpus is configured."""
        if self.config.corpus is None:
            return dict.fromkeys(layers)
        reqs = [
            StatsRequest(layer=layer, corpus=Path(self.config.corpus), n_tokens=self.config.mom2_n_tokens)
            for layer in layers
        ]
        return dict(zip(layers, second_moments(lm, reqs, progress=progress), strict=True))

    def rendered(self, lm: LanguageModel, req: EditRequest) -> tuple[list[str], list[int]]:
        """The request's prompt in every context template, and the index of the subject's last token in each."""
        assert req.subject is not None
        texts, idx = [], []
        for ctx in self.context_templates(lm):
            text, end = _render(ctx.replace("{}", req.template, 1) if ctx != "{}" else req.template, req.subject)
            texts.append(text)
            idx.append(subject_last_index(lm, text, end))
        return texts, idx

    def target_residual(
        self,
        lm: LanguageModel,
        req: EditRequest,
        layer: int,
        site: Literal["mlp_out", "block"] = "mlp_out",
        *,
        given: torch.Tensor | None = None,
    ) -> TargetResidual:
        """Optimise the residual delta added to the output of ``site`` (layer ``layer``'s MLP output projection for
        ROME, the whole layer's output, i.e. the residual stream, for MEMIT) at the subject's last token. With
        ``given`` (a delta an earlier optimisation found), only the keys and the site's output are read."""
        cfg = self.config
        assert req.subject is not None
        texts, ctx_idx = self.rendered(lm, req)
        kl_text, kl_end = _render("{} is a", req.subject)
        all_texts = [*texts, kl_text]
        subject_idx = [*ctx_idx, subject_last_index(lm, kl_text, kl_end)]
        fast = cfg.fast_path and lm.adapter.sequential_layers and not lm.is_encoder_decoder
        run: _Passes = (
            _FastPasses(lm, layer, site, all_texts, subject_idx, req.target_new)
            if fast
            else _ReferencePasses(lm, layer, site, all_texts, subject_idx, req.target_new)
        )
        n_rw = len(texts)
        for p in lm.model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            keys, v_init, logits = run.capture()
        kl_init = F.log_softmax(logits[n_rw:, 0].float(), dim=-1)
        k_star = keys[:n_rw].float().mean(0)
        v_init = v_init.float()
        if given is not None:
            if given.shape != v_init.shape:
                raise ValidationError(f"a recorded delta of shape {list(given.shape)} for a site of {v_init.shape[0]}")
            read: dict[str, Any] = {"layer": layer, "replayed": True, "fast_path": fast}
            return TargetResidual(k_star.cpu(), keys[0].float().cpu(), v_init.cpu(), given.float().cpu(), read)

        delta = torch.zeros_like(v_init, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=cfg.v_lr)
        max_norm = cfg.clamp_norm_factor * v_init.norm()
        n_tok = run.valid[:n_rw].sum(1).clamp_min(1)
        losses: list[float] = []
        with torch.enable_grad():
            for _step in range(cfg.v_steps):
                opt.zero_grad()
                logp = F.log_softmax(run.step(delta).float(), dim=-1)
                tok = logp.gather(-1, run.targets.unsqueeze(-1)).squeeze(-1) * run.valid
                nll = -(tok[:n_rw].sum(1) / n_tok).mean()
                kl = F.kl_div(logp[n_rw:, 0], kl_init, log_target=True, reduction="batchmean")
                decay = cfg.v_weight_decay * delta.norm() ** 2 / v_init.norm() ** 2
                loss = nll + cfg.kl_factor * kl + decay
                losses.append(nll.item())
                if losses[-1] < cfg.stop_loss:
                    break
                loss.backward()
                opt.step()
                with torch.no_grad():
                    if delta.norm() > max_norm:
                        delta.mul_(max_norm / delta.norm())
        info = {
            "layer": layer,
            "steps": len(losses),
            "nll_first": losses[0],
            "nll_last": losses[-1],
            "delta_norm": delta.norm().item(),
            "fast_path": fast,
        }
        return TargetResidual(
            k_star.detach().cpu(), keys[0].float().cpu(), v_init.cpu(), delta.detach().float().cpu(), info
        )


@register
class ROME(LocateEditor):
    name = "rome"
    config_cls = ROMEConfig
    capabilities = Capabilities(storage="weights", batch=False, needs_subject=True, replay=True)
    config: ROMEConfig

    def layer(self, lm: LanguageModel) -> int:
        layer = self.config.layer if self.config.layer is not None else lm.default_edit_layer
        lm.adapter.check_layer(lm.model, layer)
        return layer

    def target_parameters(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> list[str]:
        return [lm.adapter.weight_name(self.layer(lm), "mlp_out")]

    def prepare(self, lm: LanguageModel, *, progress: bool = False) -> None:
        self.context_templates(lm)
        self.covariance(lm, self.layer(lm), progress=progress)

    def compute(
        self, lm: LanguageModel, requests: Sequence[EditRequest], params: dict[str, nn.Parameter]
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        (req,) = requests
        return self._update(lm, params, self.target_residual(lm, req, self.layer(lm)))

    def recompute(
        self,
        lm: LanguageModel,
        requests: Sequence[EditRequest],
        params: dict[str, nn.Parameter],
        recorded: Mapping[str, Any],
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        (req,) = requests
        given = recorded_tensor(recorded, "delta")
        return self._update(lm, params, self.target_residual(lm, req, self.layer(lm), given=given))

    def _update(
        self, lm: LanguageModel, params: dict[str, nn.Parameter], r: TargetResidual
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """ROME's rank-one change of the edited layer for the optimised residual; ``info["replay"]`` keeps the
        residual (v* - v), which with the keys read again from the same weights makes the same change."""
        layer = r.info["layer"]
        name = lm.adapter.weight_name(layer, "mlp_out")
        cov = self.covariance(lm, layer)
        w = params[name].detach()
        update = rank_one_update(r.k_star, r.delta, cov, anchor=r.k_bare).to(w.device, w.dtype)
        return {name: w + lm.adapter.from_out_in(update)}, {**r.info, "replay": {"delta": pack_tensor(r.delta)}}


class _Passes(ABC):
    """The forward passes of v* optimisation over the rewriting prompts plus the KL prompt (last row).

    ``capture`` returns the keys at each row's subject token, the original output of the site (the MLP output
    projection, or the whole layer) for row 0, and logits at ``index``; ``step(delta)`` returns logits at
    ``index`` with delta added to the site's output at the subject tokens.
    ``index`` selects each rewriting row's target-predicting positions and, in column 0, the KL row's subject
    position; ``targets``/``valid`` give the target token at each selected position.
    """

    targets: torch.Tensor
    valid: torch.Tensor

    def __init__(self, lm: LanguageModel, layer: int, site: str) -> None:
        self.lm = lm
        self.mlp_out = lm.adapter.module(lm.model, layer, "mlp_out")
        self.site = self.mlp_out if site == "mlp_out" else lm.adapter.layer_list(lm.model)[layer]

    @abstractmethod
    def capture(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    @abstractmethod
    def step(self, delta: torch.Tensor) -> torch.Tensor: ...


class _ReferencePasses(_Passes):
    """Plain full forward passes over right-padded prompts (any architecture, encoder-decoders included)."""

    def __init__(
        self, lm: LanguageModel, layer: int, site: str, texts: list[str], subject_idx: list[int], target: str
    ) -> None:
        super().__init__(lm, layer, site)
        self.batch = lm.teacher_forced(texts, [target] * len(texts))
        self.rows = torch.arange(len(texts), device=lm.device)
        self.idx = torch.tensor(subject_idx, device=lm.device)
        index, valid = self.batch.positions()
        self.targets = self.batch.packed_targets()
        self.valid = valid
        self.index = index.clone()
        # The essence-drift KL is read at the subject's last token (ROME); an encoder-decoder model's logits
        # live on the decoder, so there it is read at the first decoder position.
        self.index[-1, 0] = 0 if lm.is_encoder_decoder else self.idx[-1]

    def capture(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        got: dict[str, torch.Tensor] = {}

        def grab_key(_m: nn.Module, args: tuple[Any, ...]) -> None:
            got["keys"] = args[0][self.rows, self.idx].detach()

        def grab_out(_m: nn.Module, _args: Any, out: Any) -> None:
            got["v"] = layer_output_hidden(out)[0, self.idx[0]].detach()

        with hooks([(self.mlp_out, "forward_pre", grab_key), (self.site, "forward", grab_out)]):
            logits = self.lm.logits_at(self.batch.inputs, self.index)
        return got["keys"], got["v"], logits

    def step(self, delta: torch.Tensor) -> torch.Tensor:
        def add_delta(_m: nn.Module, _args: Any, out: Any) -> Any:
            hidden = layer_output_hidden(out).clone()
            hidden[self.rows, self.idx] = hidden[self.rows, self.idx] + delta.to(hidden.dtype)
            return _withlayer_output_hidden(out, hidden)

        with hooks([(self.site, "forward", add_delta)]):
            return self.lm.logits_at(self.batch.inputs, self.index)


class _FastPasses(_Passes):
    """Only what depends on delta is recomputed at each step.

    Rows are left-padded so that every row's subject token sits in one column S. Tokens before S never see
    delta: they run once, and their attention keys/values are cached (a copy of the cache per step). Layers
    below the edited one never see delta either: their output for the tokens from S on is cached too and
    replayed (:func:`replay_prefix`). A step then runs the edited layer and those above it on the tokens from
    the subject on: about a third of the tokens and four fifths of the layers of a full pass on SmolLM2.
    """

    def __init__(
        self, lm: LanguageModel, layer: int, site: str, texts: list[str], subject_idx: list[int], target: str
    ) -> None:
        super().__init__(lm, layer, site)
        self.layer = layer
        self.layers = lm.adapter.layer_list(lm.model)
        target_ids = lm.encode(target, special=False)
        prompt_ids = [lm.encode(t) for t in texts]
        split = max(subject_idx)
        shifts = [split - i for i in subject_idx]
        width = max(sh + len(p) + len(target_ids) for sh, p in zip(shifts, prompt_ids, strict=True))
        b = len(texts)
        pad = int(lm.tokenizer.pad_token_id)
        ids = torch.full((b, width), pad, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for r, (sh, p) in enumerate(zip(shifts, prompt_ids, strict=True)):
            row = p + target_ids
            ids[r, sh : sh + len(row)] = torch.tensor(row)
            mask[r, sh : sh + len(row)] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        n_t = len(target_ids)
        # Selected positions, relative to the split: row r's prompt ends at sh + len(p) - 1.
        index = torch.zeros((b, n_t), dtype=torch.long)
        for r, (sh, p) in enumerate(zip(shifts, prompt_ids, strict=True)):
            index[r] = torch.arange(n_t) + sh + len(p) - 1 - split
        index[-1] = 0  # the KL row reads column 0: its subject token
        dev = lm.device
        self.split = split
        self.index = index.to(dev)
        self.targets = torch.tensor(target_ids, device=dev).expand(b, -1)
        self.valid = torch.ones((b, n_t), dtype=torch.bool, device=dev)
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
        return {**self.suffix, CACHE_KEY: copy.deepcopy(self.cache), "use_cache": True}

    def capture(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        got: dict[str, Any] = {}

        def grab_key(_m: nn.Module, args: tuple[Any, ...]) -> None:
            got["keys"] = args[0][:, 0].detach()

        def grab_out(_m: nn.Module, _args: Any, out: Any) -> None:
            got["v"] = layer_output_hidden(out)[0, 0].detach()

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

    def step(self, delta: torch.Tensor) -> torch.Tensor:
        def add_delta(_m: nn.Module, _args: Any, out: Any) -> Any:
            hidden = layer_output_hidden(out).clone()
            hidden[:, 0] = hidden[:, 0] + delta.to(hidden.dtype)
            return _withlayer_output_hidden(out, hidden)

        with hooks([(self.site, "forward", add_delta)]):
            if self.layer == 0:
                return self.lm.logits_at(self._inputs(), self.index)
            assert self.layer_in is not None
            with replay_prefix(self.layers, self.layer, self.layer_in, self.like):
                return self.lm.logits_at(self._inputs(), self.index)


def rank_one_update(
    k_star: torch.Tensor, delta: torch.Tensor, cov: torch.Tensor | None, anchor: torch.Tensor | None = None
) -> torch.Tensor:
    """The ``[out, in]`` update ``delta u^T / (u^T a)`` with ``u = C^{-1} k*`` and ``a = anchor`` (default k*).

    With ``anchor = k*`` it is the minimiser of ``E||(W' - W) k||^2`` over keys with second moment C, subject
    to ``W' k* = W k* + delta`` (ROME eq. 2). With another anchor the constraint holds at the anchor instead.
    """
    k = k_star.double()
    a = k if anchor is None else anchor.double()
    u = k if cov is None else torch.linalg.solve(cov.double(), k)
    return (torch.outer(delta.double(), u) / (u @ a)).float()


__all__ = [
    "ROME",
    "LocateEditConfig",
    "LocateEditor",
    "ROMEConfig",
    "TargetResidual",
    "layer_output_hidden",
    "rank_one_update",
]
