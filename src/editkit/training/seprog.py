"""Training SEPROG's prompt generator (seed paper 002, §3.3 and appendix B; the editor is
:mod:`editkit.editors.seprog`).

Each step draws ``batch`` training cases; their descriptors ``z_e = [x_e ; y_e]`` are the edit set Z^e every
input of the step attends over (eq. 2). Per case one in-scope input (its edit prompt, a rephrase or a hard
in-scope probe, with the answer it should give) and one out-of-scope input (its own unrelated or neighborhood
probe, else another case's in-scope input), so each batch holds as many in-scope as out-of-scope samples. The
loss is eq. 7, ``lambda L_sc + (1 - lambda) L_pg``:

* L_sc (eq. 5): the binary cross-entropy of e(x), in-scope and out-of-scope terms averaged apart;
* L_pg (eq. 6): on the in-scope inputs only, the answer's mean token NLL under the frozen base model reading the
  generated prefix ``NN_prompt(h(x))`` before the input (with ``reads: descriptor``, before the input's own edit's
  descriptor and the input, as the editor's template writes them).

With ``reads: descriptor`` the editor reads the most attended edit's words, so which edit eq. 2 selects matters
beyond h(x): ``select_weight`` adds that weight times the cross-entropy of the attention against each in-scope
input's own edit (ours; the paper trains eq. 2 only through eqs. 5-6). At inference the index preselects the
edits nearest the input, so ``distractors`` adds each step edit's nearest training edits to Z^e (their keys
only: no base-model pass), where a batch of random edits would teach the attention only easy choices.

``input_features`` (ours) gives NN_e the input through the edit encoder as well (see
:meth:`~editkit.editors.seprog.PromptGenerator.in_scope_logit`). ``noise_text`` names a plain-text file (WikiText):
each training input, in scope or out, also appears once after one of its sentences, drawn seeded, since
CounterFact's paraphrases start with a sentence of unrelated text and the training files' rephrasings do not.

``classifier: false`` trains SP-NOCLASSIFIER (no NN_e, L = L_pg). ``finetune_layers: N`` trains SP-FINETUNE: the
base model's top N blocks learn with L_pg too (at ``finetune_lr``), written as a second part, ``finetuned``; b(x)
stays the frozen model's. The sentence encoder and, but for those blocks, the base model are frozen, so b(x) and the
encoder's embedding of every training input and descriptor are computed once before the loop and kept
beside the checkpoint for a resumed run. Adam at a constant rate, no warm-up or clipping
(the shared loop has neither). One part, ``prompter``: the generator's tensors, its sizes (``spec``) in the
manifest, trained through :func:`~editkit.training.loop.train_part` (seeded, resumable).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from editkit.data.formats import Dataset
from editkit.editors.answerers import template_prompt
from editkit.editors.memory import descriptor_of
from editkit.editors.seprog import FINETUNED, PART, PromptGenerator, base_encoding, prefixed_logits
from editkit.edits import EditCase, ProbeKind
from editkit.errors import ConfigError, ValidationError
from editkit.files import atomic_torch_save
from editkit.models.encoder import SentenceEncoder
from editkit.models.lm import LanguageModel
from editkit.trained import write_part
from editkit.training.loop import DATA_HELP, seed_torch, train_part, training_cases
from editkit.training.registry import Trainer, register_trainer
from editkit.typedconfig import TypedConfig

IN_SCOPE = (ProbeKind.EDIT, ProbeKind.REPHRASE, ProbeKind.HARD_IN)
OUT_OF_SCOPE = (ProbeKind.OUT, ProbeKind.NEIGHBORHOOD)


@dataclass
class SEPROGTrainConfig(TypedConfig):
    data: list[str] = field(default_factory=list, metadata={"help": DATA_HELP})
    out: str = field(default="", metadata={"help": "folder for the trained part"})
    base_model: str = field(default="smollm2-135m", metadata={"help": "the frozen model the prefixes are for"})
    encoder: str = field(default="minilm-l6", metadata={"help": "sentence encoder of the edit descriptors"})
    max_cases: int | None = field(default=None, metadata={"help": "at most this many cases per file"})
    max_out: int = field(default=2, metadata={"help": "out-of-scope probes kept per case"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and sampling"})
    hidden: int = field(default=256, metadata={"help": "d_h: width of h_i^e, h(x) and the networks"})
    prefix_len: int = field(default=8, metadata={"help": "p: prefix embeddings generated per input"})
    classifier: bool = field(default=True, metadata={"help": "train the edit classifier (false: SP-NOCLASSIFIER)"})
    reads: str = field(
        default="vector",
        metadata={
            "help": "what follows the prefix: vector (the input alone, eq. 4 as written) or descriptor (the "
            "selected edit's descriptor, then the input, through template)"
        },
    )
    template: str = field(default="{edit}\n{input}", metadata={"help": "with reads: descriptor, what the model reads"})
    pair_features: bool = field(default=False, metadata={"help": "NN_e also reads h(x) * W_att b(x)"})
    input_features: bool = field(
        default=False, metadata={"help": "NN_e also reads h(x) * E_edit(x), the input through the edit encoder"}
    )
    noise_text: str = field(
        default="",
        metadata={
            "help": "a plain-text file (WikiText's tokenisation is undone): every training input also appears once "
            "after one of its sentences, as CounterFact's paraphrases start with unrelated text"
        },
    )
    select_weight: float = field(
        default=0.0, metadata={"help": "weight of the attention's cross-entropy against each input's own edit"}
    )
    distractors: int = field(
        default=0,
        metadata={
            "help": "per edit of a step, this many of its nearest training edits (raw encoder cosine of the "
            "descriptors) join the step's Z^e, as the index's preselection brings near edits at inference"
        },
    )
    finetune_layers: int = field(
        default=0,
        metadata={
            "help": "SP-FINETUNE: the base model's top N blocks are trained with L_pg beside the generator "
            "(0: the base model frozen, SEPROG)"
        },
    )
    finetune_lr: float = field(default=1e-5, metadata={"help": "Adam learning rate of the fine-tuned blocks"})
    lam: float = field(default=0.3, metadata={"help": "lambda of eq. 7 (weight of L_sc)"})
    steps: int = field(default=1000, metadata={"help": "optimisation steps"})
    batch: int = field(default=8, metadata={"help": "edits per step (= in-scope = out-of-scope inputs)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    checkpoint_every: int = field(default=50, metadata={"help": "steps between resumable checkpoints"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)"})

    def validate(self) -> None:
        if min(self.hidden, self.prefix_len, self.steps, self.checkpoint_every, self.max_out) < 1:
            raise ConfigError("hidden, prefix_len, steps, checkpoint_every and max_out must be at least 1")
        if self.batch < 2:
            raise ConfigError("batch must be at least 2 (the edits of a step are what each input selects from)")
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"lam must lie in [0, 1], not {self.lam}")
        if self.lr <= 0 or self.finetune_lr <= 0:
            raise ConfigError("lr and finetune_lr must be positive")
        if self.finetune_layers < 0:
            raise ConfigError("finetune_layers must be >= 0")
        if self.reads not in ("vector", "descriptor"):
            raise ConfigError(f"reads must be vector or descriptor, not {self.reads!r}")
        if self.reads == "descriptor":
            template_prompt(self.template)  # refuses a template without both fields
        if self.select_weight < 0 or self.distractors < 0:
            raise ConfigError("select_weight and distractors must be >= 0")


@dataclass(frozen=True)
class Example:
    descriptor: str
    inside: tuple[tuple[str, str], ...]  # (input, answer) in scope
    outside: tuple[str, ...]  # the case's own out-of-scope inputs


def examples_of(cases: Sequence[EditCase], max_out: int) -> list[Example]:
    out = []
    for c in cases:
        inside = tuple(dict.fromkeys((p.prompt, p.expected) for p in c.of_kind(*IN_SCOPE)))
        outside = tuple(dict.fromkeys(p.prompt for p in c.of_kind(*OUT_OF_SCOPE)))[:max_out]
        if inside:
            out.append(Example(descriptor_of(c.request), inside, outside))
    return out


def nearest_edits(encoded: torch.Tensor, k: int) -> list[list[int]]:
    """For each training edit, the ``k`` others nearest by cosine of the encoder's descriptor embeddings."""
    if k == 0:
        return [[] for _ in range(len(encoded))]
    unit = F.normalize(encoded.float(), dim=-1)
    sims = unit @ unit.T
    sims.fill_diagonal_(float("-inf"))
    return sims.topk(min(k, len(encoded) - 1), dim=-1).indices.tolist()


