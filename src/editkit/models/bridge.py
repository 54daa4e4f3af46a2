"""A bridge between two tokenizers, for a model that answers on behalf of a model of another family.

SERAC's counterfactual model h is trained once and may serve base models it was not trained with (§3: h and
the scope classifier never read the base model's weights). Scores and generations are exchanged as token ids
of the *base* model, so h's side needs translating:

* token ids go through text: decode with one tokenizer, encode with the other (exact for any text both
  tokenizers can represent, which byte-level and byte-fallback tokenizers always can);
* a next-token distribution over h's vocabulary becomes one over the base vocabulary by matching tokens whose
  text is the same and is a single token on both sides; base tokens without such a match get the smallest
  probability h gives any matched token, and the result is renormalised. This is an approximation (a base token
  may stand for text h would split), used only where a distribution is read: KL drawdown of inputs routed to h
  and few-shot label words.
"""

from __future__ import annotations

from typing import Any, cast

import torch

from editkit.models.lm import LanguageModel


class TokenBridge:
    """Translates token ids and next-token distributions from ``target`` (the answering model) to ``source``
    (the model whose ids the caller speaks) and back."""

    def __init__(self, source: LanguageModel, target: LanguageModel) -> None:
        self.source, self.target = source, target
        self._map: torch.Tensor | None = None

    def to_target(self, ids: list[int]) -> list[int]:
        return self.target.encode(self.source.tokenizer.decode(ids), special=False)

    def to_source(self, ids: list[int]) -> list[int]:
        return self.source.encode(self.target.tokenizer.decode(ids, skip_special_tokens=True), special=False)

    def vocab_map(self) -> torch.Tensor:
        """For each id of the source's output layer, the target id with the same text, or -1."""
        if self._map is None:
            size = int(cast(Any, self.source.model).get_output_embeddings().weight.shape[0])  # logits' width
            known = min(size, len(self.source.tokenizer))
            texts = [self.source.tokenizer.decode([i]) for i in range(known)]
            encoded = self.target.tokenizer(texts, add_special_tokens=False)["input_ids"]
            special = set(self.source.tokenizer.all_special_ids)
            mapping = torch.full((size,), -1, dtype=torch.long)
            for i, (text, ids) in enumerate(zip(texts, encoded, strict=True)):
                if text and len(ids) == 1 and i not in special:
                    mapping[i] = ids[0]
            self._map = mapping
        return self._map

    def distribution_to_source(self, logprobs: torch.Tensor) -> torch.Tensor:
        """``[..., target vocab]`` log-probabilities -> ``[..., source vocab]`` log-probabilities (see module)."""
        mapping = self.vocab_map()
        matched = mapping >= 0
        picked = logprobs[..., mapping.clamp(min=0)]
        floor = picked[..., matched].min(dim=-1, keepdim=True).values
        out = torch.where(matched, picked, floor)
        return torch.log_softmax(out, dim=-1)
