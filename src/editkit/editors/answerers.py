"""The answering part h(z_e, x) of memory-based editors: what answers an input the memory routed to an edit.

* :class:`Answerer` is the interface: scores, next-token distributions and generations for ``(record, input)``
  pairs, in the base model's token ids. LU's :class:`~editkit.editors.lu.CachedLabel` implements it.
* :class:`PromptedAnswerer` answers with a language model that reads the edit in its prompt; a
  :data:`PromptBuilder` ``(record, input) -> str`` writes that prompt. :func:`template_prompt` is the one SERAC
  and RP use (``template.format(edit=z_e, input=x)``).

To add a kind of prompt (statement edits, SEPROG): write a builder ``(record, input) -> str`` beside
:func:`template_prompt` and give it to ``PromptedAnswerer(lm, builder)`` in the editor's ``build_answerer``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch

from editkit.errors import ConfigError
from editkit.memory.store import EditRecord
from editkit.models.bridge import TokenBridge
from editkit.models.lm import LanguageModel, TokenScores


class Answerer(ABC):
    """h(z_e, x): answers inputs routed to an edit. Each call gets ``(record, input text)`` pairs; token ids are
    those of the base model's tokenizer."""

    @abstractmethod
    def score_tokens(
        self,
        routed: Sequence[tuple[EditRecord, str]],
        continuations: Sequence[list[int]],
        *,
        batch_size: int,
        first_distribution: bool,
    ) -> list[TokenScores]: ...

    @abstractmethod
    def next_token_logprobs(self, routed: Sequence[tuple[EditRecord, str]], *, batch_size: int) -> torch.Tensor: ...

    @abstractmethod
    def generate_ids(
        self, routed: Sequence[tuple[EditRecord, str]], max_new_tokens: int, **kwargs: Any
    ) -> list[list[int]]: ...


PromptBuilder = Callable[[EditRecord, str], str]
"""Writes the prompt a :class:`PromptedAnswerer` reads for an input routed to an edit: ``(record, input) -> str``."""


def template_prompt(template: str) -> PromptBuilder:
    """The prompt ``template.format(edit=z_e, input=x)`` (z_e: the record's descriptor); the template must hold
    both ``{edit}`` and ``{input}``."""
    if "{edit}" not in template or "{input}" not in template:
        raise ConfigError(f"prompt template {template!r} needs both '{{edit}}' and '{{input}}'")

    def build(record: EditRecord, text: str) -> str:
        return template.format(edit=record.descriptor, input=text)

    return build


class PromptedAnswerer(Answerer):
    """Answers with a language model that reads the edit in its prompt, written by ``prompt(record, input)``
    (:func:`template_prompt` for a template).

    With the base model this is RP (retrieve-and-prompt, SERAC §5) and SERAC's untrained in-context
    counterfactual model; with a trained model it is SERAC's h_psi (eq. 3 trains it on the template's prompt). A
    ``bridge`` translates ids and distributions when ``lm`` has another tokenizer than the base model.
    """

    def __init__(self, lm: LanguageModel, prompt: PromptBuilder, *, bridge: TokenBridge | None = None) -> None:
        self.lm = lm
        self.prompt = prompt
        self.bridge = bridge  # when ``lm`` has another tokenizer than the base model

    def prompts(self, routed: Sequence[tuple[EditRecord, str]]) -> list[str]:
        return [self.prompt(r, x) for r, x in routed]

    def score_tokens(
        self,
        routed: Sequence[tuple[EditRecord, str]],
        continuations: Sequence[list[int]],
        *,
        batch_size: int,
        first_distribution: bool,
    ) -> list[TokenScores]:
        bridge = self.bridge
        ids = [bridge.to_target(c) for c in continuations] if bridge else list(continuations)
        scores = self.lm.score_tokens(
            self.prompts(routed), ids, batch_size=batch_size, first_distribution=first_distribution
        )
        if bridge and first_distribution:
            return [
                dataclasses.replace(s, first_distribution=bridge.distribution_to_source(s.first_distribution))
                for s in scores
                if s.first_distribution is not None
            ]
        return scores

    def next_token_logprobs(self, routed: Sequence[tuple[EditRecord, str]], *, batch_size: int) -> torch.Tensor:
        rows = self.lm.next_token_logprobs(self.prompts(routed), batch_size=batch_size)
        return self.bridge.distribution_to_source(rows) if self.bridge else rows

    def generate_ids(
        self, routed: Sequence[tuple[EditRecord, str]], max_new_tokens: int, **kwargs: Any
    ) -> list[list[int]]:
        out = self.lm.generate_ids(self.prompts(routed), max_new_tokens, **kwargs)
        return [self.bridge.to_source(seq) for seq in out] if self.bridge else out
