"""Causal tracing (ROME, Meng et al. 2022, section 2.1): which hidden states carry a fact.

For a prompt, its subject and the answer's first token: a clean run; corrupted runs whose subject token
embeddings get Gaussian noise (``noise`` x the embeddings' standard deviation, ``samples`` seeded draws); and
corrupted runs in which one state of the clean run is restored at one (token, layer): the layer's output (the
residual stream, ``hidden``), or the MLP's or the attention's output over a window of ``window`` layers centred
on the layer (ROME's windows). A state's indirect effect is P(answer | corrupted, restored) - P(answer |
corrupted), each averaged over the noise draws.

Batched: every restoration of every noise draw is one row of a forward pass, many rows per pass. Rows are sorted
by the lowest layer they restore, and a pass over rows whose lowest restored layer is ``s`` starts at layer ``s``
from the corrupted runs' cached input of that layer (the layers below are replaced by stubs that replay it,
:func:`~editkit.editors.passes.replay_prefix`), since nothing below differs from the corrupted run. In a causal
model a restoration at token t changes nothing before t either: rows are also grouped by the first token they
restore, t0, and a pass runs only the tokens from t0 on, attending to the keys and values of the tokens before
t0 in the corrupted runs (computed once per t0 for every noise draw, ``prefix_cache``). Tokens before the
subject are the same in every run, so restoring them changes nothing: their indirect effect is 0 without a
pass. Encoder-decoder models (T5: the encoder's layers are traced) run whole.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from editkit.editors.passes import layer_output_hidden, replay_prefix
from editkit.errors import ConfigError, ValidationError
from editkit.models.adapters import get_module
from editkit.models.hooks import hooks
from editkit.models.lm import CACHE_KEY, LanguageModel
from editkit.typedconfig import TypedConfig

Kind = Literal["hidden", "mlp", "attn"]
KINDS: tuple[Kind, ...] = ("hidden", "mlp", "attn")
Restoration = tuple[str, int, int]  # (kind, layer, token)


@dataclass
class TraceConfig(TypedConfig):
    samples: int = field(default=10, metadata={"help": "corrupted runs (noise draws) averaged (ROME: 10)"})
    noise: float = field(default=3.0, metadata={"help": "noise std as a multiple of the embeddings' std (ROME: 3)"})
    window: int = field(default=10, metadata={"help": "layers restored together for mlp / attn (ROME: 10)"})
    seed: int = field(default=0, metadata={"help": "seed of the noise"})
    rows: int = field(default=96, metadata={"help": "rows per forward pass (restorations x noise draws)"})
    kinds: list[str] = field(default_factory=lambda: list(KINDS), metadata={"help": "states traced: hidden, mlp, attn"})
    prefix_cache: bool = field(
        default=True,
        metadata={"help": "run the tokens before the first restored one once per noise draw (a pure speed-up)"},
    )

    def validate(self) -> None:
        if self.samples < 1 or self.window < 1 or self.rows < 1 or self.noise < 0:
            raise ConfigError("TraceConfig: samples, window and rows must be >= 1 and noise >= 0")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ConfigError(f"TraceConfig: kinds must be among {', '.join(KINDS)}; got {self.kinds}")


@torch.no_grad()
def embedding_std(lm: LanguageModel, chunk: int = 16384) -> float:
    """Standard deviation of every entry of the embedding module's output over the whole vocabulary (through the
    module, so a scaled embedding such as Gemma's counts its scale)."""
    emb = get_module(lm.model, lm.adapter.embeddings)
    weight = emb.weight
    assert isinstance(weight, torch.Tensor)
    n = weight.shape[0]
    total = total_sq = 0.0
    count = 0
    for i in range(0, n, chunk):
        out = emb(torch.arange(i, min(n, i + chunk), device=lm.device)).double()
        total += float(out.sum())
        total_sq += float((out * out).sum())
        count += out.numel()
    mean = total / count
    return float((total_sq / count - mean * mean) ** 0.5)


