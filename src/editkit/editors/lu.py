"""LU, cache + lookup (SERAC appendix B; Mitchell et al. 2021): a training-free memory baseline.

An edit ``[x_e; y_e]`` is stored as the base model's mean last hidden state over the tokens of ``x_e``. An
input whose mean last hidden state lies within Euclidean distance ``delta`` of its nearest stored edit gets
that edit's label ``y_e``; any other input gets the base model's prediction.

The cache answers with a label, not a distribution. To be scored like a model it is read as one: at each
position of the label it puts probability ``1 - eps`` on the label's next token (and on end-of-sequence after
the label), spreading ``eps`` over the rest of the vocabulary; once a scored continuation leaves the label it
has no opinion (uniform). Greedy decoding then produces exactly the label.

LU refuses statements (``EditRequest.statement``; the shared one-line refusal of
:func:`~editkit.editors.base.check_edit_kinds`): its answer is the stored label ``y_e``, and a statement carries
none; its key, the base model's reading of ``x_e``, would be a sentence's rather than the inputs' it should catch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from editkit.editors.answerers import Answerer
from editkit.editors.base import EditorConfig, register
from editkit.editors.memory import MemoryConfig, MemoryEditor, ScopeModel
from editkit.edits import EditRequest
from editkit.errors import ConfigError
from editkit.memory.store import EditRecord
from editkit.models.lm import LanguageModel, TokenScores


@dataclass
class LUConfig(MemoryConfig):
    delta: float = field(
        default=14.0,
        metadata={
            "help": "distance (mean last hidden states) below which an input takes an edit's label; scale depends "
            "on the model (the paper: 2.75 for T5-large). 14 on SmolLM2-135M: 90% of zsRE train rephrases lie "
            "closer to their edit, 90% of unrelated questions farther from every edit (docs/benchmarks.md)"
        },
    )
    eps: float = field(default=1e-6, metadata={"help": "probability the cache leaves to tokens other than its label"})

    def validate(self) -> None:
        super().validate()
        if self.delta <= 0 or not 0 < self.eps < 1:
            raise ConfigError("LU: delta must be > 0 and eps in (0, 1)")


class HiddenStateLookup(ScopeModel):
    """Scope of LU: 1 when the input's mean last hidden state is within ``delta`` of the edit's, else 0."""

    def __init__(self, lm: LanguageModel, delta: float, *, batch_size: int = 16) -> None:
        self.lm = lm
        self.delta = delta
        self.batch_size = batch_size

    @property
    def space(self) -> str:
        return f"lu-hidden:{self.lm.name}"

    @property
    def dim(self) -> int:
        return int(self.lm.config.get_text_config().hidden_size)

    @torch.no_grad()
    def _mean_states(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            ids, mask = self.lm.pad([self.lm.encode(t) for t in texts[i : i + self.batch_size]])
            if self.lm.is_encoder_decoder:
                encoder = self.lm.model.get_encoder()  # type: ignore[operator]
                hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            else:
                hidden = self.lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
            m = mask.unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * m).sum(1) / m.sum(1)).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def edit_vectors(self, requests: Sequence[EditRequest]) -> np.ndarray:
        return self._mean_states([r.text for r in requests])

    def query_vectors(self, texts: Sequence[str]) -> np.ndarray:
        return self._mean_states(texts)

    def scores(
        self, texts: Sequence[str], candidates: Sequence[Sequence[EditRecord]], sqdist: np.ndarray
    ) -> np.ndarray:
        return (np.sqrt(np.maximum(sqdist, 0.0)) < self.delta).astype(np.float32)


class CachedLabel(Answerer):
    """Answers with the stored label ``y_e`` (module docstring: how a label is read as a distribution)."""

    def __init__(self, lm: LanguageModel, eps: float) -> None:
        self.lm = lm
        self.vocab = int(lm.config.get_text_config().vocab_size)
        self.hit = math.log1p(-eps)
        self.miss = math.log(eps / (self.vocab - 1))
        self.uniform = -math.log(self.vocab)

    def _label(self, record: EditRecord) -> list[int]:
        return [*self.lm.encode(record.request.target_new, special=False), int(self.lm.tokenizer.eos_token_id)]

    def _distribution(self, token: int | None) -> torch.Tensor:
        if token is None:
            return torch.full((self.vocab,), self.uniform)
        row = torch.full((self.vocab,), self.miss)
        row[token] = self.hit
        return row

    def score_tokens(
        self,
        routed: Sequence[tuple[EditRecord, str]],
        continuations: Sequence[list[int]],
        *,
        batch_size: int,
        first_distribution: bool,
    ) -> list[TokenScores]:
        out = []
        for (record, _), cont in zip(routed, continuations, strict=True):
            label = self._label(record)
            logprobs, greedy, on_label = [], [], True
            for j, tok in enumerate(cont):
                if on_label and j < len(label):
                    logprobs.append(self.hit if tok == label[j] else self.miss)
                    greedy.append(tok == label[j])
                    on_label = tok == label[j]
                else:
                    logprobs.append(self.uniform)
                    greedy.append(False)
            first = self._distribution(label[0]) if first_distribution else None
            out.append(TokenScores(torch.tensor(logprobs), torch.tensor(greedy), first))
        return out

    def next_token_logprobs(self, routed: Sequence[tuple[EditRecord, str]], *, batch_size: int) -> torch.Tensor:
        return torch.stack([self._distribution(self._label(r)[0]) for r, _ in routed])

    def generate_ids(
        self, routed: Sequence[tuple[EditRecord, str]], max_new_tokens: int, **kwargs: Any
    ) -> list[list[int]]:
        return [self._label(r)[:-1][:max_new_tokens] for r, _ in routed]


@register
class LU(MemoryEditor):
    name = "lu"
    config_cls: ClassVar[type[EditorConfig]] = LUConfig
    config: LUConfig

    def build_scope(self, lm: LanguageModel) -> ScopeModel:
        return HiddenStateLookup(lm, self.config.delta)

    def build_answerer(self, lm: LanguageModel) -> Answerer:
        return CachedLabel(lm, self.config.eps)
