"""Downstream ability after editing: few-shot GLUE classification with F1 (Gupta et al., "Model Editing at Scale
leads to Gradual and Catastrophic Forgetting", §3.3 and Appendix A.3).

The few-shot prompts are the paper's Tables 4-7 (SST-2, MRPC, CoLA, and RTE with the NLI template). The model's
answer is the label word with the higher next-token probability after the prompt (compared at the first token
where the two words differ); F1 is for GLUE label 1
(SST-2 positive, MRPC paraphrase, CoLA acceptable, RTE not-entailment) with a 95% bootstrap interval, plus the
threshold-free ROC AUC of the label log-odds (not in the paper; it stays informative for a small model whose
few-shot answers are all one label).
The few-shot prefix runs once per evaluation and its key/value cache is shared by every example
(:meth:`LanguageModel.label_logprobs_after_prefix`).

Data files are GLUE validation subsets in JSON lines (``sentence`` or ``sentence1``/``sentence2``, ``label``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from editkit.errors import UnknownNameError, ValidationError
from editkit.files import require_file
from editkit.models.lm import LanguageModel

_SST2_SHOTS = [
    ("excruciatingly unfunny and pitifully unromantic", 0),
    ("rich veins of funny stuff in this movie", 1),
    ("by far the worst movie of the year", 0),
    ("fashioning an engrossing entertainment out", 1),
]
_MRPC_SHOTS = [
    (
        "Mr McDevitt has been granted control of three crucial aspects of policing in the Solomons.",
        "Mr McDevitt has been granted control of three aspects of policing by Commissioner William Morrell.",
        0,
    ),
    ("The notification was first reported Friday by MSNBC.", "MSNBC.com first reported the CIA request on Friday.", 1),
    (
        "In 2002, Linksys overtook Cisco Systems as the leading wireless equipment vendor, accounting for 14.1 "
        "percent of revenue.",
        "Rolfe said Linksys overtook Cisco Systems last year as the leading supplier of WLAN equipment.",
        0,
    ),
    (
        '"The anticipated global sales improvement in the month of June did not materialize", said Chief Financial '
        "Officer Robert Rivet.",
        '"The anticipated global sales improvement in the month of June did not materialize as we had anticipated", '
        "the company said.",
        1,
    ),
    (
        "That compared with $ 35.18 million, or 24 cents per share, in the year-ago period.",
        "Earnings were affected by a non-recurring $8 million tax benefit in the year-ago period.",
        0,
    ),
    (
        "They had published an advertisement on the Internet on June 10, offering the cargo for sale, he added.",
        "On June 10, the ship's owners had published an advertisement on the Internet, offering the explosives "
        "for sale.",
        1,
    ),
]
_COLA_SHOTS = [
    ("Bill pushed Harry off the sofa for hours.", 0),
    ("Bill floated down the river for hours.", 1),
    ("It is important for the more you eat, the more careful you to be.", 0),
    ("It is important for you to be more careful, the more you eat.", 1),
    ("Mary will believe Susan, and you will Bob.", 1),
    ("You will Bob believe.", 0),
]
_NLI_SHOTS = [  # label 0 = entailment (True), as in GLUE RTE
    (
        "Cyrus captured Babylon without a battle, and remedied the evils done by previous Assyrian and Babylonian "
        "rulers by sending prisoners in Babylonia back to their original homelands and aiding in the restoration "
        "of temples of the gods of various nations.",
        "Babylon surrendered to Cyrus without going to battle.",
        1,
    ),
    (
        "Successful plaintiffs recovered punitive damages in Texas discrimination cases 53% of the time.",
        "Legal costs to recover punitive damages are a deductible business expense.",
        0,
    ),
    (
        "The gastric bypass operation, also known as stomach stapling, has become the most common surgical "
        "procedure for treating obesity.",
        "Obesity is medically treated.",
        1,
    ),
]


@dataclass(frozen=True)
class Task:
    """A few-shot binary classification task: ``prefix + render(example)`` is followed by a label word."""

    name: str
    prefix: str
    render: Callable[[dict[str, Any]], str]
    labels: tuple[str, str]  # the word for GLUE label 0, for label 1
    fields: tuple[str, ...]


def _sst2(rec: dict[str, Any]) -> str:
    return f"Review : {rec['sentence'].strip()}\nSentiment :"


def _mrpc(rec: dict[str, Any]) -> str:
    return (
        f"Are the sentences paraphrases of each other. Sentence 1: {rec['sentence1'].strip()} "
        f"Sentence 2: {rec['sentence2'].strip()} Answer:"
    )


def _cola(rec: dict[str, Any]) -> str:
    return f"Is this sentence linguistically acceptable?\nSentence : {rec['sentence'].strip()}\nAnswer :"


def _nli(rec: dict[str, Any]) -> str:
    return f"{rec['sentence1'].strip()} question: {rec['sentence2'].strip()} True or False? answer:"


def _shots(render: Callable[[dict[str, Any]], str], words: tuple[str, str], shots: list[dict[str, Any]]) -> str:
    return "".join(f"{render(s)} {words[s['label']]}\n" for s in shots)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "sst2",
            _shots(_sst2, ("negative", "positive"), [{"sentence": s, "label": y} for s, y in _SST2_SHOTS]),
            _sst2,
            ("negative", "positive"),
            ("sentence",),
        ),
        Task(
            "mrpc",
            _shots(_mrpc, ("No", "Yes"), [{"sentence1": a, "sentence2": b, "label": y} for a, b, y in _MRPC_SHOTS]),
            _mrpc,
            ("No", "Yes"),
            ("sentence1", "sentence2"),
        ),
        Task(
            "cola",
            _shots(_cola, ("No", "Yes"), [{"sentence": s, "label": y} for s, y in _COLA_SHOTS]),
            _cola,
            ("No", "Yes"),
            ("sentence",),
        ),
        Task(
            "rte",
            _shots(_nli, ("True", "False"), [{"sentence1": a, "sentence2": b, "label": y} for a, b, y in _NLI_SHOTS]),
            _nli,
            ("True", "False"),
            ("sentence1", "sentence2"),
        ),
    )
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UnknownNameError("downstream task", name, TASKS)
    return TASKS[name]


def load_examples(path: str | Path, task: str, *, n: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    """A class-balanced sample of ``n`` examples (the paper uses 200), the same for every run with ``seed``."""
    spec = get_task(task)
    path = require_file(path, "downstream data file")
    by_label: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"{path}: line {i + 1} is not valid JSON: {exc.msg}") from None
        for f in (*spec.fields, "label"):
            if f not in rec:
                raise ValidationError(f"{path}: record {i}, field {f!r} is missing (is this the {task} file?)")
        if rec["label"] not in (0, 1):
            raise ValidationError(f"{path}: record {i}, field 'label' must be 0 or 1, got {rec['label']!r}")
        by_label[rec["label"]].append(rec)
    if not by_label[0] or not by_label[1]:
        raise ValidationError(f"{path} needs examples of both labels for {task}")
    rng = random.Random(seed)
    picked: list[dict[str, Any]] = []
    for label in (0, 1):
        pool = by_label[label]
        picked += rng.sample(pool, min(len(pool), n // 2 + (n % 2 if label == 0 else 0)))
    rng.shuffle(picked)
    return picked


def f1_binary(gold: Sequence[int], pred: Sequence[int]) -> float:
    """F1 of class 1."""
    tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == 1 and p == 1)
    fp = sum(1 for g, p in zip(gold, pred, strict=True) if g == 0 and p == 1)
    fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == 1 and p == 0)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def bootstrap_interval(
    gold: Sequence[int], pred: Sequence[int], *, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap interval of F1 over examples."""
    gen = torch.Generator().manual_seed(seed)
    n = len(gold)
    g, p = torch.tensor(list(gold)), torch.tensor(list(pred))
    idx = torch.randint(0, n, (resamples, n), generator=gen)
    gs, ps = g[idx], p[idx]
    tp = ((gs == 1) & (ps == 1)).sum(1).double()
    fp = ((gs == 0) & (ps == 1)).sum(1).double()
    fn = ((gs == 1) & (ps == 0)).sum(1).double()
    f1 = torch.where(tp > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), torch.zeros_like(tp))
    lo, hi = torch.quantile(f1, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return lo, hi


def roc_auc(gold: Sequence[int], score: Sequence[float]) -> float:
    """Area under the ROC curve of ``score`` for class 1 (ties count half): how well the label log-odds rank
    the examples, whatever the threshold. A small model that always answers one label has F1 0 but may still
    rank well; edits that damage the model pull this towards 0.5."""
    pos = [s for g, s in zip(gold, score, strict=True) if g == 1]
    neg = [s for g, s in zip(gold, score, strict=True) if g == 0]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def label_tokens(lm: LanguageModel, task: Task) -> tuple[list[int], tuple[int, int]]:
    """The label words' shared leading tokens (e.g. a lone space in a small vocabulary) and the first token
    at which they differ: the prediction compares those two tokens after the shared ones."""
    a, b = (lm.encode(" " + w, special=False) for w in task.labels)
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if n == min(len(a), len(b)):
        raise ValidationError(f"{lm.name}'s tokenizer cannot tell {task.name}'s label words {task.labels} apart")
    return a[:n], (a[n], b[n])


@torch.no_grad()
def evaluate_task(
    lm: LanguageModel, task: str, examples: Sequence[dict[str, Any]], *, batch_size: int = 16
) -> dict[str, Any]:
    """F1 (class 1) with its 95% bootstrap interval, accuracy, and the share of predictions that are label 1."""
    spec = get_task(task)
    shared, labels = label_tokens(lm, spec)
    suffixes = [lm.encode(spec.render(e), special=False) + shared for e in examples]
    logp = lm.label_logprobs_after_prefix(spec.prefix, suffixes, labels, batch_size=batch_size)
    pred = (logp[:, 1] > logp[:, 0]).long().tolist()
    gold = [int(e["label"]) for e in examples]
    lo, hi = bootstrap_interval(gold, pred)
    return {
        "f1": f1_binary(gold, pred),
        "f1_ci": [lo, hi],
        "auc": roc_auc(gold, (logp[:, 1] - logp[:, 0]).tolist()),
        "accuracy": sum(int(g == p) for g, p in zip(gold, pred, strict=True)) / len(gold),
        "predicted_positive": sum(pred) / len(pred),
        "n": len(gold),
    }
