"""A sentiment judge of generated text: a frozen sentence encoder (MiniLM) and a logistic-regression head.

SERAC (§5, ConvSent) scores an edit's generations with a sentiment classifier. Here the classifier is the project's
sentence encoder (``minilm-l6``, frozen; :class:`~editkit.models.encoder.SentenceEncoder`: mean-pooled, unit-length
embeddings) and a head ``p(positive | x) = sigmoid(w . e(x) + b)``, 384 weights and a bias on MiniLM.

``editkit train judge --config FILE`` trains the head (:class:`JudgeTrainer`) on the labelled responses of
ConvSent's training split: every case's responses of both sentiments (:func:`case_texts`; a ConvSent case's
in-scope probe holds the requested sentiment's responses as answers and the other's as contrasts, and its
statement says which is which). The embeddings are computed once; each step is Adam on the binary cross-entropy
of ``batch`` responses drawn with the seed (plus ``l2`` x ||w||^2), through :func:`~editkit.training.loop.
train_part` (resumable, keyed on the settings and the data's hashes). After training the head is scored on the
``heldout`` files (:func:`labelled_texts`: ConvSent JSON, whose ``pos`` / ``neg`` responses are labelled 1 / 0, or
JSON lines with ``sentence`` and ``label``, as GLUE's SST-2): each file's path, sha256, size and accuracy go into
the part's record in the manifest, beside the training accuracy.

:func:`load_judge` reads a trained head (verified by :mod:`editkit.trained`) with its encoder;
:class:`SentimentJudge` scores texts. :mod:`editkit.evaluation.judged` uses it for ES_sent on generated text.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from editkit.data.formats.convsent import sentiment_of
from editkit.edits import EditCase, ProbeKind
from editkit.errors import ConfigError, ValidationError
from editkit.files import file_sha256
from editkit.models.encoder import SentenceEncoder
from editkit.trained import find, load_tensors, read_manifest, verify, write_part
from editkit.training.loop import seed_torch, train_part, training_cases
from editkit.training.registry import Trainer, register_trainer
from editkit.typedconfig import TypedConfig

NAME = "judge"
PART = "sentiment"


class SentimentJudge:
    """``p(positive | text) = sigmoid(w . e(text) + b)`` with ``e`` the frozen encoder's sentence embedding."""

    def __init__(
        self, encoder: SentenceEncoder, weight: torch.Tensor, bias: torch.Tensor, fingerprint: str = ""
    ) -> None:
        if weight.shape != (encoder.dim,) or bias.numel() != 1:
            raise ValidationError(
                f"a sentiment head for {encoder.dim}-dimensional embeddings needs {encoder.dim} weights and one "
                f"bias, got {tuple(weight.shape)} and {bias.numel()}"
            )
        self.encoder = encoder
        self.weight = weight.float()
        self.bias = bias.float().reshape(())
        self.fingerprint = fingerprint

    def positive(self, texts: list[str]) -> list[float]:
        """Each text's probability of being positive."""
        return probabilities(self.encoder.embed([t.strip() for t in texts]), self.weight, self.bias).tolist()


def probabilities(embeddings: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The head on embeddings ``[n, d]``: ``sigmoid(e w + b)``, ``[n]``."""
    return torch.sigmoid(embeddings @ weight + bias)


def load_judge(artifacts: str | None = None) -> SentimentJudge:
    """The judge trained into ``artifacts`` (``editkit train judge``), else the one packaged with editkit;
    verified before it is read."""
    folder = find(NAME, artifacts)
    manifest = verify(folder, [PART])
    tensors = load_tensors(folder / PART)
    meta = manifest["parts"][PART]
    encoder = SentenceEncoder.load(str(meta["encoder"]))
    return SentimentJudge(encoder, tensors["weight"], tensors["bias"], str(meta["fingerprint"]))


def judge_record(artifacts: str | None = None) -> dict[str, Any]:
    """What a results file records of the judge it used: its folder, fingerprint, encoder and accuracies."""
    folder = find(NAME, artifacts)
    meta = read_manifest(folder)["parts"][PART]
    return {
        "artifacts": str(folder),
        "fingerprint": meta["fingerprint"],
        "encoder": meta["encoder"],
        "train_accuracy": meta["train_accuracy"],
        "heldout": meta["heldout"],
    }


def case_texts(cases: list[EditCase]) -> tuple[list[str], list[int]]:
    """The labelled responses of ConvSent cases (1 positive, 0 negative): the answers and contrasts of each case's
    first in-scope probe (the others repeat them), labelled by the statement's sentiment."""
    texts: list[str] = []
    labels: list[int] = []
    for c in cases:
        wanted = sentiment_of(c.request.descriptor or "")
        probes = [p for p in c.of_kind(ProbeKind.REPHRASE, ProbeKind.EDIT) if p.contrast is not None]
        if wanted is None or not probes:
            continue
        for group, positive in ((probes[0].answers, wanted == "positive"), (probes[0].contrasts, wanted != "positive")):
            texts += [t.strip() for t in group]
            labels += [int(positive)] * len(group)
    if not texts or len(set(labels)) < 2:
        raise ValidationError("the judge needs ConvSent cases with responses of both sentiments to train on")
    return texts, labels


def labelled_texts(path: str) -> tuple[list[str], list[int]]:
    """A held-out file's texts and labels: ConvSent JSON (a list of ``{ent, pos, neg}``: pos 1, neg 0) or JSON
    lines of ``{"sentence", "label"}`` (GLUE SST-2: 1 positive)."""
    text = Path(path).read_text()
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x]
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{path}: not JSON or JSON lines ({exc.msg}, line {exc.lineno})") from None
    texts: list[str] = []
    labels: list[int] = []
    for r in records:
        if isinstance(r, dict) and "pos" in r and "neg" in r:
            for group, label in ((r["pos"], 1), (r["neg"], 0)):
                texts += [str(t).strip() for t in group]
                labels += [label] * len(group)
        elif isinstance(r, dict) and "sentence" in r and r.get("label") in (0, 1):
            texts.append(str(r["sentence"]).strip())
            labels.append(int(r["label"]))
        else:
            raise ValidationError(f"{path}: a record is neither ConvSent's {{ent, pos, neg}} nor {{sentence, label}}")
    if not texts:
        raise ValidationError(f"{path}: no labelled texts")
    return texts, labels


