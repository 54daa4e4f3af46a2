"""Key statistics for locate-and-edit methods: C = E[k k^T] over a text corpus, where k is the input of a
layer's MLP output projection (ROME eq. 2 / MEMIT's C_0).

The forward pass stops at the measured layer (a hook raises once the keys are captured), so the layers above
it are never run; several layers (MEMIT's) are measured in one pass that stops at the highest. Results are
cached on disk under ``$EDITKIT_CACHE/stats`` and in memory, keyed by everything that affects them: a
fingerprint of the parameters below the measured projection and the model config, the layer, the corpus
file's sha256, the token count, the sequence length and the dtype. Each file records the sha256 of the
statistics it holds; a file whose statistics do not match it (flipped bytes, truncation), that has no digest,
or that holds non-finite values is recomputed, and non-finite statistics are never returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from editkit.errors import ValidationError
from editkit.files import atomic_save_tensors, file_sha256, require_file, tensor_sha256
from editkit.models.hooks import HookKind, StopForward, hooks
from editkit.models.lm import LanguageModel, config_identity
from editkit.models.zoo import cache_dir

log = logging.getLogger(__name__)

STATS_VERSION = 3
_MEMO: dict[str, torch.Tensor] = {}
_FINGERPRINTS: dict[tuple[Any, ...], str] = {}


@dataclass(frozen=True)
class StatsRequest:
    layer: int
    corpus: Path
    n_tokens: int = 100_000
    seq_len: int = 128
    batch_size: int = 8


def key_fingerprint(lm: LanguageModel, layer: int) -> str:
    """Hash of every parameter that can change the keys entering ``layer``'s MLP output projection.

    The projection itself is excluded (it does not affect its own input), so repeated edits of one layer
    keep reusing the same statistics, as ROME does.
    """
    ad = lm.adapter
    prefixes = [ad.embeddings + "."] + [f"{ad.layers}.{i}." for i in range(layer + 1)]
    excluded = ad.site(layer, "mlp_out") + "."
    params = [
        (n, p)
        for n, p in lm.model.named_parameters()
        if any(n.startswith(pre) for pre in prefixes) and not n.startswith(excluded)
    ]
    memo_key = (id(lm.model), layer, tuple((n, id(p), p._version) for n, p in params))
    if memo_key in _FINGERPRINTS:
        return _FINGERPRINTS[memo_key]
    h = hashlib.sha256(config_identity(lm.config).encode())
    for n, p in params:
        h.update(n.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()
    _FINGERPRINTS[memo_key] = digest
    return digest


def _corpus_chunks(lm: LanguageModel, corpus: Path, n_tokens: int, seq_len: int) -> list[list[int]]:
    """The corpus's first ``n_tokens`` tokens (whole ``seq_len`` windows), lines tokenized one by one."""
    require_file(corpus, "corpus file")
    if n_tokens < seq_len:
        raise ValidationError(f"key statistics need at least one window: n_tokens {n_tokens} < seq_len {seq_len}")
    ids: list[int] = []
    with corpus.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                ids += lm.encode(line.strip() + "\n", special=False)
            if len(ids) >= n_tokens:
                break
    if len(ids) < seq_len:
        raise ValidationError(f"corpus {corpus} has only {len(ids)} tokens; need at least {seq_len}")
    usable = min(n_tokens, len(ids)) // seq_len * seq_len
    return [ids[i : i + seq_len] for i in range(0, usable, seq_len)]


def second_moment(lm: LanguageModel, req: StatsRequest, *, progress: bool = False) -> torch.Tensor:
    """E[k k^T] (float32, CPU) for keys at ``req.layer``, cached on disk and in memory."""
    return second_moments(lm, [req], progress=progress)[0]


