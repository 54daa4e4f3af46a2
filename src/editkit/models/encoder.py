"""`SentenceEncoder`: a BERT-style encoder (all-MiniLM-L6-v2 by default) turned into sentence embeddings.

Mean pooling over the real tokens and L2 normalisation, as the sentence-transformers pipeline of
all-MiniLM-L6-v2 does, so squared distances lie in [0, 4]. The same encoder also reads (text, text) pairs, the
input of a cross-encoder. Used by the scope classifiers of the memory-based editors (SERAC §3.1) and to mine
hard negatives (SERAC appendix D.1). Device and dtype come from the encoder's parameters.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from editkit.errors import ConfigError

MAX_TOKENS = 128  # edits and queries are sentences; MiniLM was trained on 128-token inputs


class SentenceEncoder:
    """Args:
    model: a transformers encoder (``AutoModel``) returning ``last_hidden_state``.
    tokenizer: its tokenizer.
    name: how caches and artifacts refer to this encoder.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, name: str = "encoder") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self._traced: torch.jit.ScriptModule | None = None  # what runs ``model`` (quantized copies only)

    @classmethod
    def load(cls, name_or_path: str = "minilm-l6", *, device: str | None = None) -> SentenceEncoder:
        from editkit.models.zoo import load_encoder

        model, tokenizer = load_encoder(name_or_path, device=device, progress=False)
        return cls(model, tokenizer, name=name_or_path)

    def quantized(self) -> SentenceEncoder:
        """A copy whose linear layers hold int8 weights (dynamic quantization: one scale per output channel,
        activations quantized per call), run as a frozen TorchScript trace (the eager module's Python overhead is
        as large as its arithmetic on a short input). On this project's CPU it embeds a short input about 4x
        faster (docs/benchmarks.md, "int8 scope"). CPU only."""
        if self.device.type != "cpu":
            raise ConfigError(f"int8 encoder weights run on the CPU only; this encoder is on {self.device}")
        with warnings.catch_warnings():  # torch.ao.quantization's and TorchScript's notices of their successors
            warnings.simplefilter("ignore")
            model = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(self.model), {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
            )
            encoder = SentenceEncoder(model, self.tokenizer, name=self.name)
            # traced on a padded pair of inputs, so that the attention mask is applied whatever the batch
            example = encoder.tokenize(["a short example", "a somewhat longer example sentence to pad the first"])
            positional = _Positional(model, list(example)).eval()
            with torch.no_grad():
                traced = torch.jit.trace(positional, tuple(example.values()), check_trace=False)
            encoder._traced = torch.jit.freeze(traced)
        return encoder

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dim(self) -> int:
        config: Any = self.model.config
        return int(config.hidden_size)

    def fingerprint(self) -> str:
        """A hash of the encoder's weights: vectors stored for one encoder are never read by another."""
        h = hashlib.sha256(self.name.encode())
        for name, p in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().float().cpu().flatten()[:: max(1, p.numel() // 4096)].numpy().tobytes())
        return h.hexdigest()[:16]

    def tokenize(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts),
            list(pairs) if pairs is not None else None,
            padding=True,
            truncation=True,
            max_length=MAX_TOKENS,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in enc.items()}

    def hidden(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Last hidden states ``[B, T, d]``."""
        if self._traced is not None:
            return self._traced(*inputs.values())
        return self.model(**inputs).last_hidden_state

    @staticmethod
    def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over real tokens, then L2-normalised."""
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1)

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
        """Sentence embeddings ``[n, d]`` (float32, CPU), unit length."""
        if not texts:
            return torch.zeros((0, self.dim))
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty((len(texts), self.dim))
        with torch.no_grad():
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                inputs = self.tokenize([texts[j] for j in idx])
                out[idx] = self.pool(self.hidden(inputs), inputs["attention_mask"]).float().cpu()
        return out


class _Positional(nn.Module):
    """An encoder called with its inputs in a fixed order (what :func:`torch.jit.trace` takes), returning the last
    hidden states."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True))).last_hidden_state
