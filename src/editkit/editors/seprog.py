"""SEPROG: model editing by generated prefix prompts (semi-parametric prompt generation, seed paper 002, §3).

A memory editor: the base model's weights never change. Edits are records in SERAC's
:class:`~editkit.editors.memory.EditMemory` (the same journal, index and rollback); what differs is how an input
routed to the memory is answered. For an input x and the edits Z^e in memory:

* edit encoder (eq. 1): ``h_i^e = tanh(W_e MiniLM(z_i^e) + c)``: the frozen sentence encoder SERAC's raw scope
  uses (all-MiniLM-L6-v2) with a trained feed-forward top layer (the paper's appended layer; the encoder itself
  is not fine-tuned, so the index keys stay raw MiniLM embeddings);
* b(x): the frozen base model's own encoding of x: the mean of its last layer's hidden states over the prompt's
  tokens (leading document-start / BOS tokens left out); for an encoder-decoder base, the mean of its encoder's
  last hidden states (E_base(x) of the paper);
* edit selection (eq. 2): ``h(x) = sum_i a_i h_i^e``, ``a = softmax(h^e . W_att LN(b(x)) / sqrt(d_h))`` over
  the ``candidates`` nearest edits the memory's index returns for x (raw MiniLM distance; with
  ``candidates`` at least the number of edits it attends over all of them);
* edit classifier (eq. 3): ``e(x) = sigmoid(NN_e([h(x); LN(b(x))]))``, a two-layer network;
* prompt decoder (eq. 4): ``NN_prompt(h(x))``, ``p x d`` embeddings, inserted before the input's token
  embeddings (after its leading document-start / BOS tokens) of the frozen decoder-only model, or before the
  decoder's input embeddings of an encoder-decoder model (the paper's decoder prefix). The base model then
  answers with its own knowledge and the prefix.

Parts trained with ``reads: descriptor`` (ours, not the paper's) let the base model also read the most attended
edit's descriptor after the prefix, through a template (``"{edit}\n{input}"``): eq. 4's single pooled vector must
otherwise spell an unseen answer through p soft tokens, which a 135M base model trained on a CPU did not learn
(docs/benchmarks.md); with the words in its context the prefix has to teach the model to use them, and the base
model still adds its own knowledge (the paper's point against SERAC's copying counterfactual model). Parts trained
with ``pair_features`` give NN_e the product of h(x) and the attention query as well, and parts trained with
``input_features`` the product of h(x) and the input through the edit encoder (see
:meth:`PromptGenerator.in_scope_logit`). ``index_weight`` (ours; 5 by default, 0 for eq. 2 alone) adds
``-index_weight`` times each candidate's squared distance in the index (raw MiniLM) to eq. 2's logits, for parts of
either kind: measured on SmolLM2, b(x) alone picked the right
one of 64 edits for 40% of zsRE questions where the index's nearest was right for all of them.

An input is answered with a prefix when e(x) reaches ``threshold`` (0.5, the paper's rule), else by the base
model untouched. With ``router: serac`` (ours) SERAC's trained embedding scope classifier routes instead of e(x)
and eq. 2: the memory's index is that classifier's, an input goes to the edit it scores highest when that score
reaches ``threshold``, and h(x) is that edit's key h_i^e; the prefix and the words read are as above. It
separates the two halves of the method: measured on SmolLM2, the prefixed base model answered 95% of
CounterFact's in-scope inputs when given their own edit, and e(x) routed 44% of them there (docs/benchmarks.md).

Ablations: ``select: false`` ignores e(x) at inference (SP-NOSELECT, the prefix always
injected); parts trained with ``classifier: false`` have no NN_e and always inject (SP-NOCLASSIFIER); parts trained
with ``finetune_layers: N`` carry the base model's top N blocks fine-tuned with L_pg beside the generator
(SP-FINETUNE: "generated prefixes from SEPROG and fine-tune the base model", §6.3), and a copy of the base model
holding them answers every input, prefixed or not, while b(x) stays the frozen model's as in training. With an
empty memory every input is the answering model's. ``explain`` names the most attended edit and e(x).

Descriptors longer than the encoder's window (128 tokens) are truncated to it for the key, as SERAC's scope
does. The trained part (``prompter``, :mod:`editkit.training.seprog`) is verified for the base model: parts
trained for another model are refused naming both. Parts for SmolLM2-135M ship in the package
(``editkit/artifacts/seprog``, ``editkit pack --int8`` of ``benchmarks/configs/train_seprog_reads.yaml``'s).
"""