def second_moments(lm: LanguageModel, reqs: Sequence[StatsRequest], *, progress: bool = False) -> list[torch.Tensor]:
    """E[k k^T] for several layers over one corpus (MEMIT's edited layers), in the order of ``reqs``.

    Cached layers are read back; the others are computed together in one pass over the corpus that stops at
    the highest of them, instead of one pass per layer.
    """
    if len({(Path(r.corpus), r.n_tokens, r.seq_len, r.batch_size) for r in reqs}) > 1:
        raise ValidationError("statistics of several layers are computed over one corpus and token count")
    found: dict[int, torch.Tensor] = {}
    todo: dict[int, tuple[str, Path, dict[str, Any]]] = {}
    for req in reqs:
        lm.adapter.check_layer(lm.model, req.layer)
        key, path, key_fields = _cache_entry(lm, req)
        if (mom2 := _cached(key, path, req.layer)) is not None:
            found[req.layer] = mom2
        else:
            todo[req.layer] = (key, path, key_fields)
    if todo:
        first = reqs[0]
        t0 = time.perf_counter()
        computed, count = _compute(lm, sorted(todo), first, progress=progress)
        for layer, mom2 in computed.items():
            if not torch.isfinite(mom2).all():
                raise ValidationError(
                    f"key statistics of layer {layer} over {first.corpus} are not finite: the model's activations "
                    "overflow there (try float32, or another layer)"
                )
            key, path, key_fields = todo[layer]
            meta = {k: str(v) for k, v in key_fields.items()} | {"count": str(count), "sha256": tensor_sha256(mom2)}
            atomic_save_tensors({"mom2": mom2}, path, metadata=meta)
            _MEMO[key] = found[layer] = mom2
        log.info("key statistics for layer(s) %s: %d tokens in %.1f s", sorted(todo), count, time.perf_counter() - t0)
    return [found[r.layer] for r in reqs]


def _cache_entry(lm: LanguageModel, req: StatsRequest) -> tuple[str, Path, dict[str, Any]]:
    corpus = Path(req.corpus)
    key_fields = {
        "version": STATS_VERSION,
        "model": key_fingerprint(lm, req.layer),
        "site": lm.adapter.site(req.layer, "mlp_out"),
        "corpus_sha256": file_sha256(corpus) if corpus.is_file() else str(corpus),
        "n_tokens": req.n_tokens,
        "seq_len": req.seq_len,
        "dtype": str(lm.dtype),
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:32]
    return key, cache_dir() / "stats" / f"{key}.safetensors", key_fields


def _cached(key: str, path: Path, layer: int) -> torch.Tensor | None:
    if key in _MEMO:
        return _MEMO[key]
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            recorded = (f.metadata() or {}).get("sha256")
            mom2 = f.get_tensor("mom2")
    except Exception as exc:  # a truncated or corrupted cache file: recompute
        log.warning("ignoring unreadable statistics cache %s (%s)", path, exc)
        return None
    if recorded is None:
        log.warning("ignoring statistics cache %s: it has no digest (an older editkit wrote it); recomputing", path)
        return None
    if recorded != tensor_sha256(mom2) or not torch.isfinite(mom2).all():
        log.warning("ignoring statistics cache %s: its values fail their recorded sha256; recomputing", path)
        return None
    _MEMO[key] = mom2
    log.info("loaded key statistics for layer %d from %s", layer, path)
    return mom2


@torch.no_grad()
def _compute(
    lm: LanguageModel, layers: Sequence[int], req: StatsRequest, *, progress: bool
) -> tuple[dict[int, torch.Tensor], int]:
    """One pass over the corpus with a hook on each layer's MLP output projection; the highest one ends the
    forward pass. Each batch's k^T k is taken in float32 (a sum over at most a few thousand tokens) and
    accumulated in float64."""
    chunks = _corpus_chunks(lm, Path(req.corpus), req.n_tokens, req.seq_len)
    top = max(layers)
    acc: dict[int, torch.Tensor] = {}
    count = 0

    def capture(layer: int) -> Callable[[torch.nn.Module, tuple[Any, ...]], None]:
        def hook(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            nonlocal count
            k = args[0].reshape(-1, args[0].shape[-1]).float()
            kk = (k.T @ k).double()
            acc[layer] = acc[layer] + kk if layer in acc else kk
            if layer == top:
                count += k.shape[0]
                raise StopForward

        return hook

    run = lm.model.get_encoder() if lm.is_encoder_decoder else lm.model  # type: ignore[operator]
    batches = range(0, len(chunks), req.batch_size)
    bar = None
    if progress:
        from rich.progress import track

        names = ", ".join(str(layer) for layer in layers)
        bar = track(batches, description=f"key statistics, layer(s) {names}", transient=True)
    targets: list[tuple[torch.nn.Module, HookKind, Callable[..., None]]] = [
        (lm.adapter.module(lm.model, layer, "mlp_out"), "forward_pre", capture(layer)) for layer in layers
    ]
    with hooks(targets):
        for i in bar if bar is not None else batches:
            ids = torch.tensor(chunks[i : i + req.batch_size], device=lm.device)
            with contextlib.suppress(StopForward):
                run(input_ids=ids, use_cache=False) if not lm.is_encoder_decoder else run(input_ids=ids)
    return {layer: (a / count).float().cpu() for layer, a in acc.items()}, count
