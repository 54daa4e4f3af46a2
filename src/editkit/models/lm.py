"""`LanguageModel`: the one surface that evaluation, serving and editors use to talk to a model.

It scores continuations in batches (per-token log-probabilities; a decoder-only model reads a prompt once for
all of its continuations, through its key/value cache), returns next-token distributions and generates text.
Device and dtype always come from the model's parameters. Prompts are left-padded with explicit position ids
for scoring and generation, teacher-forced batches right-padded, so that a padded batch gives the same numbers
as one sequence at a time (tested).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from editkit.errors import ValidationError
from editkit.models.adapters import ArchAdapter, adapter_for, get_module
from editkit.models.hooks import hooks

# The name of a forward's key/value cache, as argument and as output field: ``cache`` in the transformers 5
# releases that renamed it (5.24 has), ``past_key_values`` before (still accepted after the rename, with a
# deprecation warning on every run).
CACHE_KEY = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class TeacherForcedBatch:
    """Prompts with continuations, tokenized and padded, ready for a teacher-forced forward pass.

    ``pred_mask[b, t]`` is True where the logits at position ``t`` predict a continuation token, and
    ``pred_ids[b, t]`` is that token. For encoder-decoder models positions refer to the decoder.
    """

    inputs: dict[str, torch.Tensor]
    pred_mask: torch.Tensor
    pred_ids: torch.Tensor
    prompt_lengths: list[int]
    _packed: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False)

    def positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The predicting positions packed to the left: ``index[b, j]`` is row b's j-th predicting position
        (0 where ``valid[b, j]`` is False). Use with :meth:`LanguageModel.logits_at`. Computed once: optimisation
        loops read it every step."""
        if self._packed is None:
            self._packed = self._pack()
        return self._packed

    def _pack(self) -> tuple[torch.Tensor, torch.Tensor]:
        counts = self.pred_mask.sum(1)
        width = int(counts.max())
        index = torch.zeros((self.pred_mask.shape[0], width), dtype=torch.long, device=self.pred_mask.device)
        valid = torch.arange(width, device=index.device)[None, :] < counts[:, None]
        for b in range(index.shape[0]):
            index[b, : int(counts[b])] = self.pred_mask[b].nonzero().squeeze(1)
        return index, valid

    def packed_targets(self) -> torch.Tensor:
        index, _ = self.positions()
        return self.pred_ids.gather(1, index)

    def token_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probability of every predicted token, ``[B, P]`` (0 where padding), from logits at the
        predicting positions only (``logits_at(inputs, positions()[0])``)."""
        index, valid = self.positions()
        logp = F.log_softmax(logits.float(), dim=-1)
        return logp.gather(-1, self.pred_ids.gather(1, index).unsqueeze(-1)).squeeze(-1) * valid

    def sequence_logprobs(self, logits: torch.Tensor) -> list[torch.Tensor]:
        lp = self.token_logprobs(logits)
        _, valid = self.positions()
        return [lp[b][valid[b]] for b in range(lp.shape[0])]


@dataclass(frozen=True)
class TokenScores:
    """A continuation scored under teacher forcing (see :meth:`LanguageModel.score_tokens`)."""

    logprobs: torch.Tensor  # [n_tokens] log p(token | prompt, previous tokens)
    greedy: torch.Tensor  # [n_tokens] bool: the token is the model's argmax there
    first_distribution: torch.Tensor | None = None  # [vocab] log-distribution before the first token

    @property
    def exact_match(self) -> bool:
        """Greedy decoding would produce exactly this continuation's tokens."""
        return bool(self.greedy.all())


def config_identity(config: Any) -> str:
    """A model config as JSON, without where it was loaded from (``_name_or_path``, which transformers sets to
    the folder): the same model in another cache folder or on another machine has the same fingerprints."""
    values = json.loads(config.to_json_string(use_diff=False))
    values.pop("_name_or_path", None)
    return json.dumps(values, sort_keys=True)