from __future__ import annotations

import copy
import math
import threading
import weakref
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from editkit.editors.answerers import Answerer
from editkit.editors.base import Capabilities, EditorConfig, register
from editkit.editors.memory import EditMemory, MemoryConfig, MemoryEditor, RoutedModel, ScopeModel
from editkit.editors.scope import EmbedScope
from editkit.edits import EditRequest
from editkit.errors import ConfigError, ValidationError
from editkit.memory.store import EditRecord
from editkit.models.lm import CACHE_KEY, LanguageModel, TokenScores
from editkit.progress import progress_bar
from editkit.trained import find, load_tensors, part_fingerprint, read_manifest, verify

PART = "prompter"
ROUTER_PART = "scope-embed"  # router: serac reads SERAC's trained embedding scope classifier
FINETUNED = "finetuned"  # SP-FINETUNE: the base model's fine-tuned blocks, trained beside the prompter


# --------------------------------------------------------------------------- the trained modules
class PromptGenerator(nn.Module):
    """E_edit's top layer, W_att, NN_e and NN_prompt. ``spec`` (kept in the part's ``part.json``) gives the
    sizes: ``enc_dim`` (MiniLM), ``base_dim`` (b(x)), ``hidden`` (d_h), ``prefix_len`` (p), ``embed_dim`` (d),
    ``classifier`` and ``scale`` (the RMS of the base model's token embeddings, the prefix's scale)."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__()
        self.spec = dict(spec)
        hidden, base_dim = int(spec["hidden"]), int(spec["base_dim"])
        self.prefix_len, self.embed_dim = int(spec["prefix_len"]), int(spec["embed_dim"])
        self.pair_features = bool(spec.get("pair_features", False))
        self.input_features = bool(spec.get("input_features", False))
        self.template: str | None = spec.get("template") if spec.get("reads", "vector") == "descriptor" else None
        self.edit_head = nn.Linear(int(spec["enc_dim"]), hidden)
        self.w_att = nn.Linear(base_dim, hidden, bias=False)
        width = hidden + base_dim + (hidden if self.pair_features else 0) + (hidden if self.input_features else 0)
        self.classifier = (
            nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1)) if spec["classifier"] else None
        )
        self.prompt = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, self.prefix_len * self.embed_dim)
        )
        self.scale = float(spec["scale"])

    def edit_keys(self, encoded: torch.Tensor) -> torch.Tensor:
        """h_i^e from the encoder's embeddings ``[..., enc_dim]`` (eq. 1)."""
        return torch.tanh(self.edit_head(encoded))

    def query(self, base: torch.Tensor) -> torch.Tensor:
        """``W_att LN(b(x))`` ``[B, d_h]``: what eq. 2 attends with."""
        return self.w_att(F.layer_norm(base, base.shape[-1:]))

    def select(
        self, base: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, prior: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 2: h(x) ``[B, d_h]`` and the attention ``[B, K]`` of b(x) ``[B, base_dim]`` over each row's
        candidate keys ``[B, K, d_h]`` (``mask`` False where a row has fewer candidates); ``prior`` ``[B, K]`` is
        added to the attention's logits."""
        logits = (keys @ self.query(base).unsqueeze(-1)).squeeze(-1) / math.sqrt(keys.shape[-1])
        if prior is not None:
            logits = logits + prior
        attn = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
        return (attn.unsqueeze(-1) * keys).sum(1), attn

    def in_scope_logit(self, h: torch.Tensor, base: torch.Tensor, encoded: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 3 before the sigmoid, ``[B]``: NN_e reads ``[h(x); LN(b(x))]``, and with ``pair_features`` also
        their product ``h(x) * W_att LN(b(x))`` (ours: how well the input matches its selected edit, which the
        concatenation leaves the two-layer network to find). Parts trained with ``input_features`` (ours) also read
        ``h(x) * E_edit(x)``: the input through the edit encoder (eq. 1 applied to ``encoded``, the sentence
        encoder's embedding of x ``[B, enc_dim]``), which puts the input and the edit in one space. Parts without
        a classifier have none."""
        if self.classifier is None:
            raise ValidationError("these SEPROG parts were trained without an edit classifier (SP-NOCLASSIFIER)")
        feats = [h, F.layer_norm(base, base.shape[-1:])]
        if self.pair_features:
            feats.append(h * self.query(base))
        if self.input_features:
            if encoded is None:
                raise ValidationError("these SEPROG parts read the sentence encoder's embedding of the input")
            feats.append(h * self.edit_keys(encoded))
        return self.classifier(torch.cat(feats, -1)).squeeze(-1)

    def read(self, descriptor: str, text: str) -> str:
        """What the base model reads after the prefix for an input routed to an edit: the input alone (eq. 4 as
        written), or with ``reads: descriptor`` the edit's descriptor before it, through ``template``."""
        return text if self.template is None else self.template.format(edit=descriptor, input=text)

    def prefix(self, h: torch.Tensor) -> torch.Tensor:
        """Eq. 4: ``[B, p, d]`` prefix embeddings."""
        return self.scale * self.prompt(h).view(-1, self.prefix_len, self.embed_dim)


# --------------------------------------------------------------------------- the frozen base model's side
def leading_tokens(lm: LanguageModel) -> int:
    """How many tokens every prompt of ``lm`` starts with (document-start prefix, BOS): the prefix goes after them."""
    return 0 if lm.is_encoder_decoder else len(lm.encode(""))


@torch.no_grad()
def base_encoding(
    lm: LanguageModel, texts: Sequence[str], batch_size: int = 16, *, progress: bool = False
) -> torch.Tensor:
    """b(x): mean of the last layer's hidden states over each prompt's tokens (the leading ones left out), or of
    the encoder's for an encoder-decoder model; ``[n, d]`` float32 on the CPU."""
    lead = leading_tokens(lm)
    rows: list[torch.Tensor] = []
    with progress_bar(len(texts), "b(x) of the inputs", progress) as bar:
        for i in range(0, len(texts), batch_size):
            seqs = [lm.encode(t) for t in texts[i : i + batch_size]]
            ids, mask = lm.pad(seqs)
            if lm.is_encoder_decoder:
                encoder = lm.model.get_encoder()  # type: ignore[operator]
                hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            else:
                hidden = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
                hidden = hidden.hidden_states[-1]
            keep = mask.clone()
            keep[:, :lead] = 0
            keep = torch.where(keep.sum(1, keepdim=True) > 0, keep, mask).unsqueeze(-1).to(hidden.dtype)
            rows.append(((hidden * keep).sum(1) / keep.sum(1)).float().cpu())
            bar.advance(len(seqs))
    return torch.cat(rows) if rows else torch.zeros((0, int(lm.config.hidden_size)))


def _with_prefix(lm: LanguageModel, rows: Sequence[Sequence[int]], prefix: torch.Tensor, lead: int) -> dict[str, Any]:
    """Right-padded token rows embedded, with ``prefix`` ``[B, p, d]`` inserted after the first ``lead``."""
    ids, mask = lm.pad(rows)
    emb = lm.model.get_input_embeddings()(ids)  # type: ignore[operator]
    p = prefix.to(emb.dtype)
    ones = torch.ones(p.shape[:2], dtype=mask.dtype, device=mask.device)
    return {
        "embeds": torch.cat([emb[:, :lead], p, emb[:, lead:]], 1),
        "mask": torch.cat([mask[:, :lead], ones, mask[:, lead:]], 1),
    }


def prefixed_logits(
    lm: LanguageModel,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    prefix: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Logits ``[B, P, V]`` of the frozen ``lm`` reading ``prefix`` before each prompt (prompt token ids, as
    :meth:`LanguageModel.encode` gives them) followed by its continuation tokens. ``positions[b, j]`` counts
    predictions: j-th position 0 predicts the continuation's first token, position ``len(continuation)`` the
    token after it. Differentiable in ``prefix``."""
    p = prefix.shape[1]
    if lm.is_encoder_decoder:
        enc_ids, enc_mask = lm.pad(prompts)
        start = int(lm.config.decoder_start_token_id)
        dec = _with_prefix(lm, [[start, *c] for c in continuations], prefix, 0)
        inputs = {
            "input_ids": enc_ids,
            "attention_mask": enc_mask,
            "decoder_inputs_embeds": dec["embeds"],
            "decoder_attention_mask": dec["mask"],
        }
        return lm.logits_at(inputs, positions.to(lm.device) + p)
    rows = [[*a, *c] for a, c in zip(prompts, continuations, strict=True)]
    full = _with_prefix(lm, rows, prefix, leading_tokens(lm))
    first = torch.tensor([len(a) - 1 for a in prompts], device=lm.device)[:, None]
    inputs = {"inputs_embeds": full["embeds"], "attention_mask": full["mask"]}
    return lm.logits_at(inputs, positions.to(lm.device) + first + p)


# --------------------------------------------------------------------------- scope and answerer
class PromptScope(ScopeModel):
    """The index preselects ``candidates`` edits by raw MiniLM distance; eq. 2 attends over them and eq. 3
    scores the input. The route's edit is the most attended one and its score e(x) (each other candidate gets
    e(x) scaled by its attention relative to the top one, so the memory's argmax picks the top one). h(x) of
    every input scored is kept for the answerer until the input is scored again (after a memory change)."""

    def __init__(
        self,
        lm: LanguageModel,
        net: PromptGenerator,
        index: EmbedScope,
        candidates: int,
        select: bool,
        index_weight: float = 0.0,
        router: EmbedScope | None = None,
    ) -> None:
        self.lm = lm
        self.net = net.eval()
        self.index = index  # raw encoder: the edit keys' input, and the index unless a router is given
        self.router = router
        self.candidates = candidates
        self.select = select
        self.index_weight = index_weight
        self.memory: EditMemory | None = None  # attached by the editor once its memory exists
        self._keys: dict[int, torch.Tensor] = {}
        self._context: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    @property
    def _searched(self) -> EmbedScope:
        """Whose vectors the memory's index holds: the router's, else the raw encoder's."""
        return self.router or self.index

    @property
    def space(self) -> str:
        return self._searched.space  # raw MiniLM embeddings: the trained top layer applies at scoring

    @property
    def dim(self) -> int:
        return self._searched.dim

    def edit_vectors(self, requests: Sequence[EditRequest]) -> np.ndarray:
        return self._searched.edit_vectors(requests)

    def query_vectors(self, texts: Sequence[str]) -> np.ndarray:
        return self._searched.query_vectors(texts)

    def _edit_keys(self, records: Sequence[EditRecord]) -> torch.Tensor:
        missing = list({r.id: r for r in records if r.id not in self._keys}.values())
        if missing:
            encoded = self.index.encoder.embed([r.descriptor for r in missing])
            for r, key in zip(missing, self.net.edit_keys(encoded), strict=True):
                self._keys[r.id] = key
        return torch.stack([self._keys[r.id] for r in records])

    @torch.no_grad()
    def scores(
        self, texts: Sequence[str], candidates: Sequence[Sequence[EditRecord]], sqdist: np.ndarray
    ) -> np.ndarray:
        rows = [i for i, row in enumerate(candidates) if row]
        if self.router is not None and rows:
            return self._routed_scores(texts, candidates, sqdist, rows)
        width = sqdist.shape[1]
        keys = torch.zeros((len(texts), width, int(self.net.spec["hidden"])))
        mask = torch.zeros((len(texts), width), dtype=torch.bool)
        for i, row in enumerate(candidates):
            if row:
                keys[i, : len(row)] = self._edit_keys(row)
                mask[i, : len(row)] = True
        out = np.zeros(sqdist.shape, dtype=np.float32)
        if not rows:
            return out
        base = base_encoding(self.lm, [texts[i] for i in rows])
        prior = None
        if self.index_weight:
            dist = torch.from_numpy(np.where(mask.numpy(), sqdist, 0.0).astype(np.float32))
            prior = -self.index_weight * dist[rows]
        h, attn = self.net.select(base, keys[rows], mask[rows], prior)
        if self.select and self.net.classifier is not None:
            encoded = self.index.encoder.embed([texts[i] for i in rows]) if self.net.input_features else None
            e = torch.sigmoid(self.net.in_scope_logit(h, base, encoded))
        else:
            e = torch.ones(len(rows))
        rel = attn / attn.max(-1, keepdim=True).values
        out[rows] = (e[:, None] * rel).numpy()
        with self._lock:
            for i, hi in zip(rows, h, strict=True):
                self._context[texts[i]] = hi
        return out

    def _routed_scores(
        self, texts: Sequence[str], candidates: Sequence[Sequence[EditRecord]], sqdist: np.ndarray, rows: list[int]
    ) -> np.ndarray:
        """The router's probabilities; h(x) of each input is the key of the edit it scores highest."""
        assert self.router is not None
        out = self.router.scores(texts, candidates, sqdist)
        best = [candidates[i][int(np.argmax(out[i, : len(candidates[i])]))] for i in rows]
        with self._lock:
            for i, hi in zip(rows, self._edit_keys(best), strict=True):
                self._context[texts[i]] = hi
        return out

    def context(self, texts: Sequence[str]) -> torch.Tensor:
        """h(x) ``[n, d_h]`` of each input: as last scored, else scored now against the memory (an input the
        memory did not route itself, e.g. a few-shot prompt around a routed example)."""
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._context]
        if missing:
            if self.memory is None:
                raise ValidationError("this SEPROG scope has no memory attached")
            self.memory.lookup(missing)
        with self._lock:
            return torch.stack([self._context[t] for t in texts])


class PrefixAnswerer(Answerer):
    """Answers routed inputs with the frozen base model reading the generated prefix NN_prompt(h(x))."""

    def __init__(self, lm: LanguageModel, scope: PromptScope) -> None:
        self.lm = lm
        self.scope = scope

    def _logits(
        self,
        routed: Sequence[tuple[EditRecord, str]],
        continuations: Sequence[Sequence[int]],
        positions: torch.Tensor,
    ) -> torch.Tensor:
        net = self.scope.net
        prefix = net.prefix(self.scope.context([x for _, x in routed]))
        prompts = [self.lm.encode(net.read(r.descriptor, x)) for r, x in routed]
        return prefixed_logits(self.lm, prompts, continuations, prefix, positions)

    @torch.no_grad()
    def score_tokens(
        self,
        routed: Sequence[tuple[EditRecord, str]],
        continuations: Sequence[list[int]],
        *,
        batch_size: int,
        first_distribution: bool,
    ) -> list[TokenScores]:
        out: list[TokenScores] = []
        for i in range(0, len(routed), batch_size):
            chunk = routed[i : i + batch_size]
            conts = continuations[i : i + batch_size]
            width = max(len(c) for c in conts)
            lengths = torch.tensor([len(c) for c in conts])
            positions = torch.minimum(torch.arange(width)[None, :], lengths[:, None] - 1)  # clamped: unread
            logits = self._logits(chunk, conts, positions).float()
            logp = F.log_softmax(logits, dim=-1).cpu()
            for b, c in enumerate(conts):
                target = torch.tensor(c)
                row = logp[b, : len(c)]
                lp = row.gather(-1, target[:, None]).squeeze(-1)
                out.append(TokenScores(lp, row.argmax(-1) == target, logp[b, 0] if first_distribution else None))
        return out

    @torch.no_grad()
    def next_token_logprobs(self, routed: Sequence[tuple[EditRecord, str]], *, batch_size: int) -> torch.Tensor:
        rows = []
        for i in range(0, len(routed), batch_size):
            chunk = routed[i : i + batch_size]
            logits = self._logits(chunk, [[] for _ in chunk], torch.zeros((len(chunk), 1), dtype=torch.long))
            rows.append(F.log_softmax(logits[:, 0].float(), dim=-1).cpu())
        return torch.cat(rows)

    @torch.no_grad()
    def generate_ids(
        self, routed: Sequence[tuple[EditRecord, str]], max_new_tokens: int, **kwargs: Any
    ) -> list[list[int]]:
        """Greedy decoding. A decoder-only model reads the prefix and the prompt once and then one token a step
        (its key / value cache); an encoder-decoder model's decoder reads the prefix and every token so far at
        each step."""
        if kwargs.get("sample"):
            raise ValidationError("SEPROG generates greedily; sampling is not supported")
        stop_at_newline = bool(kwargs.get("stop_at_newline"))
        new: list[list[int]] = [[] for _ in routed]
        live = list(range(len(routed)))
        eos = self.lm.tokenizer.eos_token_id
        steps = None if self.lm.is_encoder_decoder or not routed else self._cached_steps(routed)
        cached = next(steps) if steps is not None else []
        for step in range(max_new_tokens):
            if not live:
                break
            if steps is None:
                pos = torch.tensor([[len(new[i])] for i in live])
                logits = self._logits([routed[i] for i in live], [new[i] for i in live], pos)[:, 0]
                chosen = dict(zip(live, logits.argmax(-1).tolist(), strict=True))
            else:
                chosen = {i: cached[i] for i in live}
            still = []
            for i in live:
                if chosen[i] == eos:
                    continue
                new[i].append(chosen[i])
                if not (stop_at_newline and "\n" in self.lm.tokenizer.decode([chosen[i]])):
                    still.append(i)
            live = still
            if steps is not None and live and step + 1 < max_new_tokens:
                cached = steps.send([new[i][-1] if new[i] else eos for i in range(len(routed))])
        return new

    def _cached_steps(self, routed: Sequence[tuple[EditRecord, str]]) -> Generator[list[int], list[int], None]:
        """Greedy next tokens of a decoder-only model reading each routed input after its prefix: ``next`` reads
        the prompts (left-padded, the prefix after their leading tokens) in one pass; each ``send(tokens)`` (one
        per row, finished rows included) reads those against the key / value cache and gives the next ones."""
        net, lm = self.scope.net, self.lm
        prefix = net.prefix(self.scope.context([x for _, x in routed]))
        rows = [lm.encode(net.read(r.descriptor, x)) for r, x in routed]
        lead = leading_tokens(lm)
        embed: Any = lm.model.get_input_embeddings()  # type: ignore[operator]  # the model's own: Gemma's scales
        tokens = [embed(torch.tensor(r, device=lm.device)) for r in rows]
        seqs = [torch.cat([t[:lead], prefix[b].to(t.dtype), t[lead:]]) for b, t in enumerate(tokens)]
        width = max(len(q) for q in seqs)
        embeds = torch.zeros((len(seqs), width, seqs[0].shape[-1]), dtype=seqs[0].dtype, device=lm.device)
        mask = torch.zeros((len(seqs), width), dtype=torch.long, device=lm.device)
        for b, q in enumerate(seqs):
            embeds[b, width - len(q) :] = q
            mask[b, width - len(q) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True)
        while True:
            fed = yield out.logits[:, -1].argmax(-1).tolist()
            step = torch.tensor(fed, device=lm.device)[:, None]
            mask = torch.cat([mask, torch.ones_like(step)], dim=1)
            pos = (mask.cumsum(-1) - 1)[:, -1:]
            out = lm.model(
                input_ids=step, attention_mask=mask, position_ids=pos, use_cache=True, **{CACHE_KEY: out[CACHE_KEY]}
            )


def finetuned_copy(lm: LanguageModel, tensors: Mapping[str, torch.Tensor]) -> LanguageModel:
    """``lm`` with the parameters named in ``tensors`` replaced by their values, as a new model that shares
    every other parameter with ``lm`` (which is left as it is)."""
    params = dict(lm.model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ValidationError(f"fine-tuned weights name parameters {lm.name} does not have: {', '.join(unknown[:3])}")
    for name, t in tensors.items():
        if t.shape != params[name].shape:
            want = tuple(params[name].shape)
            raise ValidationError(f"fine-tuned {name} has shape {tuple(t.shape)}; {lm.name}'s has {want}")
    shared = {id(p): p for name, p in params.items() if name not in tensors}
    model = copy.deepcopy(lm.model, shared)
    copies = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in tensors.items():
            copies[name].copy_(t.to(copies[name].dtype))
    return LanguageModel(model, lm.tokenizer, name=lm.name, edit_layer=lm._edit_layer, prefix=lm.prefix)


# --------------------------------------------------------------------------- the editor
@dataclass
class SEPROGConfig(MemoryConfig):
    artifacts: str | None = field(
        default=None,
        metadata={
            "help": "folder of trained parts (editkit train seprog); may contain {model}; default: the parts "
            "packaged for SmolLM2-135M (int8, 3 MB)"
        },
    )
    encoder: str = field(default="minilm-l6", metadata={"help": "sentence encoder the edit keys come from"})
    candidates: int = field(
        default=16, metadata={"help": "edits the index preselects per input before the cross-attention (eq. 2)"}
    )
    select: bool = field(
        default=True, metadata={"help": "prefix only when e(x) >= threshold; false: always (SP-NOSELECT)"}
    )
    router: Literal["seprog", "serac"] = field(
        default="seprog",
        metadata={
            "help": "what routes inputs to edits: seprog (e(x) and eq. 2, the paper) or serac (SERAC's trained "
            "embedding scope classifier from router_artifacts; h(x) is the routed edit's key)"
        },
    )
    router_artifacts: str | None = field(
        default=None,
        metadata={"help": "with router: serac, a folder of SERAC parts with scope-embed (default: the packaged ones)"},
    )
    index_weight: float = field(
        default=5.0,
        metadata={
            "help": "adds -index_weight x the index's squared distance (raw encoder) of each candidate to eq. 2's "
            "attention logits (measured best on SmolLM2: docs/benchmarks.md); 0: eq. 2 alone, as the paper"
        },
    )

    def validate(self) -> None:
        super().validate()
        if self.candidates < 1:
            raise ConfigError(f"{type(self).__name__}: candidates must be at least 1")
        if self.index_weight < 0:
            raise ConfigError(f"{type(self).__name__}: index_weight must be >= 0")
        if self.router == "serac" and not self.select:
            raise ConfigError(f"{type(self).__name__}: router: serac replaces e(x), which select: false ignores")
        if self.router_artifacts is not None and self.router != "serac":
            raise ConfigError(f"{type(self).__name__}: router_artifacts is read only with router: serac")


@register
class SEPROG(MemoryEditor):
    name = "seprog"
    config_cls: ClassVar[type[EditorConfig]] = SEPROGConfig
    # statements too: the edit encoder embeds a statement as it embeds [x_e ; y_e]
    capabilities: ClassVar[Capabilities] = Capabilities(storage="memory", trained=True, batch=True, free_form=True)
    config: SEPROGConfig

    def __init__(self, config: EditorConfig | None = None) -> None:
        super().__init__(config)
        self._scopes: weakref.WeakKeyDictionary[LanguageModel, PromptScope] = weakref.WeakKeyDictionary()
        self._fingerprints: dict[str, str] = {}  # "part:base model" -> fingerprint of the part loaded for it
        # base model -> its fine-tuned copy (SP-FINETUNE parts), or None where the parts have none
        self._answering: weakref.WeakKeyDictionary[LanguageModel, LanguageModel | None] = weakref.WeakKeyDictionary()

    def artifacts(self, lm: LanguageModel) -> Path:
        """The parts' folder for ``lm``: ``artifacts`` (``{model}`` replaced), else the packaged parts when
        they were trained for it, else the user cache's (:func:`find`)."""
        return find("seprog", self.config.artifacts, model=lm.name)

    def provenance(self) -> dict[str, str]:
        return dict(sorted(self._fingerprints.items()))

    def load_parts(self, lm: LanguageModel) -> PromptGenerator:
        """The trained prompt generator for ``lm`` (verified: parts trained for another model are refused)."""
        folder = self.artifacts(lm)
        manifest = verify(folder, [PART], base_model=lm.name)
        spec = manifest["parts"][PART]["spec"]
        if spec.get("encoder", self.config.encoder) != self.config.encoder:
            raise ValidationError(
                f"{folder / PART} was trained on encoder {spec['encoder']}, not {self.config.encoder}"
            )
        net = PromptGenerator(spec)
        net.load_state_dict(load_tensors(folder / PART))
        self._fingerprints[f"{PART}:{lm.name}"] = part_fingerprint(folder / PART)
        return net.requires_grad_(False).eval()

    def answering_model(self, lm: LanguageModel) -> LanguageModel:
        """``lm``, or for parts trained with the base model's top blocks fine-tuned (SP-FINETUNE) a copy of ``lm``
        holding those blocks, which then answers every input (prefixed or not); b(x) stays ``lm``'s, as in
        training. ``lm`` itself is never changed."""
        if lm not in self._answering:
            folder = self.artifacts(lm)  # its prompter part was verified when the scope loaded it
            tuned = None
            if FINETUNED in read_manifest(folder).get("parts", {}):
                verify(folder, [FINETUNED], base_model=lm.name)
                tuned = finetuned_copy(lm, load_tensors(folder / FINETUNED))
                self._fingerprints[f"{FINETUNED}:{lm.name}"] = part_fingerprint(folder / FINETUNED)
            self._answering[lm] = tuned
        return self._answering[lm] or lm

    def build_scope(self, lm: LanguageModel) -> ScopeModel:
        cfg = self.config
        router = None
        if cfg.router == "serac":
            folder = find("serac", cfg.router_artifacts)
            verify(folder, [ROUTER_PART])
            router = EmbedScope.load(folder / ROUTER_PART, cfg.encoder)
            self._fingerprints[f"router:{ROUTER_PART}"] = part_fingerprint(folder / ROUTER_PART)
        scope = PromptScope(
            lm,
            self.load_parts(lm),
            EmbedScope.untrained(cfg.encoder),
            cfg.candidates,
            cfg.select,
            cfg.index_weight,
            router,
        )
        self._scopes[lm] = scope
        return scope

    def build_answerer(self, lm: LanguageModel) -> Answerer:
        return PrefixAnswerer(self.answering_model(lm), self._scopes[lm])

    def routed(self, lm: LanguageModel) -> RoutedModel:
        model = super().routed(lm)
        scope = model.memory.scope
        if isinstance(scope, PromptScope) and scope.memory is None:
            scope.memory = model.memory
        return model