class _Blocks(nn.Module):
    """The base model's fine-tuned parameters (the same tensors, not copies), so that a checkpoint of the
    training holds them beside the generator and a resumed run writes them back into the model."""

    def __init__(self, params: Mapping[str, nn.Parameter]) -> None:
        super().__init__()
        self.names = list(params)
        self.held = nn.ParameterList(params.values())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().contiguous() for name, p in zip(self.names, self.held, strict=True)}


def finetuned_parameters(lm: LanguageModel, layers: int) -> dict[str, nn.Parameter]:
    """The parameters of ``lm``'s top ``layers`` blocks by name, set to learn (none for 0)."""
    if layers == 0:
        return {}
    n = lm.adapter.n_layers(lm.model)
    if layers > n:
        raise ConfigError(f"finetune_layers is {layers}; {lm.name} has {n} blocks")
    held = {id(p) for block in list(lm.adapter.layer_list(lm.model))[n - layers :] for p in block.parameters()}
    params = {name: p for name, p in lm.model.named_parameters() if id(p) in held}
    for p in params.values():
        p.requires_grad_(True)
    return params


def load_training_cases(config: SEPROGTrainConfig) -> tuple[list[EditCase], list[Dataset]]:
    return training_cases(config.data, config.max_cases)


_WIKITEXT = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))


