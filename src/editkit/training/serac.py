"""Training SERAC's scope classifiers and counterfactual model (Mitchell et al. 2022, §3.2).

The examples are made in :mod:`editkit.training.serac_data`, from training edit cases (any format
:func:`~editkit.data.load_cases` reads; training splits only), with the edit descriptor ``z_e = [x_e ; y_e]``:

* in-scope inputs I(z_e): the case's edit prompt, rephrases and hard in-scope probes;
* out-of-scope inputs O(z_e): the case's own out-of-scope probes (zsRE's unrelated NQ questions, CounterFact's
  neighborhood prompts) and hard negatives mined as the nearest in-scope inputs of *other* cases under raw
  all-MiniLM-L6-v2 embeddings (appendix D.1 mines hard out-of-scope inputs the same way);
* same-subject negatives: the case's own out-of-scope inputs that name its subject (KnowEdit's relation
  specificity: "The name of the founder of X is" for an edit of X's country) and, with ``relation_templates``
  (ROME's known-facts file, one prompt template per row with its Wikidata relation), the edit's subject in
  templates of *other* relations ("The mother tongue of X is" for an edit of "X is a citizen of"), for the cases
  whose prompt is one of those templates (with ``same_subject_any_relation``, also for edits of an unknown
  relation, such as zsRE's questions: the templates sharing no word stem with the question). An edit of one fact
  must not claim everything else asked about its subject; ``same_subject_share`` of the embedding classifier's
  sampled negatives are these.

``holdout`` names evaluation files (with ``holdout_limit``: their first N cases): training cases that share a
subject or a prompt with them are left out, so that a training file whose first cases are evaluated (KnowEdit's
WikiData_counterfact ships only a training file) can train on the rest.

Parts, each trained separately and each a LoRA adapter (peft) so the artifact is small:

* ``scope-embed``: eq. 2 (binary cross-entropy) on the embedding classifier; every batch scores each edit
  against its positive, its negative and every other edit's inputs (in-batch negatives); the loss averages the
  positive and the negative terms so that the two classes weigh the same.
* ``scope-cross``: eq. 2 on the cross-encoder, with (edit, positive), (edit, hard negative) and (edit, own
  out-of-scope input) pairs.
* ``counterfactual``: eq. 3, the NLL of y_in given ``template.format(edit=z_e, input=x_in)`` under the base LM
  with LoRA on its attention projections; the loss reads only the answer tokens. With ``cf_keep_share``, part of
  each batch is out-of-scope inputs after an edit (the case's own, and its subject in other relations) with the
  base model's own greedy answer as the target: when the classifier sends h an input the edit does not touch, h
  should answer it as the base model does (issue 31's same-subject questions).

Each part trains through the shared loop (:mod:`editkit.training.loop`: seeded, resumable from
``OUT/.checkpoints/PART.pt``). The finished folder is a trained artifact (:mod:`editkit.trained`): one
sub-folder per part (a peft adapter, a head, ``part.json``) and ``manifest.json`` (the config, the training
files' sha256, the code version, per part its steps, losses, timings, settings and file hashes). The trainer is
registered as ``serac`` (``editkit train serac``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from editkit.data.formats import Dataset
from editkit.editors.scope import HEAD, UNTRAINED_BIAS, UNTRAINED_SCALE, CrossClassifier, EmbeddingClassifier
from editkit.editors.serac import TEMPLATE
from editkit.edits import EditCase
from editkit.errors import ConfigError
from editkit.files import atomic_write, file_sha256
from editkit.models.encoder import SentenceEncoder
from editkit.models.lm import LanguageModel
from editkit.trained import record_part, save_part, start_manifest
from editkit.training.loop import DATA_HELP, LoopResult, checkpoint_key, seed_torch, train_loop, training_cases
from editkit.training.registry import Trainer, register_trainer
from editkit.training.sentiment import ContrastExample, contrast_examples, contrast_loss
from editkit.training.serac_data import (
    CounterfactualExample,
    ScopeExample,
    base_answers,
    counterfactual_examples,
    draw_keep,
    held_out,
    keep_inputs,
    mine_hard_negatives,
    relation_templates,
    scope_examples,
    with_same_subject,
)
from editkit.training.statements import mixed_cases
from editkit.typedconfig import TypedConfig

PARTS = ("scope-embed", "scope-cross", "counterfactual")


@dataclass
class SERACTrainConfig(TypedConfig):
    data: list[str] = field(default_factory=list, metadata={"help": DATA_HELP})
    out: str = field(default="", metadata={"help": "folder for the trained parts"})
    parts: list[str] = field(default_factory=lambda: list(PARTS), metadata={"help": "parts to train"})
    max_cases: int | None = field(default=None, metadata={"help": "at most this many cases per file"})
    seed: int = field(default=0, metadata={"help": "seed of sampling, initialisation and dropout"})
    encoder: str = field(default="minilm-l6", metadata={"help": "sentence encoder of the scope classifiers"})
    base_model: str = field(default="smollm2-135m", metadata={"help": "LM the counterfactual model starts from"})
    template: str = field(default=TEMPLATE, metadata={"help": "counterfactual prompt ({edit}, {input})"})
    hard_negatives: int = field(default=32, metadata={"help": "nearest other-case inputs kept per edit"})
    scope_steps: int = field(default=400, metadata={"help": "optimisation steps per scope classifier"})
    scope_batch: int = field(default=32, metadata={"help": "edits per scope batch"})
    relation_templates: str | None = field(
        default=None,
        metadata={
            "help": "ROME's known_1000.json (template, relation_id per row): same-subject negatives from templates "
            "of other relations; None: none"
        },
    )
    same_subject_negatives: int = field(
        default=4, metadata={"help": "same-subject prompts (other relations) made per edit with relation_templates"}
    )
    holdout: list[str] = field(
        default_factory=list,
        metadata={"help": "evaluation files: training cases sharing a subject or prompt with them are left out"},
    )
    holdout_limit: int | None = field(default=None, metadata={"help": "only the first N cases of each holdout file"})
    same_subject_any_relation: bool = field(
        default=False,
        metadata={
            "help": "with relation_templates: edits whose relation is unknown (zsRE questions) get the templates "
            "that share no word stem with their prompt (a guess: some may ask the same relation)"
        },
    )
    same_subject_share: float = field(
        default=0.25,
        metadata={
            "help": "share of sampled negatives that are same-subject prompts, if an edit has any (embedding: of "
            "its one negative; cross: of its own-input negative), and of the drawn cf_keep_examples"
        },
    )
    scope_hard_weight: float = field(
        default=0.5,
        metadata={
            "help": "embedding classifier: share of eq. 2's negative term given to each edit's own hard negative "
            "(0: it is averaged with all in-batch negatives, as in SERAC)"
        },
    )
    scope_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the scope adapters"})
    scope_lora_r: int = field(default=8, metadata={"help": "LoRA rank on the encoder"})
    cf_steps: int = field(default=300, metadata={"help": "optimisation steps of the counterfactual model"})
    cf_batch: int = field(default=8, metadata={"help": "examples per counterfactual batch"})
    cf_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the counterfactual adapter"})
    cf_lora_r: int = field(default=8, metadata={"help": "LoRA rank on the base LM's attention"})
    cf_loss: Literal["nll", "unlikelihood"] = field(
        default="nll",
        metadata={
            "help": "counterfactual loss: nll (eq. 3 on the expected answers) or unlikelihood (NLL on the in-scope "
            "probes' answers plus -log(1 - p) on their contrasts: ConvSent's sentiments, SERAC §5)"
        },
    )
    statement_share: float = field(
        default=0.0,
        metadata={
            "help": "share of the training cases whose edit is said as a statement (editkit.training.statements: "
            "'The mother tongue of X is French.'), so that both parts learn to read statement edits"
        },
    )
    cf_keep_share: float = field(
        default=0.0,
        metadata={
            "help": "share of each counterfactual batch that is out-of-scope inputs (the case's own and, with "
            "relation_templates, its subject in other relations) after the edit, with the base model's own greedy "
            "answer as the target: asked anyway, h should answer what the edit does not touch as the base does"
        },
    )
    cf_keep_examples: int = field(
        default=4000, metadata={"help": "out-of-scope examples drawn for cf_keep_share (their base answers cached)"}
    )
    keep_data_first: bool = field(
        default=False,
        metadata={
            "help": "the same-subject cf_keep_examples are the data's own probes (KnowEdit's relation-specificity "
            "prompts) before any made from relation_templates (False: drawn from both alike)"
        },
    )
    cf_keep_tokens: int = field(
        default=3, metadata={"help": "greedy tokens of the base answer when an input has no expected answer"}
    )
    cf_responses: int = field(
        default=1, metadata={"help": "unlikelihood: wanted and unwanted responses drawn per example and step"}
    )
    cf_unlikelihood_weight: float = field(
        default=1.0, metadata={"help": "unlikelihood: weight of the unwanted responses' term"}
    )
    checkpoint_every: int = field(default=50, metadata={"help": "steps between resumable checkpoints"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)"})

    def validate(self) -> None:
        bad = [p for p in self.parts if p not in PARTS]
        if bad:
            raise ConfigError(f"unknown SERAC parts {bad}; choose from {', '.join(PARTS)}")
        if min(self.scope_steps, self.scope_batch, self.cf_steps, self.cf_batch, self.checkpoint_every) < 1:
            raise ConfigError("steps, batch sizes and checkpoint_every must be at least 1")
        if not 0.0 <= self.statement_share <= 1.0:
            raise ConfigError(f"statement_share must lie in [0, 1], not {self.statement_share}")
        if not 0.0 <= self.cf_keep_share < 1.0:
            raise ConfigError(f"cf_keep_share must lie in [0, 1), not {self.cf_keep_share}")
        if self.cf_keep_examples < 1 or self.cf_keep_tokens < 1:
            raise ConfigError("cf_keep_examples and cf_keep_tokens must be at least 1")
        if self.cf_keep_share > 0 and self.cf_loss != "nll":
            raise ConfigError("cf_keep_share needs cf_loss: nll")
        if self.cf_responses < 1 or self.cf_unlikelihood_weight < 0:
            raise ConfigError("cf_responses must be at least 1 and cf_unlikelihood_weight at least 0")
        if self.scope_batch < 2:
            raise ConfigError("scope_batch must be at least 2 (in-batch negatives)")
        if not 0.0 <= self.same_subject_share <= 1.0:
            raise ConfigError(f"same_subject_share must lie in [0, 1], not {self.same_subject_share}")
        if self.holdout_limit is not None and self.holdout_limit < 1:
            raise ConfigError(f"holdout_limit must be at least 1, not {self.holdout_limit}")
        if self.same_subject_negatives < 0:
            raise ConfigError(f"same_subject_negatives must be at least 0, not {self.same_subject_negatives}")
        if not 0.0 <= self.scope_hard_weight <= 1.0:
            raise ConfigError(f"scope_hard_weight must lie in [0, 1], not {self.scope_hard_weight}")
        if "{edit}" not in self.template or "{input}" not in self.template:
            raise ConfigError(f"template {self.template!r} needs '{{edit}}' and '{{input}}'")


def _mined_examples(
    config: SERACTrainConfig, cases: Sequence[EditCase], datasets: Sequence[Dataset], *, progress: bool
) -> list[ScopeExample]:
    """Scope examples with their mined hard negatives, cached in ``OUT/.checkpoints`` (mining embeds every
    training input: minutes on a CPU) and reused by a rerun with the same data, encoder and settings."""
    key = hashlib.sha256(
        json.dumps(
            [config.encoder, config.hard_negatives, config.max_cases, [d.sha256 for d in datasets]]
            + ([config.statement_share, config.seed] if config.statement_share else [])
        ).encode()
    ).hexdigest()
    path = Path(config.out) / ".checkpoints" / "hard_negatives.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return [ScopeExample(e[0], tuple(e[1]), tuple(e[2]), tuple(e[3])) for e in cached["examples"]]
    examples = mine_hard_negatives(
        scope_examples(cases), SentenceEncoder.load(config.encoder), config.hard_negatives, progress=progress
    )
    rows = [[e.descriptor, e.positives, e.negatives, e.hard] for e in examples]
    atomic_write(path, json.dumps({"key": key, "examples": rows}))
    return examples


def load_training_cases(config: SERACTrainConfig) -> tuple[list[EditCase], list[Dataset]]:
    return training_cases(config.data, config.max_cases)


# --------------------------------------------------------------------------- training through the shared loop
def _run(
    config: SERACTrainConfig,
    part: str,
    steps: int,
    trainable: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: Callable[[random.Random], torch.Tensor],
    datasets: Sequence[Dataset],
    *,
    progress: bool,
) -> LoopResult:
    # Step counts are left out of the key so that a finished part can be trained further by raising them.
    ignored = ("out", "parts", "checkpoint_every", "threads", "scope_steps", "cf_steps")
    # The unlikelihood settings are left out under the default loss, so checkpoints written before they existed resume.
    unused: tuple[str, ...] = ("cf_loss", "cf_responses", "cf_unlikelihood_weight") if config.cf_loss == "nll" else ()
    if config.cf_keep_share == 0:  # likewise for checkpoints written before the keep examples existed
        unused += ("cf_keep_share", "cf_keep_examples", "cf_keep_tokens")
    if not config.keep_data_first:
        unused += ("keep_data_first",)
    if config.statement_share == 0:
        unused += ("statement_share",)
    if not config.same_subject_any_relation:
        unused += ("same_subject_any_relation",)
    relevant = {k: v for k, v in config.to_dict().items() if k not in ignored + unused}
    key = checkpoint_key(part, relevant, [d.sha256 for d in datasets])
    return train_loop(
        part,
        steps,
        trainable,
        opt,
        loss_fn,
        out=Path(config.out),
        key=key,
        seed=config.seed,
        checkpoint_every=config.checkpoint_every,
        progress=progress,
    )


def _balanced_bce(
    logits: torch.Tensor, labels: torch.Tensor, hard: torch.Tensor | None = None, hard_weight: float = 0.0
) -> torch.Tensor:
    """Eq. 2 with the positive and negative terms averaged separately, so both classes weigh the same.

    With ``hard`` (a mask of negatives) and ``hard_weight`` w, the negative term is ``(1 - w)`` times the mean
    over all negatives plus ``w`` times the mean over the ``hard`` ones: the few negatives that matter are not
    drowned by the many easy in-batch ones.
    """
    pos = labels > 0.5
    per = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    neg = per[~pos].mean()
    if hard is not None and hard_weight > 0:
        neg = (1 - hard_weight) * neg + hard_weight * per[hard & ~pos].mean()
    return 0.5 * (per[pos].mean() + neg)


def _lora_encoder(config: SERACTrainConfig, seed_tag: str) -> tuple[SentenceEncoder, nn.Module]:
    from peft import LoraConfig, get_peft_model

    seed_torch(config.seed, seed_tag)
    encoder = SentenceEncoder.load(config.encoder)
    lora = LoraConfig(
        r=config.scope_lora_r,
        lora_alpha=2 * config.scope_lora_r,
        lora_dropout=0.1,
    )  # target modules: peft's default for the architecture (query and value projections)
    peft_model = get_peft_model(encoder.model, lora)  # injects LoRA layers into encoder.model in place
    peft_model.peft_config["default"].base_model_name_or_path = config.encoder  # a zoo name, not a cache path
    return encoder, peft_model


def _pick(rng: random.Random, options: Sequence[str], fallback: Sequence[str]) -> str:
    return rng.choice(list(options) if options else list(fallback))


def train_scope_embed(
    config: SERACTrainConfig, examples: Sequence[ScopeExample], datasets: Sequence[Dataset], *, progress: bool
) -> dict[str, Any]:
    encoder, peft_model = _lora_encoder(config, "scope-embed")
    clf = EmbeddingClassifier(encoder, scale=UNTRAINED_SCALE, bias=UNTRAINED_BIAS)
    opt = torch.optim.Adam([p for p in clf.parameters() if p.requires_grad], lr=config.scope_lr)
    pool = [p for e in examples for p in e.positives]

    def loss_fn(rng: random.Random) -> torch.Tensor:
        batch = rng.sample(list(examples), config.scope_batch)
        pos = [rng.choice(e.positives) for e in batch]
        neg = [
            rng.choice(e.same_subject)
            if e.same_subject and rng.random() < config.same_subject_share
            else _pick(rng, e.hard + e.negatives, pool)
            for e in batch
        ]
        z = clf.embed([e.descriptor for e in batch])
        x = clf.embed(pos + neg)
        logits = clf.logits_from_sqdist(torch.cdist(z, x).pow(2))
        labels = torch.zeros_like(logits)
        labels[:, : len(batch)] = torch.eye(len(batch))
        hard = torch.zeros_like(logits, dtype=torch.bool)
        hard[:, len(batch) :] = torch.eye(len(batch), dtype=torch.bool)  # each edit's own sampled negative
        return _balanced_bce(logits, labels, hard, config.scope_hard_weight)

    result = _run(config, "scope-embed", config.scope_steps, clf, opt, loss_fn, datasets, progress=progress)
    meta = _part_meta(config, "scope-embed", result)
    save_part(Path(config.out) / "scope-embed", meta, adapter=peft_model, tensors=clf.head_state(), tensors_file=HEAD)
    return meta


def train_scope_cross(
    config: SERACTrainConfig, examples: Sequence[ScopeExample], datasets: Sequence[Dataset], *, progress: bool
) -> dict[str, Any]:
    encoder, peft_model = _lora_encoder(config, "scope-cross")
    clf = CrossClassifier(encoder)
    opt = torch.optim.Adam([p for p in clf.parameters() if p.requires_grad], lr=config.scope_lr)
    pool = [p for e in examples for p in e.positives]

    def loss_fn(rng: random.Random) -> torch.Tensor:
        batch = rng.sample(list(examples), config.scope_batch)
        edits, inputs, labels = [], [], []
        for e in batch:
            edits += [e.descriptor] * 3
            own = (
                rng.choice(e.same_subject)
                if e.same_subject and rng.random() < config.same_subject_share
                else _pick(rng, e.negatives, pool)
            )
            inputs += [rng.choice(e.positives), _pick(rng, e.hard, pool), own]
            labels += [1.0, 0.0, 0.0]
        return _balanced_bce(clf.logits(edits, inputs), torch.tensor(labels))

    result = _run(config, "scope-cross", config.scope_steps, clf, opt, loss_fn, datasets, progress=progress)
    meta = _part_meta(config, "scope-cross", result)
    save_part(Path(config.out) / "scope-cross", meta, adapter=peft_model, tensors=clf.head_state(), tensors_file=HEAD)
    return meta


def nll_batches(
    examples: Sequence[CounterfactualExample],
    batch_size: int,
    keep: Sequence[CounterfactualExample] = (),
    keep_share: float = 0.0,
) -> Callable[[LanguageModel, random.Random], torch.Tensor]:
    """Eq. 3's loss on drawn batches: the NLL of each example's target, its tokens' mean; with ``keep``,
    ``keep_share`` of each batch is drawn from those (out-of-scope inputs with the base model's answers)."""
    n_keep = round(batch_size * keep_share) if keep else 0

    def loss(lm: LanguageModel, rng: random.Random) -> torch.Tensor:
        batch = rng.sample(list(examples), min(batch_size - n_keep, len(examples)))
        if n_keep:
            batch += rng.sample(list(keep), min(n_keep, len(keep)))
        tf = lm.teacher_forced([e.prompt for e in batch], [e.target for e in batch])
        lp = tf.token_logprobs(lm.logits_at(tf.inputs, tf.positions()[0]))
        return -(lp.sum() / tf.positions()[1].sum())

    return loss


def unlikelihood_batches(
    examples: Sequence[ContrastExample], config: SERACTrainConfig
) -> Callable[[LanguageModel, random.Random], torch.Tensor]:
    """:func:`~editkit.training.sentiment.contrast_loss` on drawn batches of ``cf_batch`` examples."""

    def loss(lm: LanguageModel, rng: random.Random) -> torch.Tensor:
        batch = rng.sample(list(examples), min(config.cf_batch, len(examples)))
        return contrast_loss(lm, batch, rng, responses=config.cf_responses, weight=config.cf_unlikelihood_weight)

    return loss


def keep_examples(
    config: SERACTrainConfig, cases: Sequence[EditCase], lm: LanguageModel, *, progress: bool
) -> list[CounterfactualExample]:
    """``cf_keep_examples`` drawn :func:`keep_inputs` after their edits, each with the base model's answer
    (:func:`base_answers`, cached in ``OUT/.checkpoints`` for a rerun on the same inputs and weights)."""
    templates = relation_templates(config.relation_templates) if config.relation_templates else {}
    inputs = keep_inputs(
        cases, templates, config.same_subject_negatives, config.seed, any_relation=config.same_subject_any_relation
    )
    drawn = draw_keep(
        inputs, config.cf_keep_examples, config.same_subject_share, config.seed, data_first=config.keep_data_first
    )
    key = hashlib.sha256(
        json.dumps([lm.fingerprint(), config.cf_keep_tokens, [dataclasses.astuple(x) for x in drawn]]).encode()
    ).hexdigest()
    path = Path(config.out) / ".checkpoints" / "keep_answers.json"
    cached = json.loads(path.read_text()) if path.is_file() else {}
    if cached.get("key") == key:
        answers = cached["answers"]
    else:
        answers = base_answers(lm, drawn, config.cf_keep_tokens, progress=progress)
        atomic_write(path, json.dumps({"key": key, "answers": answers}))
    return [
        CounterfactualExample(config.template.format(edit=x.descriptor, input=x.input), a)
        for x, a in zip(drawn, answers, strict=True)
    ]


def train_counterfactual(
    config: SERACTrainConfig,
    make_loss: Callable[[LanguageModel], Callable[[LanguageModel, random.Random], torch.Tensor]],
    datasets: Sequence[Dataset],
    *,
    progress: bool,
) -> dict[str, Any]:
    """Train h's LoRA adapter with the loss ``make_loss`` builds from the base model (before the adapter)."""
    from peft import LoraConfig, get_peft_model

    from editkit.models.zoo import load

    lm = load(config.base_model, progress=progress)
    batch_loss = make_loss(lm)
    seed_torch(config.seed, "counterfactual")
    lora = LoraConfig(
        r=config.cf_lora_r,
        lora_alpha=2 * config.cf_lora_r,
        lora_dropout=0.05,
    )  # target modules: peft's default for the architecture (query and value projections)
    peft_model = get_peft_model(lm.model, lora)  # in place: lm now runs with the adapter
    trainable = [p for p in lm.model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=config.cf_lr)

    def loss_fn(rng: random.Random) -> torch.Tensor:
        return batch_loss(lm, rng)

    result = _run(config, "counterfactual", config.cf_steps, lm.model, opt, loss_fn, datasets, progress=progress)
    meta = _part_meta(config, "counterfactual", result)
    peft_model.peft_config["default"].base_model_name_or_path = config.base_model  # a zoo name, not a cache path
    save_part(Path(config.out) / "counterfactual", meta, adapter=peft_model)
    return meta


def _part_meta(config: SERACTrainConfig, part: str, result: LoopResult) -> dict[str, Any]:
    return {
        "part": part,
        **result.summary(),
        "encoder": config.encoder,
        "base_model": config.base_model,
        # The manifest's top-level config is the last command's; a folder trained part by part (other steps,
        # other parts) keeps here the settings each part was trained with.
        "config": config.to_dict(),
    }


def train(config: SERACTrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train the configured parts into ``config.out`` and write its ``manifest.json``; returns the manifest."""
    if not config.out:
        raise ConfigError("no output folder given (out: FOLDER)")
    if config.threads:
        torch.set_num_threads(config.threads)
    cases, datasets = load_training_cases(config)
    cases, holdout = held_out(cases, config.holdout, config.holdout_limit)
    if config.statement_share:
        cases = mixed_cases(cases, config.statement_share, seed=config.seed)
    folder = Path(config.out)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = start_manifest(folder, config.to_dict(), datasets, config.base_model)
    manifest["template"] = config.template
    if holdout:
        manifest["holdout"] = holdout
    if config.statement_share:
        manifest["statements"] = {"cases": sum(bool(c.request.descriptor) for c in cases), "of": len(cases)}
    # The manifest is rewritten as each part finishes: an interrupted run keeps the parts it finished usable.
    scope_parts = [p for p in config.parts if p.startswith("scope")]
    if scope_parts:
        examples = _mined_examples(config, cases, datasets, progress=progress)
        templates = relation_templates(config.relation_templates) if config.relation_templates else {}
        examples = with_same_subject(
            examples,
            cases,
            templates,
            config.same_subject_negatives,
            config.seed,
            any_relation=config.same_subject_any_relation,
        )
        manifest["same_subject_negatives"] = {"edits": sum(bool(e.same_subject) for e in examples)}
        if config.relation_templates:
            manifest["relation_templates"] = {
                "path": config.relation_templates,
                "sha256": file_sha256(Path(config.relation_templates)),
                "templates": len(templates),
            }
        if "scope-embed" in scope_parts:
            meta = train_scope_embed(config, examples, datasets, progress=progress)
            record_part(folder, manifest, "scope-embed", meta)
        if "scope-cross" in scope_parts:
            meta = train_scope_cross(config, examples, datasets, progress=progress)
            record_part(folder, manifest, "scope-cross", meta)
    if "counterfactual" in config.parts:

        def make_loss(lm: LanguageModel) -> Callable[[LanguageModel, random.Random], torch.Tensor]:
            if config.cf_loss == "unlikelihood":
                return unlikelihood_batches(contrast_examples(cases, config.template), config)
            keep = keep_examples(config, cases, lm, progress=progress) if config.cf_keep_share > 0 else []
            examples = counterfactual_examples(cases, config.template)
            return nll_batches(examples, config.cf_batch, keep, config.cf_keep_share)

        meta = train_counterfactual(config, make_loss, datasets, progress=progress)
        record_part(folder, manifest, "counterfactual", meta)
    return manifest


@register_trainer
class SERACTrainer(Trainer):
    """SERAC's scope classifiers and counterfactual model."""

    name = "serac"
    config_cls: ClassVar[type[TypedConfig]] = SERACTrainConfig
    config: SERACTrainConfig

    def train(self, *, progress: bool = True) -> dict[str, Any]:
        return train(self.config, progress=progress)
