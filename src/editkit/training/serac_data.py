"""SERAC's training data (Mitchell et al. 2022, §3.2), made from edit cases: the scope classifiers' examples
(in-scope inputs, the case's own out-of-scope inputs, mined hard negatives, same-subject negatives), the
counterfactual model's examples, and the out-of-scope inputs it learns to leave as the base model answers them
(``cf_keep_share``). :mod:`editkit.training.serac` trains on them; the module docstring there says what each is.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from editkit.data.formats import load_cases
from editkit.editors.memory import descriptor_of
from editkit.edits import EditCase, EditRequest, ProbeKind, names_subject, words
from editkit.errors import ValidationError
from editkit.files import read_json
from editkit.models.encoder import SentenceEncoder
from editkit.models.lm import LanguageModel
from editkit.progress import progress_bar

IN_SCOPE = (ProbeKind.EDIT, ProbeKind.REPHRASE, ProbeKind.HARD_IN)
OUT_OF_SCOPE = (ProbeKind.NEIGHBORHOOD, ProbeKind.OUT)


@dataclass(frozen=True)
class ScopeExample:
    descriptor: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...]  # the case's own out-of-scope inputs
    hard: tuple[str, ...] = ()  # mined: nearest in-scope inputs of other cases
    same_subject: tuple[str, ...] = ()  # out-of-scope inputs about the edit's subject (other relations)


@dataclass(frozen=True)
class CounterfactualExample:
    prompt: str
    target: str | list[int]  # text, or token ids (the base model's own answer)


@dataclass(frozen=True)
class KeepInput:
    """An out-of-scope input put after an edit: the counterfactual model should answer it as the base model
    answers ``input`` alone."""

    descriptor: str
    input: str
    expected: str | None  # the probe's expected answer (its token count is the target's); None for made prompts
    same_subject: bool


def scope_examples(cases: Sequence[EditCase]) -> list[ScopeExample]:
    out = []
    for c in cases:
        pos = tuple(dict.fromkeys(p.prompt for p in c.of_kind(*IN_SCOPE)))
        neg = tuple(dict.fromkeys(p.prompt for p in c.of_kind(*OUT_OF_SCOPE)))
        if pos:
            out.append(ScopeExample(descriptor_of(c.request), pos, neg))
    return out


def counterfactual_examples(cases: Sequence[EditCase], template: str) -> list[CounterfactualExample]:
    return [
        CounterfactualExample(template.format(edit=descriptor_of(c.request), input=p.prompt), p.expected)
        for c in cases
        for p in c.of_kind(*IN_SCOPE)
    ]


def keep_inputs(
    cases: Sequence[EditCase], templates: Mapping[str, str], n: int, seed: int, *, any_relation: bool = False
) -> list[KeepInput]:
    """Every case's own out-of-scope probes and :func:`same_subject_prompts` (drawn with ``seed``), each after
    the case's edit; those naming the edit's subject are marked same-subject."""
    rng = random.Random(f"keep:{seed}")
    out = []
    for c in cases:
        descriptor, subject = descriptor_of(c.request), c.request.subject
        for p in c.of_kind(*OUT_OF_SCOPE):
            out.append(KeepInput(descriptor, p.prompt, p.expected, bool(subject and names_subject(p.prompt, subject))))
        made = same_subject_prompts(c.request, templates, n, rng, any_relation=any_relation)
        out += [KeepInput(descriptor, x, None, True) for x in made]
    return list(dict.fromkeys(out))


def draw_keep(
    inputs: Sequence[KeepInput], k: int, same_share: float, seed: int, *, data_first: bool = False
) -> list[KeepInput]:
    """``k`` of ``inputs``, ``same_share`` of them same-subject ones where there are enough (the rest from the
    others, and the other way round). With ``data_first``, the same-subject ones are the data's own probes (those
    with an expected answer) before any made from templates."""
    rng = random.Random(f"keep-draw:{seed}")
    same = [x for x in inputs if x.same_subject]
    other = [x for x in inputs if not x.same_subject]
    k = min(k, len(inputs))
    n_same = min(len(same), max(round(k * same_share), k - len(other)))
    if not data_first:
        return rng.sample(same, n_same) + rng.sample(other, k - n_same)
    own = [x for x in same if x.expected is not None]
    made = [x for x in same if x.expected is None]
    n_own = min(len(own), n_same)
    return rng.sample(own, n_own) + rng.sample(made, n_same - n_own) + rng.sample(other, k - n_same)


@torch.no_grad()
def base_answers(
    lm: LanguageModel, inputs: Sequence[KeepInput], tokens: int, *, batch_size: int = 16, progress: bool = True
) -> list[list[int]]:
    """The base model's greedy answer to each input alone: as many tokens as its expected answer has (as
    :class:`~editkit.evaluation.metrics.Reference` scores drawdown), else ``tokens``; the end-of-sequence token
    when it answers nothing."""
    out: list[list[int]] = []
    with progress_bar(len(inputs), "base answers to out-of-scope inputs", progress) as bar:
        for i in range(0, len(inputs), batch_size):
            chunk = inputs[i : i + batch_size]
            lengths = [len(lm.encode(x.expected, special=False)) if x.expected else tokens for x in chunk]
            out += lm.greedy_answers([x.input for x in chunk], lengths)
            bar.advance(len(chunk))
    return out


def mine_hard_negatives(
    examples: Sequence[ScopeExample], encoder: SentenceEncoder, k: int, *, progress: bool = True
) -> list[ScopeExample]:
    """Each example's ``k`` nearest in-scope inputs of other examples, by cosine similarity to its descriptor."""
    if k == 0:
        return list(examples)
    texts = [t for e in examples for t in e.positives]
    owner = torch.tensor([i for i, e in enumerate(examples) for _ in e.positives])
    with progress_bar(2, "mining hard negatives", progress) as bar:
        inputs = encoder.embed(texts)
        bar.advance()
        descs = encoder.embed([e.descriptor for e in examples])
        bar.advance()
    out = []
    for start in range(0, len(examples), 1024):
        sims = descs[start : start + 1024] @ inputs.T
        rows = torch.arange(start, start + sims.shape[0])
        sims[owner[None, :] == rows[:, None]] = -2.0  # never the example's own inputs
        top = sims.topk(min(4 * k, sims.shape[1]), dim=1).indices
        for r, idx in enumerate(top.tolist()):
            ex = examples[start + r]
            own = set(ex.positives)
            hard = [texts[j] for j in idx if texts[j] not in own][:k]
            out.append(dataclasses.replace(ex, hard=tuple(dict.fromkeys(hard))))
    return out


