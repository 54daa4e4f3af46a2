"""Key statistics for locate-and-edit methods: C = E[k k^T] over a text corpus, where k is the input of a
layer's MLP output projection (ROME eq. 2 / MEMIT's C_0).

The forward pass stops at the measured layer (a hook raises once the keys are captured), so the layers above
it are never run. Results are cached on disk under ``$EDITKIT_CACHE/stats`` and in memory, keyed by
everything that affects them: a fingerprint of the parameters below the measured projection and the model
config, the layer, the corpus file's sha256, the token count, the sequence length and the dtype.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from editkit.errors import ValidationError
from editkit.models.hooks import StopForward, hooks
from editkit.models.lm import LanguageModel
from editkit.models.zoo import cache_dir, sha256_file

log = logging.getLogger(__name__)

STATS_VERSION = 2
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
    h = hashlib.sha256(str(lm.config.to_json_string(use_diff=False)).encode())
    for n, p in params:
        h.update(n.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()
    _FINGERPRINTS[memo_key] = digest
    return digest


def _corpus_chunks(lm: LanguageModel, corpus: Path, n_tokens: int, seq_len: int) -> list[list[int]]:
    """The corpus's first ``n_tokens`` tokens (whole ``seq_len`` windows), lines tokenized one by one."""
    if not corpus.is_file():
        raise ValidationError(f"corpus file {corpus} does not exist")
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
    lm.adapter.check_layer(lm.model, req.layer)
    corpus = Path(req.corpus)
    key_fields = {
        "version": STATS_VERSION,
        "model": key_fingerprint(lm, req.layer),
        "site": lm.adapter.site(req.layer, "mlp_out"),
        "corpus_sha256": sha256_file(corpus) if corpus.is_file() else str(corpus),
        "n_tokens": req.n_tokens,
        "seq_len": req.seq_len,
        "dtype": str(lm.dtype),
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:32]
    if key in _MEMO:
        return _MEMO[key]
    path = cache_dir() / "stats" / f"{key}.safetensors"
    if path.exists():
        try:
            mom2 = load_file(str(path))["mom2"]
            _MEMO[key] = mom2
            log.info("loaded key statistics for layer %d from %s", req.layer, path)
            return mom2
        except Exception as exc:  # a truncated or corrupted cache file: recompute
            log.warning("ignoring unreadable statistics cache %s (%s)", path, exc)
    t0 = time.perf_counter()
    mom2, count = _compute(lm, req, corpus, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"mom2": mom2}, str(tmp), metadata={k: str(v) for k, v in key_fields.items()} | {"count": str(count)})
    tmp.replace(path)
    log.info("key statistics for layer %d: %d tokens in %.1f s", req.layer, count, time.perf_counter() - t0)
    _MEMO[key] = mom2
    return mom2


@torch.no_grad()
def _compute(lm: LanguageModel, req: StatsRequest, corpus: Path, *, progress: bool) -> tuple[torch.Tensor, int]:
    chunks = _corpus_chunks(lm, corpus, req.n_tokens, req.seq_len)
    target = lm.adapter.module(lm.model, req.layer, "mlp_out")
    acc: torch.Tensor | None = None
    count = 0

    def capture(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        nonlocal acc, count
        k = args[0].reshape(-1, args[0].shape[-1]).double()
        acc = k.T @ k if acc is None else acc + k.T @ k
        count += k.shape[0]
        raise StopForward

    run = lm.model.get_encoder() if lm.is_encoder_decoder else lm.model  # type: ignore[operator]
    batches = range(0, len(chunks), req.batch_size)
    bar = None
    if progress:
        from rich.progress import track

        bar = track(batches, description=f"key statistics, layer {req.layer}", transient=True)
    with hooks([(target, "forward_pre", capture)]):
        for i in bar if bar is not None else batches:
            ids = torch.tensor(chunks[i : i + req.batch_size], device=lm.device)
            with contextlib.suppress(StopForward):
                run(input_ids=ids, use_cache=False) if not lm.is_encoder_decoder else run(input_ids=ids)
    assert acc is not None
    return (acc / count).float().cpu(), count