def accuracy(embeddings: torch.Tensor, labels: list[int], weight: torch.Tensor, bias: torch.Tensor) -> float:
    """The share of texts whose predicted label (probability above one half) is their label."""
    predicted = probabilities(embeddings, weight, bias) > 0.5
    return float((predicted == torch.tensor(labels, dtype=torch.bool)).float().mean())


@dataclass
class JudgeTrainConfig(TypedConfig):
    data: list[str] = field(
        default_factory=list, metadata={"help": "training files: ConvSent's training split (blender_val.json)"}
    )
    out: str = field(default="", metadata={"help": "folder for the trained artifact"})
    heldout: list[str] = field(
        default_factory=list,
        metadata={"help": "files the trained head is scored on (ConvSent JSON or sentence/label JSON lines)"},
    )
    encoder: str = field(default="minilm-l6", metadata={"help": "the frozen sentence encoder"})
    batch: int = field(default=256, metadata={"help": "responses per step"})
    lr: float = field(default=0.05, metadata={"help": "Adam learning rate"})
    l2: float = field(default=1e-4, metadata={"help": "weight of ||w||^2 in the loss"})
    steps: int = field(default=400, metadata={"help": "optimisation steps"})
    seed: int = field(default=0, metadata={"help": "seed of the head's initialisation and the batches' draws"})
    checkpoint_every: int = field(default=100, metadata={"help": "steps between resumable checkpoints"})

    def validate(self) -> None:
        if min(self.batch, self.steps, self.checkpoint_every) < 1 or self.lr <= 0 or self.l2 < 0:
            raise ConfigError("batch, steps and checkpoint_every must be at least 1, lr positive, l2 at least 0")


class Head(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(()))


@register_trainer
class JudgeTrainer(Trainer):
    """A sentiment judge of generated text: a logistic-regression head on frozen MiniLM embeddings (ConvSent)."""

    name: ClassVar[str] = NAME
    config_cls: ClassVar[type[TypedConfig]] = JudgeTrainConfig
    config: JudgeTrainConfig

    def train(self, *, progress: bool = True) -> dict[str, Any]:
        config = self.config
        if not config.out:
            raise ConfigError("no output folder given (out: FOLDER)")
        missing = [p for p in config.heldout if not Path(p).is_file()]
        if missing:
            raise ConfigError(f"held-out file {missing[0]} does not exist")
        cases, datasets = training_cases(config.data)
        texts, labels = case_texts(cases)
        encoder = SentenceEncoder.load(config.encoder)
        embeddings = encoder.embed(texts)
        targets = torch.tensor(labels, dtype=torch.float32)
        seed_torch(config.seed, PART)
        head = Head(encoder.dim)
        opt = torch.optim.Adam(head.parameters(), lr=config.lr)

        def loss_fn(rng: random.Random) -> torch.Tensor:
            rows = torch.tensor(rng.sample(range(len(texts)), min(config.batch, len(texts))))
            logits = embeddings[rows] @ head.weight + head.bias
            return F.binary_cross_entropy_with_logits(logits, targets[rows]) + config.l2 * head.weight.pow(2).sum()

        result = train_part(PART, config, head, opt, loss_fn, [d.sha256 for d in datasets], progress=progress)
        if not math.isfinite(result.losses[-1]):
            raise ValidationError("the judge's training diverged (a non-finite loss); lower lr")
        weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
        heldout = []
        for path in config.heldout:
            h_texts, h_labels = labelled_texts(path)
            heldout.append(
                {
                    "path": path,
                    "sha256": file_sha256(Path(path)),
                    "texts": len(h_texts),
                    "positive_share": sum(h_labels) / len(h_labels),
                    "accuracy": accuracy(encoder.embed(h_texts), h_labels, weight, bias),
                }
            )
        meta = {
            "part": PART,
            "encoder": config.encoder,
            "base_model": config.encoder,
            "texts": len(texts),
            "positive_share": sum(labels) / len(labels),
            "train_accuracy": accuracy(embeddings, labels, weight, bias),
            "heldout": heldout,
            **result.summary(),
        }
        return write_part(
            Path(config.out), config.to_dict(), datasets, config.encoder, PART, meta, {"weight": weight, "bias": bias}
        )