def relation_templates(path: str | Path) -> dict[str, str]:
    """Template -> relation id from ROME's known-facts file (``{"template": "{} plays the", "relation_id":
    "P1303", ...}`` per row); a template that two relations share is left out."""
    rows = read_json(path, "relation templates file")
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and {"template", "relation_id"} <= set(r) for r in rows
    ):
        raise ValidationError(f"{path}: expected a list of records with 'template' and 'relation_id'")
    relations: dict[str, set[str]] = {}
    for r in rows:
        if str(r["template"]).count("{}") == 1:
            relations.setdefault(str(r["template"]), set()).add(str(r["relation_id"]))
    return {t: next(iter(rs)) for t, rs in relations.items() if len(rs) == 1}


def _stems(text: str, leave_out: str = "") -> set[str]:
    """Five-letter stems of ``text``'s words of four letters or more, less those of ``leave_out``."""
    drop = set(words(leave_out))
    return {w[:5] for w in words(text) if len(w) >= 4 and w not in drop}


def same_subject_prompts(
    request: EditRequest, templates: Mapping[str, str], n: int, rng: random.Random, *, any_relation: bool = False
) -> tuple[str, ...]:
    """Up to ``n`` prompts about the request's subject in templates of relations other than its own. When its
    prompt is not one of ``templates`` (its relation is unknown: a zsRE question), none; or, with
    ``any_relation``, templates that share no word stem with its prompt ("What is the university where X went?"
    gets "X is a citizen of", never "X was educated at"): a guess that can be wrong, so an option. None without
    a subject."""
    if not request.subject or n == 0:
        return ()
    relation = templates.get(request.template)
    if relation is None and not any_relation:
        return ()
    if relation is None:
        asked = _stems(request.text, request.subject)
        others = sorted(t for t in templates if not _stems(t.replace("{}", " ")) & asked)
    else:
        others = sorted(t for t, r in templates.items() if r != relation)
    return tuple(t.format(request.subject) for t in rng.sample(others, min(n, len(others))))


def with_same_subject(
    examples: Sequence[ScopeExample],
    cases: Sequence[EditCase],
    templates: Mapping[str, str],
    n: int,
    seed: int,
    *,
    any_relation: bool = False,
) -> list[ScopeExample]:
    """``examples`` with their same-subject negatives: each case's own out-of-scope inputs that name its subject,
    and :func:`same_subject_prompts` (drawn with ``seed``)."""
    rng = random.Random(f"same-subject:{seed}")
    by_descriptor: dict[str, tuple[str, ...]] = {}
    for c in cases:
        subject = c.request.subject
        own = [p.prompt for p in c.of_kind(*OUT_OF_SCOPE) if subject and names_subject(p.prompt, subject)]
        made = same_subject_prompts(c.request, templates, n, rng, any_relation=any_relation)
        by_descriptor.setdefault(descriptor_of(c.request), tuple(dict.fromkeys([*own, *made])))
    return [dataclasses.replace(e, same_subject=by_descriptor.get(e.descriptor, ())) for e in examples]


def held_out(
    cases: Sequence[EditCase], files: Sequence[str], limit: int | None
) -> tuple[list[EditCase], list[dict[str, Any]]]:
    """``cases`` less those sharing a subject or a prompt with the first ``limit`` cases of ``files``, and what
    the manifest records of each file (path, sha256, cases read, training cases left out)."""
    kept, records = list(cases), []
    for path in files:
        dataset = load_cases(path, limit=limit, skip_invalid=True)
        subjects = {words(r.subject) for c in dataset.cases for r in c.requests if r.subject}
        prompts = {words(r.text) for c in dataset.cases for r in c.requests}
        before = len(kept)
        kept = [
            c
            for c in kept
            if not any(words(r.text) in prompts or (r.subject and words(r.subject) in subjects) for r in c.requests)
        ]
        records.append(
            {"path": path, "sha256": dataset.sha256, "cases": len(dataset.cases), "left_out": before - len(kept)}
        )
    return kept, records