def noise_sentences(path: str, *, shortest: int = 4, longest: int = 16) -> list[str]:
    """The sentences of ``shortest`` to ``longest`` words of a plain-text file that end with a full stop, with
    WikiText's tokenisation undone (its headings and sentences holding ``<unk>`` left out), in file order."""
    file = Path(path)
    if not file.is_file():
        raise ValidationError(f"noise_text {path} is not a file")
    out = []
    for line in file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        for old, new in _WIKITEXT:
            line = line.replace(old, new)
        line = re.sub(r" (?=[.,;:!?]|'s\b)", "", line)
        for sentence in re.split(r"(?<=\.)\s+", line):
            if "<unk>" not in sentence and sentence.endswith(".") and shortest <= len(sentence.split()) <= longest:
                out.append(sentence)
    if not out:
        raise ValidationError(f"noise_text {path} holds no sentence of {shortest}-{longest} words")
    return out


def with_noise(examples: Sequence[Example], sentences: Sequence[str], seed: int) -> list[Example]:
    """Each example with one more copy of every input, after a sentence drawn (seeded) from ``sentences``."""
    rng = random.Random(seed)
    out = []
    for e in examples:
        inside = tuple((f"{rng.choice(sentences)} {x}", y) for x, y in e.inside)
        outside = tuple(f"{rng.choice(sentences)} {x}" for x in e.outside)
        out.append(Example(e.descriptor, e.inside + inside, e.outside + outside))
    return out


