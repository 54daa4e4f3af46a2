"""Locate-and-edit machinery that ROME, MEMIT and AlphaEdit share (Meng et al., 2022, 2023).

* Context templates: the bare prompt plus ``n_context`` prefixes sampled from the model with a seeded
  generator (cached per editor and model); k* (ROME eq. 3) is the key at the subject's last token averaged
  over the prompt in every template.
* The target residual (ROME eq. 4 for v*, MEMIT's z): a delta added to the output of one site at the subject's
  last token of every (context-prefixed) prompt, optimised to minimise the new target's NLL plus
  ``kl_factor`` * KL(original || edited) on "{subject} is a" (the essence-drift term), with weight decay on
  delta and its norm clamped to ``clamp_norm_factor`` times the site's original output norm. The site is the
  MLP output projection (ROME's v*) or the whole layer, i.e. the residual stream (MEMIT's z). The forward
  passes live in :mod:`editkit.editors.passes`.
* The key statistics C = E[k k^T] of a layer (see :mod:`editkit.editors.stats`), or None without a corpus.
* ``residual_cache``: a folder where each request's optimised residual is written as soon as its chunk is done,
  keyed by the model's weights, the settings, the site and the request (:class:`ResidualCache`), so a batch
  edit of thousands of requests that stops part-way (MEMIT's 10,000 edits at once) resumes from what it had.
  The folder is read again before each chunk, so processes sharing it (``editkit residuals --part``) split the
  work: each takes what none has written yet.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from editkit.editors.base import WeightEditor
from editkit.editors.config import EditorConfig
from editkit.editors.passes import FastPasses, Passes, PassRows, ReferencePasses
from editkit.editors.stats import StatsRequest, second_moments
from editkit.edits import EditRequest
from editkit.errors import ConfigError, ValidationError
from editkit.files import atomic_save_tensors, check_writable, require_file, tensor_sha256
from editkit.models.lm import LanguageModel
from editkit.progress import progress_bar

log = logging.getLogger(__name__)

RESIDUAL_CACHE_VERSION = 2
# What an optimised residual depends on besides the weights, the layer, the site and the request. The rest of a
# config (the statistics' corpus, MEMIT's lambda, the layers below the top, AlphaEdit's alpha) shapes only the
# update made from the residuals, so runs that differ there share the cache: a lambda sweep over 10,000 edits at
# once reuses ten hours of residuals.
RESIDUAL_SETTINGS = (
    "seed",
    "n_context",
    "context_length",
    "v_steps",
    "v_lr",
    "v_weight_decay",
    "clamp_norm_factor",
    "kl_factor",
    "stop_loss",
    "fast_path",
    "step_dtype",
)
# a batch of at least this many requests shows its progress (one line every 30 s on a log, a bar on a terminal)
PROGRESS_FROM = 50
# requests are sorted by length within windows of this many chunks, taken in the requests' order
SORT_WINDOW = 8


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
    step_dtype: Literal["float32", "bfloat16"] = field(
        default="float32",
        metadata={
            "help": "dtype of the optimisation steps (bfloat16: on a bfloat16 copy of a float32 model, faster on a "
            "CPU with AVX512-BF16); the keys, the statistics and the update stay float32"
        },
    )
    v_batch: int | None = field(
        default=None,
        metadata={
            "help": "requests of a batch edit whose residuals are optimised together in one set of passes (each its "
            "own optimisation, the same result up to float rounding); default: 1 on the CPU, where one request at "
            "a time measured faster, 64 on an accelerator"
        },
    )
    residual_cache: str | None = field(
        default=None,
        metadata={
            "help": "folder keeping each request's optimised residual as soon as it is found (keyed by the weights, "
            "settings and request): a large batch edit that stops resumes from it; none: kept in memory only"
        },
    )

    def validate(self) -> None:
        name = type(self).__name__
        if self.v_steps < 1 or self.n_context < 0 or self.context_length < 1:
            raise ConfigError(f"{name}: v_steps and context_length must be >= 1, n_context >= 0")
        if self.v_batch is not None and self.v_batch < 1:
            raise ConfigError(f"{name}: v_batch must be >= 1")
        if self.v_lr <= 0 or self.clamp_norm_factor <= 0:
            raise ConfigError(f"{name}: v_lr and clamp_norm_factor must be positive")
        if self.corpus is not None:
            require_file(self.corpus, f"{name}: corpus file", ConfigError)
        if self.residual_cache:  # before hours of work, not when the first residual is written
            check_writable(Path(self.residual_cache).expanduser(), f"{name}: residual_cache", folder=True)


class ResidualCache:
    """Optimised residuals on disk, one safetensors file per request under ``folder``, named by a hash of the
    model's weights (:meth:`LanguageModel.fingerprint`), the optimisation's settings (:data:`RESIDUAL_SETTINGS`;
    not ``v_batch``, which changes float rounding only), the layer, the site and the request: MEMIT and AlphaEdit
    at any lambda, alpha or corpus share one folder. A file whose tensors do not match the digest it records, or
    that cannot be read, is computed again (and overwritten); a hit is the residual as it was found, bit for
    bit."""

    def __init__(self, folder: str, lm: LanguageModel, config: LocateEditConfig, layer: int, site: str) -> None:
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        settings = {k: getattr(config, k) for k in RESIDUAL_SETTINGS}
        ident = [RESIDUAL_CACHE_VERSION, lm.fingerprint(), settings, layer, site]
        self.base = json.dumps(ident, sort_keys=True, default=str)

    def path(self, req: EditRequest) -> Path:
        key = hashlib.sha256(json.dumps([self.base, req.to_dict()], sort_keys=True).encode()).hexdigest()
        return self.folder / f"{key[:40]}.safetensors"

    def get(self, req: EditRequest) -> TargetResidual | None:
        path = self.path(req)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in ("k_star", "k_bare", "v_init", "delta")}
            if meta.get("sha256") != _digest(tensors):
                raise ValueError("the tensors do not match their digest")
            return TargetResidual(**tensors, info={**json.loads(meta["info"]), "cached": True})
        except Exception as exc:  # a damaged file is computed again, never used
            log.warning("recomputing the residual in %s: %s", path, exc)
            return None

    def put(self, req: EditRequest, residual: TargetResidual) -> None:
        tensors = {
            "k_star": residual.k_star,
            "k_bare": residual.k_bare,
            "v_init": residual.v_init,
            "delta": residual.delta,
        }
        meta = {"sha256": _digest(tensors), "info": json.dumps(residual.info, default=str)}
        atomic_save_tensors(tensors, self.path(req), metadata=meta)


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    return hashlib.sha256("".join(tensor_sha256(tensors[k]) for k in sorted(tensors)).encode()).hexdigest()


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


def chunk_order(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Chunks of up to ``size`` positions of ``lengths`` (each request's tokens per step), formed with little
    padding: the positions are sorted by length within consecutive windows of :data:`SORT_WINDOW` chunks. A
    sort over all of them would do little better and would take requests from anywhere in the list, so a run
    and the processes optimising parts of its requests into the same ``residual_cache`` would meet all along
    the list, each optimising what the other is about to write; in windows they overlap by a window at most.
    One request per chunk pads nothing: the chunks keep the list's order."""
    if size == 1:
        return [[p] for p in range(len(lengths))]
    window = size * SORT_WINDOW
    chunks: list[list[int]] = []
    for start in range(0, len(lengths), window):
        ranked = sorted(range(start, min(start + window, len(lengths))), key=lambda p: lengths[p])
        chunks += [ranked[i : i + size] for i in range(0, len(ranked), size)]
    return chunks