class LanguageModel:
    """A causal (or encoder-decoder) language model with its tokenizer.

    Args:
        model: a transformers model with an LM head.
        tokenizer: its (fast) tokenizer.
        name: how results and caches refer to this model (a zoo name, hub id or path).
        edit_layer: the default layer for locate-and-edit methods (see :attr:`default_edit_layer`).
        rome_layer: ROME's default layer where it is not ``edit_layer`` (see :attr:`default_rome_layer`).
        prefix: text (usually a document-start token) put before every prompt, for models whose tokenizer
            adds no BOS. Without it the first word of a prompt sits at position 0, where these models keep
            an "attention sink" with outsized activations; editing a key there (ROME on a one-token subject
            at the start of a prompt) then breaks every other position.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        name: str = "model",
        edit_layer: int | None = None,
        prefix: str | None = None,
        rome_layer: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.config: Any = cast(Any, model).config
        self.adapter: ArchAdapter = adapter_for(self.config)
        if tokenizer.pad_token_id is None:
            # Scoring masks padding out, so any id works; eos is the conventional choice.
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
            tokenizer.pad_token_id = pad
        self.model.eval()
        self._edit_layer = edit_layer
        self._rome_layer = rome_layer
        self.prefix = prefix
        self._prefix_ids: list[int] = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        self._fingerprint: tuple[tuple[tuple[int, int], ...], str] | None = None

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def default_edit_layer(self) -> int:
        """The layer locate-and-edit methods edit unless told otherwise: the zoo's choice for a named model,
        else the layer 20% of the way up the stack (ROME's and EasyEdit's choices sit between 15% and 35%)."""
        if self._edit_layer is not None:
            return self._edit_layer
        return max(0, round(0.2 * self.adapter.n_layers(self.model)))

    @property
    def default_rome_layer(self) -> int:
        """The layer ROME edits unless told otherwise: the zoo's ``rome_layer`` (the causally traced layer, where
        it scored better than :attr:`default_edit_layer`), else :attr:`default_edit_layer`."""
        return self._rome_layer if self._rome_layer is not None else self.default_edit_layer

    @torch.no_grad()
    def fingerprint(self) -> str:
        """sha256 of the model's config (:func:`config_identity`) and every parameter's bytes, as they are now:
        what results computed on this model (an unedited reference, unedited scores) are checked against before
        they are reused."""
        params = list(self.model.named_parameters())
        memo = tuple((id(p), p._version) for _, p in params)
        if self._fingerprint is not None and self._fingerprint[0] == memo:
            return self._fingerprint[1]
        h = hashlib.sha256(config_identity(self.config).encode())
        for name, param in params:
            h.update(name.encode())
            h.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        self._fingerprint = (memo, h.hexdigest())
        return self._fingerprint[1]

    @property
    def is_encoder_decoder(self) -> bool:
        return self.adapter.is_encoder_decoder

    @property
    def max_length(self) -> int:
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(self.config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        return tok_max if isinstance(tok_max, int) and 0 < tok_max < 1_000_000 else 512

    def __repr__(self) -> str:
        return f"LanguageModel({self.name!r}, arch={self.adapter.name}, device={self.device}, dtype={self.dtype})"

    # ------------------------------------------------------------------ tokenization
    def encode(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of ``text``; with ``special``, as a prompt (the tokenizer's special tokens and the prefix)."""
        ids: list[int] = self.tokenizer(text, add_special_tokens=special)["input_ids"]
        return self._prefix_ids + ids if special else ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Prompt token ids of ``text`` with each token's character span (``(0, 0)`` for special tokens)."""
        enc = self.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        offsets = [(0, 0)] * len(self._prefix_ids) + [(int(a), int(b)) for a, b in enc["offset_mapping"]]
        return self._prefix_ids + list(enc["input_ids"]), offsets

    def check_fits(self, text: str, extra_tokens: int = 0) -> None:
        n = len(self.encode(text)) + extra_tokens
        if n > self.max_length:
            raise ValidationError(
                f"prompt of {n} tokens is longer than {self.name} allows ({self.max_length}): {text[:60]!r}..."
            )

    def pad(self, seqs: Sequence[Sequence[int]], *, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Token id rows padded to the longest (on the right, or ``left``): ``ids`` and ``attention_mask``
        ``[B, T]`` on the model's device."""
        width = max(len(s) for s in seqs)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if not s:
                continue
            if left:
                ids[i, width - len(s) :] = torch.tensor(s)
                mask[i, width - len(s) :] = 1
            else:
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _check_pair(self, prompt: str, n_tokens: int) -> None:
        if n_tokens > self.max_length:
            raise ValidationError(f"prompt + target is {n_tokens} tokens, over {self.max_length}: {prompt[:60]!r}")

    def teacher_forced(self, prompts: Sequence[str], continuations: Sequence[str | list[int]]) -> TeacherForcedBatch:
        """Tokenize ``prompt + continuation`` pairs. The two are tokenized apart so that the continuation's
        tokens do not depend on the prompt (the same target is scored the same way after any prompt). A
        continuation may also be given as token ids (e.g. a model's own greedy prediction)."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        p_ids = [self.encode(p) for p in prompts]
        c_ids = [list(c) if isinstance(c, list) else self.encode(c, special=False) for c in continuations]
        for c, ids in zip(continuations, c_ids, strict=True):
            if not ids:
                raise ValidationError(f"continuation {c!r} tokenizes to nothing")
        if self.is_encoder_decoder:
            start = int(self.config.decoder_start_token_id)
            enc_ids, enc_mask = self.pad(p_ids)
            dec_in = [[start, *c[:-1]] for c in c_ids]
            dec_ids, dec_mask = self.pad(dec_in)
            pred_ids, _ = self.pad(c_ids)
            inputs = {
                "input_ids": enc_ids,
                "attention_mask": enc_mask,
                "decoder_input_ids": dec_ids,
                "decoder_attention_mask": dec_mask,
            }
            return TeacherForcedBatch(inputs, dec_mask.bool(), pred_ids * dec_mask, [len(p) for p in p_ids])
        full = [p + c for p, c in zip(p_ids, c_ids, strict=True)]
        for text, seq in zip(prompts, full, strict=True):
            self._check_pair(text, len(seq))
        input_ids, mask = self.pad(full)
        pred_mask = torch.zeros_like(mask, dtype=torch.bool)
        pred_ids = torch.zeros_like(input_ids)
        for b, (prompt_ids, cont_ids) in enumerate(zip(p_ids, c_ids, strict=True)):
            start = len(prompt_ids) - 1  # logits at the prompt's last token predict the first continuation token
            pred_mask[b, start : start + len(cont_ids)] = True
            pred_ids[b, start : start + len(cont_ids)] = torch.tensor(cont_ids, device=input_ids.device)
        return TeacherForcedBatch(
            {"input_ids": input_ids, "attention_mask": mask}, pred_mask, pred_ids, [len(p) for p in p_ids]
        )

    # ------------------------------------------------------------------ scoring
    def logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits at every position, ``[B, T, V]``."""
        out = self.model(**inputs, use_cache=False)
        return out.logits

    def logits_at(self, inputs: dict[str, Any], index: torch.Tensor) -> torch.Tensor:
        """Logits only at ``index[b, j]`` (positions per row), ``[B, P, V]``. ``inputs`` go to the model's
        forward (``use_cache`` is off unless they turn it on).

        The output head runs on the selected positions only (a pre-hook gathers its input), which saves most of
        the head's cost: with a 49k vocabulary it otherwise dominates short teacher-forced batches.
        """
        head = get_module(self.model, self.adapter.head)

        def select(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            hidden = args[0]
            picked = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            return (picked, *args[1:])

        with hooks([(head, "forward_pre", select)]):
            out = self.model(**{"use_cache": False, **inputs})
        return out.logits

    @torch.no_grad()
    def score(self, prompts: Sequence[str], continuations: Sequence[str], batch_size: int = 16) -> list[torch.Tensor]:
        """Per-token log-probabilities of each continuation given its prompt (float32, on the CPU)."""
        return [s.logprobs for s in self.score_tokens(prompts, continuations, batch_size=batch_size)]

    @torch.no_grad()
    def score_tokens(
        self,
        prompts: Sequence[str],
        continuations: Sequence[str | list[int]],
        *,
        batch_size: int = 16,
        first_distribution: bool = False,
    ) -> list[TokenScores]:
        """For each continuation, its per-token log-probabilities, whether each token is the model's greedy
        choice, and (optionally) the whole log-distribution at the first continuation position. All on the CPU.

        A decoder-only model reads each distinct prompt once however many continuations it has
        (:meth:`_score_shared`); an encoder-decoder model takes one teacher-forced pass per batch of pairs."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        if not self.is_encoder_decoder:
            return self._score_shared(prompts, continuations, batch_size, first_distribution)
        out: list[TokenScores] = []
        for i in range(0, len(prompts), batch_size):
            batch = self.teacher_forced(prompts[i : i + batch_size], continuations[i : i + batch_size])
            logits = self.logits_at(batch.inputs, batch.positions()[0])
            _, valid = batch.positions()
            lp = batch.token_logprobs(logits).cpu()
            hit = (logits.argmax(-1) == batch.packed_targets()).cpu()
            first = F.log_softmax(logits[:, 0].float(), dim=-1).cpu() if first_distribution else None
            for b in range(lp.shape[0]):
                keep = valid[b].cpu()
                out.append(TokenScores(lp[b][keep], hit[b][keep], None if first is None else first[b]))
        return out

    def _score_shared(
        self,
        prompts: Sequence[str],
        continuations: Sequence[str | list[int]],
        batch_size: int,
        first_distribution: bool,
    ) -> list[TokenScores]:
        """:meth:`score_tokens` for a decoder-only model. Distinct prompts go through in batches of about
        ``batch_size`` continuations (sorted by length, left-padded with explicit position ids, as
        :meth:`generate_ids`); the last prompt position gives each continuation's first token, and one pass of
        every continuation but its last token, over the prompt's key/value cache repeated per continuation,
        gives the rest. A probe's answer and contrast share their prompt: its tokens are paid for once."""
        c_ids = [list(c) if isinstance(c, list) else self.encode(c, special=False) for c in continuations]
        for c, ids in zip(continuations, c_ids, strict=True):
            if not ids:
                raise ValidationError(f"continuation {c!r} tokenizes to nothing")
        p_ids = {p: self.encode(p) for p in dict.fromkeys(prompts)}
        for p, c in zip(prompts, c_ids, strict=True):
            self._check_pair(p, len(p_ids[p]) + len(c))
        pairs_of: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            pairs_of.setdefault(p, []).append(i)
        order = sorted(pairs_of, key=lambda p: len(p_ids[p]))
        out: list[TokenScores | None] = [None] * len(prompts)
        start = 0
        while start < len(order):
            end, n_pairs = start, 0
            while end < len(order) and (end == start or n_pairs + len(pairs_of[order[end]]) <= batch_size):
                n_pairs += len(pairs_of[order[end]])
                end += 1
            group = order[start:end]
            pairs = [i for p in group for i in pairs_of[p]]
            rows = [r for r, p in enumerate(group) for _ in pairs_of[p]]
            for i, scores in zip(
                pairs,
                self._score_group([p_ids[p] for p in group], rows, [c_ids[i] for i in pairs], first_distribution),
                strict=True,
            ):
                out[i] = scores
            start = end
        return cast(list[TokenScores], out)

    def _score_group(
        self, p_ids: list[list[int]], rows: list[int], c_ids: list[list[int]], first_distribution: bool
    ) -> list[TokenScores]:
        """Continuation ``j`` (token ids ``c_ids[j]``) after prompt ``rows[j]`` of ``p_ids``, for
        :meth:`_score_shared`."""
        ids, mask = self.pad(p_ids, left=True)
        head = get_module(self.model, self.adapter.head)

        def last_only(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (args[0][:, -1:], *args[1:])

        with hooks([(head, "forward_pre", last_only)]):
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True
            )
        index = torch.tensor(rows, device=self.device)
        first = F.log_softmax(out.logits[:, -1].float(), dim=-1).index_select(0, index)  # [n, V]
        targets, valid = self.pad(c_ids)
        logp = torch.empty(targets.shape, device=self.device)
        hit = torch.empty(targets.shape, dtype=torch.bool, device=self.device)
        logp[:, 0] = first.gather(1, targets[:, :1]).squeeze(1)
        hit[:, 0] = first.argmax(-1) == targets[:, 0]
        if targets.shape[1] > 1:
            cache = out[CACHE_KEY]
            cache.reorder_cache(index)
            prompt_mask = mask.index_select(0, index)
            steps, step_mask = targets[:, :-1], valid[:, :-1]
            rest = self.model(
                input_ids=steps,
                attention_mask=torch.cat([prompt_mask, step_mask], dim=1),
                position_ids=prompt_mask.sum(-1, keepdim=True) + torch.arange(steps.shape[1], device=self.device),
                use_cache=True,
                **{CACHE_KEY: cache},
            )
            lp = F.log_softmax(rest.logits.float(), dim=-1)
            logp[:, 1:] = lp.gather(2, targets[:, 1:].unsqueeze(-1)).squeeze(-1)
            hit[:, 1:] = lp.argmax(-1) == targets[:, 1:]
        logp, hit, keep = logp.cpu(), hit.cpu(), valid.bool().cpu()
        dist = first.cpu() if first_distribution else None
        return [
            TokenScores(logp[j][keep[j]], hit[j][keep[j]], None if dist is None else dist[j]) for j in range(len(rows))
        ]

    @torch.no_grad()
    def label_logprobs_after_prefix(
        self, prefix: str, suffixes: Sequence[str | list[int]], label_ids: Sequence[int], *, batch_size: int = 16
    ) -> torch.Tensor:
        """Log-probabilities of ``label_ids`` as the next token after ``prefix + suffix``, ``[len(suffixes),
        len(label_ids)]`` on the CPU.

        The shared ``prefix`` (a few-shot prompt) runs once; its key/value cache is reused by every batch of
        suffixes, which then only pay for their own tokens. Suffixes (text or token ids) are tokenized on their
        own, after the prefix's tokens. Encoder-decoder models have no such cache and score the full prompts.
        """
        labels = torch.tensor(list(label_ids))
        texts = [s if isinstance(s, str) else self.tokenizer.decode(s) for s in suffixes]
        if self.is_encoder_decoder:
            return self.next_token_logprobs([prefix + s for s in texts], batch_size=batch_size)[:, labels]
        prefix_ids = self.encode(prefix)
        suffix_ids = [list(s) if isinstance(s, list) else self.encode(s, special=False) for s in suffixes]
        longest = len(prefix_ids) + max((len(s) for s in suffix_ids), default=0)
        if longest > self.max_length:
            raise ValidationError(f"few-shot prompt of {longest} tokens is longer than {self.name} allows")
        cache = self.model(input_ids=torch.tensor([prefix_ids], device=self.device), use_cache=True)[CACHE_KEY]
        n_prefix = len(prefix_ids)
        rows: list[torch.Tensor] = []
        for i in range(0, len(suffix_ids), batch_size):
            chunk = suffix_ids[i : i + batch_size]
            ids, mask = self.pad(chunk)
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(chunk))
            full_mask = torch.cat([torch.ones((len(chunk), n_prefix), dtype=mask.dtype, device=self.device), mask], 1)
            positions = n_prefix + torch.arange(ids.shape[1], device=self.device).expand(len(chunk), -1)
            last = (mask.sum(1) - 1).clamp(min=0).unsqueeze(1)
            logits = self.logits_at(
                {
                    "input_ids": ids,
                    "attention_mask": full_mask,
                    "position_ids": positions,
                    CACHE_KEY: past,
                    "use_cache": True,
                },
                last,
            )[:, 0]
            rows.append(F.log_softmax(logits.float(), dim=-1)[:, labels.to(self.device)].cpu())
        return torch.cat(rows)

    @torch.no_grad()
    def next_token_logprobs(self, prompts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """Log-distribution over the next token after each prompt, shape ``[len(prompts), vocab]`` (CPU)."""
        rows: list[torch.Tensor] = []
        for i in range(0, len(prompts), batch_size):
            chunk = [self.encode(p) for p in prompts[i : i + batch_size]]
            ids, mask = self.pad(chunk)
            if self.is_encoder_decoder:
                start = torch.full((len(chunk), 1), int(self.config.decoder_start_token_id), device=self.device)
                logits = self.model(input_ids=ids, attention_mask=mask, decoder_input_ids=start).logits[:, 0]
            else:  # right-padded: each prompt's last token; the head runs there only
                logits = self.logits_at({"input_ids": ids, "attention_mask": mask}, (mask.sum(1) - 1)[:, None])[:, 0]
            rows.append(F.log_softmax(logits.float(), dim=-1).cpu())
        return torch.cat(rows)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 16,
        *,
        sample: bool = False,
        top_k: int = 0,
        generator: torch.Generator | None = None,
        stop_at_newline: bool = False,
    ) -> list[str]:
        """Greedy (default) or sampled continuations of each prompt, without the prompt.

        Sampling draws from ``generator`` (a CPU ``torch.Generator``), never from the global RNG, so that a
        seeded generator reproduces the same text.
        """
        new = self.generate_ids(
            prompts,
            max_new_tokens,
            sample=sample,
            top_k=top_k,
            generator=generator,
            stop_at_newline=stop_at_newline,
        )
        texts = [self.tokenizer.decode(n, skip_special_tokens=True) for n in new]
        return [t.split("\n")[0] if stop_at_newline else t for t in texts]

    @torch.no_grad()
    def generate_ids(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 16,
        *,
        sample: bool = False,
        top_k: int = 0,
        generator: torch.Generator | None = None,
        stop_at_newline: bool = False,
    ) -> list[list[int]]:
        """Like :meth:`generate`, the new token ids (without the end-of-sequence token)."""
        if sample and generator is None:
            raise ValueError("sampling needs an explicit torch.Generator (seeded) for reproducibility")
        eos = self.tokenizer.eos_token_id
        seqs = [self.encode(p) for p in prompts]
        new: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        past = None
        ids, mask = self.pad(seqs, left=True)
        enc_out = None
        dec = None
        if self.is_encoder_decoder:
            enc_out = self.model.get_encoder()(input_ids=ids, attention_mask=mask)  # type: ignore[operator]
            dec = torch.full((len(prompts), 1), int(self.config.decoder_start_token_id), device=self.device)
        step_ids = ids
        for _ in range(max_new_tokens):
            if self.is_encoder_decoder:
                assert dec is not None
                out = self.model(encoder_outputs=enc_out, attention_mask=mask, decoder_input_ids=dec, use_cache=False)
            else:
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                out = self.model(
                    input_ids=step_ids,
                    attention_mask=mask,
                    position_ids=pos[:, -step_ids.shape[1] :],
                    use_cache=True,
                    **{CACHE_KEY: past},
                )
                past = out[CACHE_KEY]
            logits = out.logits[:, -1].float()
            nxt = self._choose(logits, sample=sample, top_k=top_k, generator=generator)
            for b, t in enumerate(nxt.tolist()):
                if done[b]:
                    continue
                if t == eos:
                    done[b] = True
                    continue
                new[b].append(t)
                if stop_at_newline and "\n" in self.tokenizer.decode([t]):
                    done[b] = True
            if all(done):
                break
            step_ids = nxt.unsqueeze(1).to(self.device)
            if self.is_encoder_decoder:
                assert dec is not None
                dec = torch.cat([dec, step_ids], dim=1)
            else:
                mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
        return new

    def greedy_answers(self, prompts: Sequence[str], lengths: Sequence[int]) -> list[list[int]]:
        """The greedy continuation of each prompt, ``lengths[i]`` tokens of it (fewer where the model ends the
        text; the end-of-sequence token when it answers nothing): what a probe's drawdown compares."""
        ids = self.generate_ids(prompts, max(lengths))
        eos = int(self.tokenizer.eos_token_id)
        return [seq[:n] or [eos] for n, seq in zip(lengths, ids, strict=True)]

    @staticmethod
    def _choose(logits: torch.Tensor, *, sample: bool, top_k: int, generator: torch.Generator | None) -> torch.Tensor:
        if not sample:
            return logits.argmax(-1).cpu()
        logits = logits.cpu()
        if top_k > 0:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