def _features(
    config: SEPROGTrainConfig,
    lm: LanguageModel,
    encoder: SentenceEncoder,
    texts: Sequence[str],
    examples: Sequence[Example],
    *,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """b(x) and the encoder's embedding of every training input, and the encoder's embedding of every
    descriptor, cached in ``OUT/.checkpoints/features.pt`` (minutes of base-model passes on a CPU) and reused by a
    rerun with the same models (by weights), inputs and descriptors."""
    fingerprints = [config.base_model, lm.fingerprint(), encoder.fingerprint()]
    key = hashlib.sha256(json.dumps([fingerprints, list(texts), [e.descriptor for e in examples]]).encode())
    path = Path(config.out) / ".checkpoints" / "features.pt"
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if cached["key"] == key.hexdigest() and "inputs" in cached:
            return cached["base"], cached["inputs"], cached["encoded"]
    base = base_encoding(lm, texts, batch_size=32, progress=progress)
    inputs = encoder.embed(texts)
    encoded = encoder.embed([e.descriptor for e in examples])
    atomic_torch_save({"key": key.hexdigest(), "base": base, "inputs": inputs, "encoded": encoded}, path)
    return base, inputs, encoded


def train(config: SEPROGTrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train the prompt generator into ``config.out`` (resuming a run with the same settings); returns the
    artifact's manifest."""
    from editkit.models.zoo import load

    if not config.out:
        raise ConfigError("no output folder given (out: FOLDER)")
    if config.threads:
        torch.set_num_threads(config.threads)
    cases, datasets = load_training_cases(config)
    examples = examples_of(cases, config.max_out)
    hashes = [d.sha256 for d in datasets]
    if config.noise_text:
        examples = with_noise(examples, noise_sentences(config.noise_text), config.seed)
        hashes.append(hashlib.sha256(Path(config.noise_text).read_bytes()).hexdigest())
    if len(examples) < config.batch:
        raise ValidationError(f"{len(examples)} usable training cases, fewer than batch ({config.batch})")
    lm = load(config.base_model, progress=False)
    lm.model.requires_grad_(False)
    encoder = SentenceEncoder.load(config.encoder)
    texts = list(dict.fromkeys([x for e in examples for x, _ in e.inside] + [x for e in examples for x in e.outside]))
    row = {t: i for i, t in enumerate(texts)}
    base, inputs, encoded = _features(config, lm, encoder, texts, examples, progress=progress)
    embedding = lm.model.get_input_embeddings().weight
    spec = {
        "enc_dim": encoder.dim,
        "base_dim": base.shape[1],
        "hidden": config.hidden,
        "prefix_len": config.prefix_len,
        "embed_dim": embedding.shape[1],
        "classifier": config.classifier,
        "scale": float(embedding.detach().float().pow(2).mean().sqrt()),
        "encoder": config.encoder,
        "pooling": "encoder-mean" if lm.is_encoder_decoder else "last-layer-mean",
        "reads": config.reads,
        "template": config.template,
        "pair_features": config.pair_features,
        "input_features": config.input_features,
    }
    seed_torch(config.seed, PART)
    net = PromptGenerator(spec)
    blocks = _Blocks(finetuned_parameters(lm, config.finetune_layers))
    trainable: nn.Module = nn.ModuleDict({"prompter": net, "blocks": blocks}) if blocks.names else net
    opt = torch.optim.Adam(
        [{"params": list(net.parameters()), "lr": config.lr}]
        + ([{"params": list(blocks.parameters()), "lr": config.finetune_lr}] if blocks.names else [])
    )
    lam = config.lam if config.classifier else 0.0

    near = nearest_edits(encoded, config.distractors)

    def loss_fn(rng: random.Random) -> torch.Tensor:
        picked = rng.sample(range(len(examples)), config.batch)
        batch = [examples[i] for i in picked]
        # Z^e: the step's edits first (row j's own edit is j), then their near edits
        edits = list(dict.fromkeys(picked + [n for i in picked for n in near[i]]))
        everyone = torch.ones((len(batch), len(edits)), dtype=torch.bool)
        inside = [rng.choice(e.inside) for e in batch]
        outside = [
            rng.choice(e.outside)
            if e.outside
            else rng.choice(examples[rng.choice(picked[:j] + picked[j + 1 :])].inside)[0]
            for j, e in enumerate(batch)
        ]
        keys = net.edit_keys(encoded[edits]).expand(len(batch), -1, -1)
        b_in = base[[row[x] for x, _ in inside]]
        h_in, attn_in = net.select(b_in, keys, everyone)
        prompts = [lm.encode(net.read(e.descriptor, x)) for e, (x, _) in zip(batch, inside, strict=True)]
        answers = [lm.encode(y, special=False) for _, y in inside]
        width = max(len(a) for a in answers)
        lengths = torch.tensor([len(a) for a in answers])
        positions = torch.minimum(torch.arange(width)[None, :], lengths[:, None] - 1)
        logits = prefixed_logits(lm, prompts, answers, net.prefix(h_in), positions)
        logp = F.log_softmax(logits.float(), dim=-1)
        target = torch.tensor([a + [a[-1]] * (width - len(a)) for a in answers], device=logp.device)
        valid = (torch.arange(width)[None, :] < lengths[:, None]).to(logp.device)
        nll = -(logp.gather(-1, target.unsqueeze(-1)).squeeze(-1) * valid).sum(1) / valid.sum(1)
        loss_pg = nll.mean()
        # each in-scope input's own edit is row j of this step's edits
        loss_sel = config.select_weight * F.nll_loss(attn_in.clamp_min(1e-12).log(), torch.arange(len(batch)))
        if lam == 0.0:
            return loss_pg + loss_sel
        b_out = base[[row[x] for x in outside]]
        h_out, _ = net.select(b_out, keys, everyone)
        q_in, q_out = inputs[[row[x] for x, _ in inside]], inputs[[row[x] for x in outside]]
        logit_in, logit_out = net.in_scope_logit(h_in, b_in, q_in), net.in_scope_logit(h_out, b_out, q_out)
        loss_sc = 0.5 * (
            F.binary_cross_entropy_with_logits(logit_in, torch.ones_like(logit_in))
            + F.binary_cross_entropy_with_logits(logit_out, torch.zeros_like(logit_out))
        )
        return lam * loss_sc + (1 - lam) * loss_pg + loss_sel

    result = train_part(PART, config, trainable, opt, loss_fn, hashes, progress=progress)
    meta = {"part": PART, **result.summary(), "base_model": lm.name, "spec": spec}
    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    if blocks.names:
        tuned = {
            "part": FINETUNED,
            **result.summary(),  # the same loop trained both parts
            "base_model": lm.name,
            "layers": config.finetune_layers,
            "parameters": blocks.names,
        }
        write_part(Path(config.out), config.to_dict(), datasets, lm.name, FINETUNED, tuned, blocks.tensors())
    return write_part(Path(config.out), config.to_dict(), datasets, lm.name, PART, meta, tensors)


@register_trainer
class SEPROGTrainer(Trainer):
    """SEPROG's prompt generator: edit encoder top layer, W_att, edit classifier and prompt decoder."""

    name = "seprog"
    config_cls: ClassVar[type[TypedConfig]] = SEPROGTrainConfig
    config: SEPROGTrainConfig

    def train(self, *, progress: bool = True) -> dict[str, Any]:
        return train(self.config, progress=progress)
