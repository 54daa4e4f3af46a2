"""SERAC's counterfactual model for edits with a wanted and an unwanted kind of answer (SERAC §5, ConvSent).

ConvSent edits are statements ``"TOPIC: X SENTIMENT: positive|negative"`` and every in-scope question has
responses of both sentiments (the probes' answers and contrasts, :mod:`editkit.data.formats.convsent`). SERAC
trains its counterfactual model on them with unlikelihood training (Li et al. 2020): maximise the log-likelihood
of the requested sentiment's responses and the log-unlikelihood ``log(1 - p)`` of the other's. Here:

* :func:`contrast_examples`: one :class:`ContrastExample` per in-scope probe that has a contrast, with the prompt
  ``template.format(edit=z_e, input=question)``, the probe's answers as ``wanted`` and its contrasts as
  ``unwanted``; a ConvSent statement also gives the same question under the other sentiment's statement with the
  two swapped (:func:`flipped`), so every training topic teaches both directions.
* :func:`unlikelihood` is the per-token term ``-log(1 - p(y_t | y_<t))`` (``p`` each token's probability under
  the model, as in Li et al.'s token-level unlikelihood; the probability of a whole response is ~0 and would
  give no gradient), computed stably from log-probabilities.
* :func:`contrast_loss`: for a batch of examples, ``responses`` wanted and ``responses`` unwanted responses drawn
  per example; the token mean of the wanted responses' NLL plus ``weight`` times the token mean of the unwanted
  responses' unlikelihood.

The SERAC trainer uses these with ``cf_loss: unlikelihood`` (:mod:`editkit.training.serac`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from editkit.data.formats.convsent import sentiment_of
from editkit.editors.memory import descriptor_of
from editkit.edits import EditCase, ProbeKind
from editkit.errors import ValidationError
from editkit.models.lm import LanguageModel

IN_SCOPE = (ProbeKind.EDIT, ProbeKind.REPHRASE, ProbeKind.HARD_IN)


@dataclass(frozen=True)
class ContrastExample:
    prompt: str
    wanted: tuple[str, ...]
    unwanted: tuple[str, ...]


def flipped(descriptor: str) -> str | None:
    """A ConvSent statement with the other sentiment (``"TOPIC: X SENTIMENT: negative"`` for ``positive``); None
    for any other descriptor."""
    sentiment = sentiment_of(descriptor)
    if sentiment is None:
        return None
    return descriptor[: -len(sentiment)] + ("negative" if sentiment == "positive" else "positive")


def contrast_examples(cases: Sequence[EditCase], template: str) -> list[ContrastExample]:
    """The in-scope probes with contrasts as examples (module docstring); a ConvSent statement's also flipped."""
    out = []
    for c in cases:
        descriptor = descriptor_of(c.request)
        other = flipped(descriptor)
        for p in c.of_kind(*IN_SCOPE):
            if p.contrast is None:
                continue
            out.append(ContrastExample(template.format(edit=descriptor, input=p.prompt), p.answers, p.contrasts))
            if other is not None:
                out.append(ContrastExample(template.format(edit=other, input=p.prompt), p.contrasts, p.answers))
    if not out:
        raise ValidationError("unlikelihood training needs in-scope probes with contrasts (ConvSent's responses)")
    return out


def unlikelihood(token_logprobs: torch.Tensor) -> torch.Tensor:
    """``-log(1 - p)`` of each token from its log-probability ``log p`` (elementwise; finite as p -> 1)."""
    lp = token_logprobs.clamp(max=-1e-6)
    # log(1 - e^lp): expm1 where p is near 1, log1p where p is small (each exact where the other cancels)
    near_one = lp > -math.log(2.0)
    return -torch.where(near_one, torch.log(-torch.expm1(lp)), torch.log1p(-torch.exp(lp)))


def contrast_loss(
    lm: LanguageModel, batch: Sequence[ContrastExample], rng: random.Random, *, responses: int, weight: float
) -> torch.Tensor:
    """NLL of drawn wanted responses plus ``weight`` x unlikelihood of drawn unwanted ones (module docstring)."""
    prompts: list[str] = []
    texts: list[str] = []
    good: list[bool] = []
    for e in batch:
        for answers, is_good in ((e.wanted, True), (e.unwanted, False)):
            for text in rng.sample(list(answers), min(responses, len(answers))):
                prompts.append(e.prompt)
                texts.append(text)
                good.append(is_good)
    tf = lm.teacher_forced(prompts, texts)
    lp = tf.token_logprobs(lm.logits_at(tf.inputs, tf.positions()[0]))
    valid = tf.positions()[1]
    rows = torch.tensor(good)
    nll = -lp[rows].sum() / valid[rows].sum()
    ul = (unlikelihood(lp) * valid)[~rows].sum() / valid[~rows].sum()
    return nll + weight * ul