def subject_span(lm: LanguageModel, prompt: str, subject: str) -> tuple[list[int], int, int]:
    """The prompt's token ids and the token range ``[start, end)`` holding the subject's first occurrence."""
    at = prompt.find(subject)
    if not subject or at < 0:
        raise ValidationError(f"subject {subject!r} is not in the prompt {prompt!r}")
    ids, offsets = lm.encode_with_offsets(prompt)
    toks = [i for i, (a, b) in enumerate(offsets) if b > a and a < at + len(subject) and b > at]
    if not toks:
        raise ValidationError(f"no token of {prompt!r} holds the subject {subject!r}")
    return ids, toks[0], toks[-1] + 1


def window_layers(kind: str, layer: int, n_layers: int, window: int) -> list[int]:
    """The layers restored for a state centred on ``layer``: ROME's ``[layer - w//2, layer + ceil(w/2))`` for
    mlp / attn, clipped to the stack; the layer alone for the residual stream."""
    if kind == "hidden":
        return [layer]
    return list(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


@dataclass
class TraceResult:
    """One prompt's trace. ``scores[kind][t][l]`` is P(answer) with that state restored (averaged over the noise
    draws); ``effect(kind)`` subtracts the corrupted probability."""

    prompt: str
    subject: str
    tokens: list[str]
    subject_range: tuple[int, int]
    answer: str
    answer_id: int
    p_clean: float
    p_corrupted: float
    scores: dict[str, list[list[float]]]
    config: dict[str, Any]
    noise_std: float

    def effect(self, kind: str) -> torch.Tensor:
        return torch.tensor(self.scores[kind]) - self.p_corrupted

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "subject": self.subject,
            "tokens": self.tokens,
            "subject_range": list(self.subject_range),
            "answer": self.answer,
            "answer_id": self.answer_id,
            "p_clean": self.p_clean,
            "p_corrupted": self.p_corrupted,
            "noise_std": self.noise_std,
            "config": self.config,
            "scores": self.scores,
        }