def sample_contexts(lm: LanguageModel, n: int, length: int, seed: int) -> list[str]:
    """``"{}"`` and ``n`` templates ``"<sampled text>. {}"``: ``length`` tokens sampled (top-5, seeded) from the
    start of a document (the model's own prefix, or its BOS)."""
    start = "" if lm.encode("") else (lm.tokenizer.bos_token or lm.tokenizer.eos_token or "")
    gen = torch.Generator().manual_seed(seed)
    texts = lm.generate([start] * n, length, sample=True, top_k=5, generator=gen) if n else []
    clean = [t.replace("{", "").replace("}", "").replace("\n", " ").strip() for t in texts]
    return ["{}"] + [f"{t}. {{}}" for t in clean]


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


class LocateEditor(WeightEditor):
    """What ROME and MEMIT share: seeded context prefixes, the key statistics, and the optimisation of the
    residual that makes the model say a new target when added at the subject's last token of one site."""

    config: LocateEditConfig

    def __init__(self, config: LocateEditConfig | None = None) -> None:
        super().__init__(config)
        self._contexts: dict[tuple[Any, ...], list[str]] = {}
        self._low: weakref.WeakKeyDictionary[nn.Module, LanguageModel] = weakref.WeakKeyDictionary()

    def bfloat16_model(self, lm: LanguageModel) -> LanguageModel:
        """A bfloat16 copy of ``lm`` (same tokenizer, prefix and layers) for ``step_dtype="bfloat16"``, kept per
        model and brought up to date with its weights at every call (a cast copy in place: cheaper than a new
        copy, and right after any edit or rollback)."""
        kept = self._low.get(lm.model)
        if kept is None:
            model = copy.deepcopy(lm.model).to(torch.bfloat16)
            for p in model.parameters():
                p.requires_grad_(False)
            kept = LanguageModel(
                model,
                lm.tokenizer,
                name=lm.name,
                edit_layer=lm.default_edit_layer,
                prefix=lm.prefix,
                rome_layer=lm.default_rome_layer,
            )
            self._low[lm.model] = kept
        else:
            with torch.no_grad():
                for low, full in zip(kept.model.parameters(), lm.model.parameters(), strict=True):
                    low.copy_(full)
        return kept

    # ---- context prefixes (ROME: "we sample ... prefixes to average k* over contexts")
    def context_templates(self, lm: LanguageModel) -> list[str]:
        cfg = self.config
        key = (lm.name, id(lm.model), cfg.seed, cfg.n_context, cfg.context_length)
        if key not in self._contexts:
            self._contexts[key] = sample_contexts(lm, cfg.n_context, cfg.context_length, cfg.seed)
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

    def residual_site(self, lm: LanguageModel) -> tuple[int, Literal["mlp_out", "block"]]:
        """The layer and site whose residuals this editor optimises (:meth:`target_residuals`)."""
        raise NotImplementedError

    def cache_residuals(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> int:
        """Optimise the residuals of ``requests`` at :meth:`residual_site` into the ``residual_cache`` folder
        (those not there yet), so that a later edit of them, in this process or another sharing the folder,
        reads them instead. Returns how many were there before."""
        found = sum(path.is_file() for path in self.residual_files(lm, requests))
        self.target_residuals(lm, requests, *self.residual_site(lm))
        return found

    def residual_files(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> list[Path]:
        """Per request, the file in the ``residual_cache`` folder that keeps its residual at
        :meth:`residual_site` (there already or not)."""
        if not self.config.residual_cache:
            raise ConfigError(f"{self.name}: residuals are kept only with residual_cache=FOLDER")
        cache = ResidualCache(self.config.residual_cache, lm, self.config, *self.residual_site(lm))
        return [cache.path(r) for r in requests]

    def target_residual(
        self,
        lm: LanguageModel,
        req: EditRequest,
        layer: int,
        site: Literal["mlp_out", "block"] = "mlp_out",
        *,
        given: torch.Tensor | None = None,
    ) -> TargetResidual:
        """:meth:`target_residuals` of one request."""
        (one,) = self.target_residuals(lm, [req], layer, site, given=None if given is None else given[None])
        return one

    def target_residuals(
        self,
        lm: LanguageModel,
        requests: Sequence[EditRequest],
        layer: int,
        site: Literal["mlp_out", "block"] = "mlp_out",
        *,
        given: torch.Tensor | None = None,
    ) -> list[TargetResidual]:
        """Optimise, per request, the residual delta added to the output of ``site`` (layer ``layer``'s MLP
        output projection for ROME, the whole layer's output, i.e. the residual stream, for MEMIT) at the
        subject's last token. Up to ``v_batch`` requests (by default one on the CPU, 64 on an accelerator; chunks
        of similar :meth:`suffix_tokens`, :func:`chunk_order`) share one set of forward and backward passes, each
        with its own delta, loss, Adam state, norm clamp and stopping step: the result is each request's own
        optimisation (equal up to float rounding to optimising it alone), with one host sync and one set of
        passes per step for the whole chunk (what a GPU needs: its steps are bound by per-op overhead, not
        arithmetic). With ``given``
        (``[n, d]``, the deltas an earlier optimisation found), only the keys and the site's output are read."""
        if given is not None and given.shape[0] != len(requests):
            raise ValidationError(f"{given.shape[0]} recorded deltas for {len(requests)} request(s)")
        size = self.config.v_batch or (1 if lm.device.type == "cpu" else 64)
        cache = None
        if self.config.residual_cache and given is None:
            cache = ResidualCache(self.config.residual_cache, lm, self.config, layer, site)
        out: dict[int, TargetResidual] = {}
        if cache is not None:
            for i, req in enumerate(requests):
                if (hit := cache.get(req)) is not None:
                    out[i] = hit
        left = [i for i in range(len(requests)) if i not in out]
        lengths = [self.suffix_tokens(lm, requests[i]) for i in left] if size > 1 else [0] * len(left)
        shown = len(requests) >= PROGRESS_FROM
        with progress_bar(len(requests), f"{self.name} residuals", shown, start=len(out)) as bar:
            for positions in chunk_order(lengths, size):
                chunk = [left[p] for p in positions]
                n_chunk = len(chunk)
                if cache is not None:  # another process sharing the folder may have found some since
                    out.update((i, hit) for i in chunk if (hit := cache.get(requests[i])) is not None)
                    chunk = [i for i in chunk if i not in out]
                if chunk:
                    part = None if given is None else given[chunk]
                    t0 = time.perf_counter()
                    done = self._optimise(lm, [requests[i] for i in chunk], layer, site, part)
                    for residual in done:  # kept with it: a run that reads it knows what it cost
                        residual.info["residual_seconds"] = (time.perf_counter() - t0) / len(chunk)
                    out.update(zip(chunk, done, strict=True))
                    if cache is not None:
                        for i, residual in zip(chunk, done, strict=True):
                            cache.put(requests[i], residual)
                bar.advance(n_chunk)
        return [out[i] for i in range(len(requests))]

    def suffix_tokens(self, lm: LanguageModel, req: EditRequest) -> int:
        """Tokens a step runs for the request's bare prompt: from the subject's last token to the target's end."""
        assert req.subject is not None
        text, end = _render(req.template, req.subject)
        return len(lm.encode(text)) - subject_last_index(lm, text, end) + len(lm.encode(req.target_new, special=False))

    def pass_rows(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> PassRows:
        """Every request's prompt in every context template, then its KL prompt "{subject} is a"."""
        rows = PassRows([], [], [], [], [])
        for i, req in enumerate(requests):
            assert req.subject is not None
            texts, ctx_idx = self.rendered(lm, req)
            kl_text, kl_end = _render("{} is a", req.subject)
            rows.texts += [*texts, kl_text]
            rows.subject_idx += [*ctx_idx, subject_last_index(lm, kl_text, kl_end)]
            rows.targets += [req.target_new] * (len(texts) + 1)
            rows.owner += [i] * (len(texts) + 1)
            rows.kl += [False] * len(texts) + [True]
        return rows

    def _optimise(
        self,
        lm: LanguageModel,
        requests: Sequence[EditRequest],
        layer: int,
        site: Literal["mlp_out", "block"],
        given: torch.Tensor | None,
    ) -> list[TargetResidual]:
        cfg = self.config
        rows = self.pass_rows(lm, requests)
        fast = cfg.fast_path and lm.adapter.sequential_layers and not lm.is_encoder_decoder
        kind = FastPasses if fast else ReferencePasses
        run: Passes = kind(lm, layer, site, rows)
        for p in lm.model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            keys, v_init, logits = run.capture()
        if given is None and cfg.step_dtype == "bfloat16" and lm.dtype == torch.float32:
            # The steps run on a bfloat16 copy (autocast, which casts every weight at every step, gained nothing
            # at these few tokens per step); what the update is made of was read above, in float32.
            run = kind(self.bfloat16_model(lm), layer, site, rows)
            with torch.no_grad():
                run.capture()
        n = len(requests)
        dev = keys.device
        rewrite = ~run.kl_rows
        owner_rw = run.owner[rewrite]
        n_rows = torch.bincount(owner_rw, minlength=n).float()
        kl_init = F.log_softmax(logits[run.kl_rows, 0].float(), dim=-1)  # one KL row per request, in order
        keys = keys.float()
        k_star = torch.zeros((n, keys.shape[1]), device=dev).index_add_(0, owner_rw, keys[rewrite]) / n_rows[:, None]
        k_bare = keys[run.first]
        v_init = v_init.float()
        if given is not None:
            if given.shape != v_init.shape:
                raise ValidationError(
                    f"recorded deltas of shape {list(given.shape)} for sites of shape {list(v_init.shape)}"
                )
            read: dict[str, Any] = {"layer": layer, "replayed": True, "fast_path": fast}
            return [
                TargetResidual(k_star[i].cpu(), k_bare[i].cpu(), v_init[i].cpu(), given[i].float().cpu(), dict(read))
                for i in range(n)
            ]

        delta = torch.zeros_like(v_init, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=cfg.v_lr)
        max_norm = cfg.clamp_norm_factor * v_init.norm(dim=1)
        v_sq = v_init.norm(dim=1) ** 2
        active = torch.ones(n, dtype=torch.bool)  # on the host, read every step; ``mask`` is its device copy
        mask = active.to(dev)
        history: list[list[float]] = [[] for _ in range(n)]
        with torch.enable_grad():
            for _step in range(cfg.v_steps):
                opt.zero_grad()
                logp = F.log_softmax(run.step(delta).float(), dim=-1)
                rewrite = ~run.kl_rows
                owner_rw = run.owner[rewrite]
                valid = run.valid[rewrite]
                tok = logp[rewrite].gather(-1, run.targets[rewrite].unsqueeze(-1)).squeeze(-1) * valid
                row_nll = -tok.sum(1) / valid.sum(1).clamp_min(1)
                nll = torch.zeros(n, device=dev).index_add(0, owner_rw, row_nll) / n_rows
                kl_owner = run.owner[run.kl_rows]
                kl_rows = kl_init[kl_owner]
                kl = torch.zeros(n, device=dev).index_add(
                    0, kl_owner, (kl_rows.exp() * (kl_rows - logp[run.kl_rows, 0])).sum(-1)
                )
                decay = cfg.v_weight_decay * (delta**2).sum(1) / v_sq
                now = nll.detach().cpu().tolist()  # the one host sync of a step: every request's stopping rule
                stopped = False
                for i in active.nonzero().squeeze(1).tolist():
                    history[i].append(now[i])
                    if now[i] < cfg.stop_loss:
                        active[i] = False
                        stopped = True
                if not bool(active.any()):
                    break
                if stopped:
                    mask = active.to(dev)
                loss = ((nll + cfg.kl_factor * kl + decay) * mask).sum()
                frozen = delta.detach()[~mask].clone()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    delta[~mask] = frozen  # Adam's momentum must not move a request that has stopped
                    norms = delta.norm(dim=1)
                    over = norms > max_norm
                    delta[over] = delta[over] * (max_norm[over] / norms[over])[:, None]
                if stopped:
                    run.keep(mask[run.owner])  # later steps run only the rows of requests still optimised
        return [
            TargetResidual(
                k_star[i].detach().cpu(),
                k_bare[i].cpu(),
                v_init[i].cpu(),
                delta[i].detach().float().cpu(),
                {
                    "layer": layer,
                    "steps": len(history[i]),
                    "nll_first": history[i][0],
                    "nll_last": history[i][-1],
                    "delta_norm": delta[i].norm().item(),
                    "fast_path": fast,
                    "batched_with": n,
                    "step_dtype": cfg.step_dtype,
                },
            )
            for i in range(n)
        ]


__all__ = ["LocateEditConfig", "LocateEditor", "TargetResidual", "sample_contexts", "subject_last_index"]