class Tracer:
    """The runs of one prompt: clean states captured, corrupted inputs cached; :meth:`restored` scores any rows
    of restorations (each row a set of ``(kind, layer, token)``), :meth:`trace` the whole ROME grid."""

    @torch.no_grad()
    def __init__(
        self,
        lm: LanguageModel,
        prompt: str,
        subject: str,
        config: TraceConfig,
        *,
        answer: str | None = None,
        noise_std: float | None = None,
    ) -> None:
        self.lm, self.config, self.prompt, self.subject = lm, config, prompt, subject
        self.ids, self.s0, self.s1 = subject_span(lm, prompt, subject)
        self.n_layers = lm.adapter.n_layers(lm.model)
        self.layers = lm.adapter.layer_list(lm.model)
        self.replay = lm.adapter.sequential_layers and not lm.is_encoder_decoder
        dev = lm.device
        ids = torch.tensor([self.ids], device=dev)
        self.embeds = get_module(lm.model, lm.adapter.embeddings)(ids).detach()
        self.noise_std = embedding_std(lm) if noise_std is None else noise_std
        gen = torch.Generator().manual_seed(config.seed)
        shape = (config.samples, self.s1 - self.s0, self.embeds.shape[-1])
        self.noise = (torch.randn(shape, generator=gen) * config.noise * self.noise_std).to(dev, self.embeds.dtype)
        if answer is None:
            self.answer_id = int(self._probs(self.embeds, {}).argmax())
        else:
            answer_ids = lm.encode(answer, special=False)
            if not answer_ids:
                raise ValidationError(f"answer {answer!r} tokenizes to nothing")
            self.answer_id = answer_ids[0]
        self.answer = lm.tokenizer.decode([self.answer_id])
        self.clean: dict[tuple[str, int], torch.Tensor] = {}
        self.like: list[Any] = []
        self.p_clean = float(self._capture_clean())
        self.layer_in: list[torch.Tensor] = []
        self.p_corrupted = float(self._capture_corrupted().mean())
        self._prefixes: dict[int, Any] = {}

    # ------------------------------------------------------------------ passes
    def site(self, kind: str, layer: int) -> nn.Module:
        if kind == "hidden":
            return self.layers[layer]
        return self.lm.adapter.module(self.lm.model, layer, "mlp_out" if kind == "mlp" else "attn_out")

    def corrupted_embeds(self) -> torch.Tensor:
        """The inputs of the corrupted runs, ``[samples, T, d]``."""
        out = self.embeds.expand(self.config.samples, -1, -1).clone()
        out[:, self.s0 : self.s1] += self.noise
        return out

    def _probs(self, embeds: torch.Tensor, specs: Any, cache: Any = None) -> torch.Tensor:
        """P(every token) at the prompt's last position (the first decoder position for encoder-decoders);
        ``cache`` holds the keys and values of the tokens before ``embeds``."""
        lm, n = self.lm, embeds.shape[0]
        with hooks(specs):
            inputs: dict[str, Any] = {"inputs_embeds": embeds}
            if cache is not None:
                inputs.update({CACHE_KEY: cache, "use_cache": True})
            position = embeds.shape[1] - 1
            if lm.is_encoder_decoder:
                start = int(lm.config.decoder_start_token_id)
                inputs["decoder_input_ids"] = torch.full((n, 1), start, device=lm.device)
                position = 0
            logits = lm.logits_at(inputs, torch.full((n, 1), position, device=lm.device))[:, 0]
        return F.softmax(logits.float(), dim=-1).squeeze(0) if n == 1 else F.softmax(logits.float(), dim=-1)

    def _capture_clean(self) -> torch.Tensor:
        specs: list[Any] = []
        for layer in range(self.n_layers):
            for kind in KINDS:
                specs.append((self.site(kind, layer), "forward", self._grabber(kind, layer)))
        probs = self._probs(self.embeds, specs)
        return probs[self.answer_id]

    def _grabber(self, kind: str, layer: int) -> Any:
        def grab(_m: nn.Module, _args: Any, out: Any) -> None:
            self.clean[(kind, layer)] = layer_output_hidden(out)[0].detach()
            if kind == "hidden":
                self.like.append(out)

        return grab

    def _capture_corrupted(self) -> torch.Tensor:
        got: list[torch.Tensor] = []

        def grab_in(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            got.append((args[0] if args else kwargs["hidden_states"]).detach())

        handles = [layer.register_forward_pre_hook(grab_in, with_kwargs=True) for layer in self.layers]
        try:
            probs = self._probs(self.corrupted_embeds(), [])
        finally:
            for h in handles:
                h.remove()
        self.layer_in = got
        return probs[:, self.answer_id]

    @torch.no_grad()
    def restored(self, rows: Sequence[Sequence[Restoration]]) -> list[float]:
        """P(answer) for each row of restorations, averaged over the noise draws."""
        s, last = self.config.samples, len(self.ids) - 1
        cached = self.replay and self.config.prefix_cache
        expanded = sorted(
            (
                min((r[2] for r in row), default=last) if cached else 0,
                min((r[1] for r in row), default=self.n_layers),
                i,
                k,
            )
            for i, row in enumerate(rows)
            for k in range(s)
        )
        total = torch.zeros(len(rows), dtype=torch.float64)
        corrupted = self.corrupted_embeds()
        c = 0
        while c < len(expanded):
            t0 = expanded[c][0]
            chunk = [e for e in expanded[c : c + self.config.rows] if e[0] == t0]
            c += len(chunk)
            start = min(chunk[0][1], self.n_layers - 1) if self.replay else 0
            samples = torch.tensor([k for *_, k in chunk], device=self.lm.device)
            probs = self._restored_pass([rows[i] for *_, i, _ in chunk], samples, corrupted, start, t0)
            for (*_, i, _), p in zip(chunk, probs.tolist(), strict=True):
                total[i] += p
        return (total / s).tolist()

    def _prefix(self, t0: int, samples: torch.Tensor) -> Any:
        """The keys and values of tokens ``[0, t0)`` of the corrupted runs of ``samples`` (a fresh copy)."""
        if t0 not in self._prefixes:
            out = self.lm.model(inputs_embeds=self.corrupted_embeds()[:, :t0], use_cache=True)
            self._prefixes[t0] = out[CACHE_KEY]
        cache = copy.deepcopy(self._prefixes[t0])
        cache.batch_select_indices(samples)
        return cache

    def _restored_pass(
        self, rows: list[Sequence[Restoration]], samples: torch.Tensor, corrupted: torch.Tensor, start: int, t0: int
    ) -> torch.Tensor:
        """P(answer) for rows whose restorations are at layers >= ``start`` and tokens >= ``t0``."""
        targets: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
        for r, row in enumerate(rows):
            for kind, layer, token in row:
                rr, tt = targets.setdefault((kind, layer), ([], []))
                rr.append(r)
                tt.append(token)
        specs = [
            (self.site(k, layer), "forward", self._restorer(k, layer, rr, tt, t0))
            for (k, layer), (rr, tt) in targets.items()
        ]
        embeds = corrupted[samples, t0:]
        cache = self._prefix(t0, samples) if t0 > 0 else None
        if start == 0:
            return self._probs(embeds, specs, cache)[..., self.answer_id].reshape(-1)
        with replay_prefix(self.layers, start, self.layer_in[start][samples, t0:], self.like[start - 1]):
            return self._probs(embeds, specs, cache)[..., self.answer_id].reshape(-1)

    def _restorer(self, kind: str, layer: int, rows: list[int], tokens: list[int], t0: int) -> Any:
        """Restores the clean state at ``tokens`` of ``rows`` of a pass that runs the tokens from ``t0`` on."""
        dev = self.lm.device
        r, t = torch.tensor(rows, device=dev), torch.tensor(tokens, device=dev)
        clean = self.clean[(kind, layer)]

        def restore(_m: nn.Module, _args: Any, out: Any) -> Any:
            hidden = layer_output_hidden(out).clone()
            hidden[r, t - t0] = clean[t].to(hidden.dtype)
            return hidden if isinstance(out, torch.Tensor) else (hidden, *out[1:])

        return restore

    # ------------------------------------------------------------------ the grid
    def trace(self, tokens: Sequence[int] | None = None) -> TraceResult:
        """Every layer of every kind in the config at ``tokens`` (default: every token; in a causal model those
        before the subject are skipped, their effect being 0): ``scores[kind][token][layer]``, the corrupted
        probability where a token was not traced."""
        n_tok = len(self.ids)
        if tokens is None:
            tokens = range(0 if not self.replay else self.s0, n_tok)
        cells = [(kind, t, layer) for kind in self.config.kinds for t in tokens for layer in range(self.n_layers)]
        rows = [
            [(kind, w, t) for w in window_layers(kind, layer, self.n_layers, self.config.window)]
            for kind, t, layer in cells
        ]
        values = self.restored(rows)
        scores = {k: [[self.p_corrupted] * self.n_layers for _ in range(n_tok)] for k in self.config.kinds}
        for (kind, t, layer), v in zip(cells, values, strict=True):
            scores[kind][t][layer] = v
        return TraceResult(
            prompt=self.prompt,
            subject=self.subject,
            tokens=[self.lm.tokenizer.decode([i]) for i in self.ids],
            subject_range=(self.s0, self.s1),
            answer=self.answer,
            answer_id=self.answer_id,
            p_clean=self.p_clean,
            p_corrupted=self.p_corrupted,
            scores=scores,
            config=self.config.to_dict(),
            noise_std=self.noise_std,
        )


def trace(
    lm: LanguageModel, prompt: str, subject: str, config: TraceConfig | None = None, *, answer: str | None = None
) -> TraceResult:
    """Causal trace of one fact: ``answer`` (its first token) defaults to the model's greedy next token."""
    return Tracer(lm, prompt, subject, config or TraceConfig(), answer=answer).trace()


__all__ = ["KINDS", "TraceConfig", "TraceResult", "Tracer", "embedding_std", "subject_span", "trace", "window_layers"]
