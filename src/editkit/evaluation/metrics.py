"""Edit metrics from the papers, computed for many cases in one batched pass.

Per case (numbers in parentheses are equations of the SERAC paper, Mitchell et al. 2022):

* ``efficacy`` / ``paraphrase`` / ``neighborhood`` (+ ``_margin``): CounterFact probability comparisons of ROME
  §3 and MEMIT §5.2, on probes that carry a ``contrast`` (length-normalised log-likelihoods, expected vs. contrast).
* ``es`` (4): exact-match agreement with the desired answer on in-scope probes. Greedy decoding reproduces an
  answer exactly iff every answer token is the argmax under teacher forcing, so one teacher-forced pass decides
  it; a probe with aliases counts if any answer matches. For free-form descriptor edits (ConvSent) ``es`` is
  ES_sent (6) = z_sent * z_topic per in-scope probe, with z_sent = sigmoid(l+ - l-) and
  z_topic = min(1, exp(l+ - l+_base)), l the mean per-token log-likelihood of the correct (+) and wrong (-)
  sentiment responses.
* Choice probes (``Probe.choice``: a claim labelled " True" or " False", fact checking): the model's answer is
  whichever of ``expected`` and ``contrast`` it finds likelier (length-normalised log-likelihoods), as a binary
  classifier's label; ``es`` on them is (4) with that answer (``expected`` wins), and ``dd`` is (5) with it (the
  choice differs from the unedited model's, kept in :class:`Reference`). ``choice_all``: 1 when every in-scope
  choice probe of the case is answered as the edit says; a model that gives one label to every claim scores 0 on
  a case with claims of both labels (chance on a case of n claims: 2^-n), where its ``es`` is 0.5.
* ``token_acc``: fraction of in-scope answer tokens that are the argmax (EasyEdit's "accuracy").
* ``edit_acc`` / ``rephrase_acc`` / ``hard_in_acc``: ``es`` split by probe kind; ``hard_in_acc`` is portability
  / multi-hop accuracy.
* ``dd`` (5): on out-of-scope probes, 1{f_e(x) != f_base(x)}, where f(x) is the greedy continuation of as many
  tokens as the probe's expected answer has. The base predictions are computed once on the unedited model
  (:class:`Reference`); the edited model disagrees iff it does not reproduce them greedily, again one
  teacher-forced pass. ``dd_neighborhood`` / ``dd_out`` split hard and easy out-of-scope probes.
* ``dd_own_subject`` / ``dd_edited_subject`` / ``dd_unedited_subject``: ``dd`` split by cause when the memory's
  edits are given (:class:`~editkit.evaluation.prefill.SubjectIndex`): probes about the edit's own subject (asked
  of another fact), about a subject with another edit in memory, and about a subject no edit touches;
  ``other_edit_answered``: on the second kind, whether the edited model gives that other edit's answer (the
  probe may be in its scope). The first kind is split once more: ``dd_own_edited_fact``, probes that ask the
  edited fact itself (:func:`~editkit.evaluation.prefill.asks_edited_fact`: the data expects the answer the edit
  replaced, so an edit that takes changes them), and ``dd_own_other_fact``, the subject's other facts.
* ``kl_drawdown`` (7): KL(p_base(.|x) || p_e(.|x)) of the next-token distribution at the end of each
  out-of-scope prompt, averaged. The base distributions are cached in float16.

Fluency (ROME §3: weighted bi- and tri-gram entropy of generated text) is :func:`ngram_entropy`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

import torch
from safetensors.torch import load_file

from editkit.edits import EditCase, Probe, ProbeKind
from editkit.errors import ValidationError
from editkit.evaluation.prefill import EDITED_SUBJECT, OWN_SUBJECT, SubjectIndex, asks_edited_fact, subject_cause
from editkit.files import atomic_save_tensors, atomic_write
from editkit.models.lm import LanguageModel, TokenScores
from editkit.progress import progress_bar

log = logging.getLogger(__name__)

IN_SCOPE = (ProbeKind.EDIT, ProbeKind.REPHRASE, ProbeKind.HARD_IN)
OUT_OF_SCOPE = (ProbeKind.NEIGHBORHOOD, ProbeKind.OUT)
CONTRAST_SCORE = {
    ProbeKind.EDIT: "efficacy",
    ProbeKind.REPHRASE: "paraphrase",
    ProbeKind.NEIGHBORHOOD: "neighborhood",
}
KIND_ACCURACY = {ProbeKind.EDIT: "edit_acc", ProbeKind.REPHRASE: "rephrase_acc", ProbeKind.HARD_IN: "hard_in_acc"}
KIND_DRAWDOWN = {ProbeKind.NEIGHBORHOOD: "dd_neighborhood", ProbeKind.OUT: "dd_out"}
# Probes scored together: a batch of out-of-scope probes keeps a float32 row of the vocabulary each (49,152 on
# SmolLM2: 0.2 MB), so scoring 1,000 CounterFact cases in one go held GBs.
CHUNK_PROBES = 1024


def _key(p: Probe) -> tuple[str, str]:
    return (p.prompt, p.expected)


@dataclass
class Reference:
    """What the unedited model does on the probes that need it: greedy predictions and next-token
    distributions on out-of-scope prompts (for ``dd`` and ``kl_drawdown``), and the likelihood of the desired
    responses on in-scope probes of descriptor edits (for z_topic), and its answer to out-of-scope choice probes
    (whether ``expected`` wins). Build it once, before any edit."""

    predictions: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    distributions: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    likelihoods: dict[tuple[str, str], float] = field(default_factory=dict)
    choices: dict[tuple[str, str], bool] = field(default_factory=dict)
    model: str = ""  # the fingerprint of the model it was made on (LanguageModel.fingerprint); empty until extended

    @classmethod
    def build(
        cls, lm: LanguageModel, cases: Sequence[EditCase], *, batch_size: int = 16, progress: bool = False
    ) -> Reference:
        ref = cls()
        ref.extend(lm, cases, batch_size=batch_size, progress=progress)
        return ref

    @torch.no_grad()
    def extend(
        self, lm: LanguageModel, cases: Sequence[EditCase], *, batch_size: int = 16, progress: bool = False
    ) -> int:
        """Add what the unedited ``lm`` does on the cases' probes that the reference does not hold yet; returns
        how many probes were added."""
        if self.model and self.model != lm.fingerprint():
            raise ValidationError(f"this reference was made on another model than {lm.name} (or on other weights)")
        self.model = lm.fingerprint()
        # in the probes' sorted order: a probe's values move in the last bits with its batch, and the cache
        # (:meth:`cached`) shares a reference between runs that read the same probes in other orders
        out = sorted(
            (
                p
                for p in {_key(p): p for c in cases for p in c.of_kind(*OUT_OF_SCOPE)}.values()
                if _key(p) not in self.predictions
            ),
            key=_key,
        )
        with progress_bar(
            len(out), f"unedited {lm.name} on {len(out)} out-of-scope probes", progress and bool(out)
        ) as bar:
            for i in range(0, len(out), batch_size):
                chunk = out[i : i + batch_size]
                lengths = [len(lm.encode(p.expected, special=False)) for p in chunk]
                for p, seq in zip(chunk, lm.greedy_answers([p.prompt for p in chunk], lengths), strict=True):
                    self.predictions[_key(p)] = seq
                bar.advance(len(chunk))
        with progress_bar(
            len(out), f"unedited {lm.name}: next-token distributions of {len(out)} probes", progress and bool(out)
        ) as bar:
            for i in range(0, len(out), CHUNK_PROBES):  # float32 rows of every probe at once would be GBs
                chunk = out[i : i + CHUNK_PROBES]
                dists = lm.next_token_logprobs([p.prompt for p in chunk], batch_size=batch_size).to(torch.float16)
                for p, d in zip(chunk, dists, strict=True):
                    self.distributions[_key(p)] = d.clone()  # its own storage, not a view of the chunk's
                bar.advance(len(chunk))
        sentiment = [
            p
            for c in cases
            if c.request.descriptor
            for p in c.of_kind(*IN_SCOPE)
            if not p.choice and _key(p) not in self.likelihoods
        ]
        if sentiment:
            scores = _score_sorted(lm, _set_pairs(sentiment, contrasts=False), batch_size)
            for p, lik in zip(sentiment, _set_likelihoods(sentiment, scores, contrasts=False), strict=True):
                self.likelihoods[_key(p)] = lik[0]
        fresh = {_key(p): p for c in cases for p in c.of_kind(*OUT_OF_SCOPE) if p.choice}
        chosen = sorted((p for k, p in fresh.items() if k not in self.choices), key=_key)
        if chosen:
            scores = _score_sorted(lm, _set_pairs(chosen), batch_size)
            for p, (l_exp, l_con) in zip(chosen, _set_likelihoods(chosen, scores), strict=True):
                self.choices[_key(p)] = l_exp > l_con
        return len(out) + len(sentiment) + len(chosen)

    @classmethod
    def cached(
        cls, lm: LanguageModel, cases: Sequence[EditCase], root: Path, *, batch_size: int = 16, progress: bool = False
    ) -> Reference:
        """:meth:`build`, kept under ``root`` by the model's fingerprint and the probes' digest, so that another
        run on the same model and probes (another method, another memory) reads it instead of redoing minutes
        of generation. A damaged or mismatched copy is rebuilt."""
        probes = sorted({_key(p) for c in cases for p in c.probes})
        digest = hashlib.sha256(json.dumps([lm.fingerprint(), probes]).encode()).hexdigest()[:24]
        folder = root / digest
        try:
            ref = cls.load(folder)
        except Exception as exc:  # a cache must never stop a run: whatever is wrong with it, build anew
            log.warning("the cached reference in %s cannot be read (%s); building it again", folder, exc)
            ref = cls()
        if ref.model and ref.model != lm.fingerprint():
            ref = cls()
        if ref.extend(lm, cases, batch_size=batch_size, progress=progress):
            ref.save(folder)
        return ref

    def save(self, folder: Path) -> None:
        """Write ``reference.safetensors`` (the distributions, a row per probe) and ``reference.json`` (the
        probes, predictions and likelihoods; written last, so that a file pair is complete or absent)."""
        keys = list(self.distributions)
        tensors = {"distributions": torch.stack([self.distributions[k] for k in keys])} if keys else {}
        atomic_save_tensors(tensors, folder / "reference.safetensors")
        meta = {
            "model": self.model,
            "probes": [list(k) for k in keys],
            "predictions": [self.predictions[k] for k in keys],
            "likelihoods": [[*k, v] for k, v in self.likelihoods.items()],
            "choices": [[*k, v] for k, v in self.choices.items()],
        }
        atomic_write(folder / "reference.json", json.dumps(meta))

    @classmethod
    def load(cls, folder: Path) -> Reference:
        """What :meth:`save` wrote; an empty reference when ``folder`` holds none."""
        if not (folder / "reference.json").exists():
            return cls()
        meta = json.loads((folder / "reference.json").read_text())
        keys = [(p, e) for p, e in meta["probes"]]
        saved = load_file(str(folder / "reference.safetensors"))
        rows = saved.get("distributions", torch.empty((0, 0), dtype=torch.float16))
        if rows.shape[0] != len(keys) or len(meta["predictions"]) != len(keys):
            raise ValidationError(f"{folder}: reference.json and reference.safetensors do not match; delete both")
        ref = cls()
        for i, k in enumerate(keys):
            ref.predictions[k] = meta["predictions"][i]
            ref.distributions[k] = rows[i]
        ref.likelihoods = {(p, e): v for p, e, v in meta["likelihoods"]}
        ref.choices = {(p, e): bool(v) for p, e, v in meta.get("choices", [])}
        ref.model = meta.get("model", "")
        return ref


def _set_pairs(probes: Sequence[Probe], *, contrasts: bool = True) -> list[tuple[str, str | list[int]]]:
    return [(p.prompt, a) for p in probes for a in (p.answers + (p.contrasts if contrasts else ()))]


def _set_likelihoods(
    probes: Sequence[Probe], scores: Sequence[TokenScores], *, contrasts: bool = True
) -> list[tuple[float, float]]:
    """Per probe, the mean per-token log-likelihood averaged over its answers and over its contrasts, from the
    scores of :func:`_set_pairs`."""
    out, i = [], 0
    for p in probes:
        n_a, n_c = len(p.answers), len(p.contrasts) if contrasts else 0
        lik = [float(s.logprobs.mean()) for s in scores[i : i + n_a + n_c]]
        out.append((mean(lik[:n_a]), mean(lik[n_a:]) if n_c else math.nan))
        i += n_a + n_c
    return out


def _score_sorted(
    lm: LanguageModel, pairs: Sequence[tuple[str, str | list[int]]], batch_size: int, *, first: bool = False
) -> list[TokenScores]:
    """``lm.score_tokens`` over pairs, each distinct (prompt, continuation tokens) scored once, in batches
    sorted by length (less padding); returned in the order of ``pairs``."""
    if not pairs:
        return []
    keys = [(p, tuple(c) if isinstance(c, list) else tuple(lm.encode(c, special=False))) for p, c in pairs]
    unique = list(dict.fromkeys(keys))
    unique.sort(key=lambda k: len(lm.encode(k[0])) + len(k[1]))
    scored = lm.score_tokens(
        [p for p, _ in unique], [list(c) for _, c in unique], batch_size=batch_size, first_distribution=first
    )
    by_key = dict(zip(unique, scored, strict=True))
    return [by_key[k] for k in keys]


def kl_divergence(base_logp: torch.Tensor, edited_logp: torch.Tensor) -> float:
    """KL(p_base || p_edited) from two log-distributions over the same vocabulary."""
    base = base_logp.float()
    return float((base.exp() * (base - edited_logp.float())).sum().clamp_min(0.0))


@torch.no_grad()
def score_cases(
    lm: LanguageModel,
    cases: Sequence[EditCase],
    reference: Reference,
    *,
    batch_size: int = 16,
    kinds: Sequence[ProbeKind] = tuple(ProbeKind),
    subjects: SubjectIndex | None = None,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Every metric of the module docstring for each case, on ``lm`` as it is now, from the probes of the given
    ``kinds`` (default all); with ``subjects`` (the edits in ``lm``'s memory) drawdown is also split by cause.
    The probes of up to :data:`CHUNK_PROBES` cases' worth go through the model together in length-sorted
    batches; chunks bound the memory held by out-of-scope next-token distributions (a vocabulary-sized row
    each). ``progress`` shows a bar over the cases, a chunk at a time."""
    out: list[dict[str, float]] = []
    start, n_probes = 0, 0
    with progress_bar(len(cases), f"scoring {len(cases)} cases on {lm.name}", progress) as bar:
        for i, case in enumerate(cases):
            n_probes += len(case.probes)
            if n_probes >= CHUNK_PROBES or i == len(cases) - 1:
                out += _score_chunk(lm, cases[start : i + 1], reference, batch_size, kinds, subjects)
                bar.advance(i + 1 - start)
                start, n_probes = i + 1, 0
    return out


def cached_scores(
    lm: LanguageModel,
    cases: Sequence[EditCase],
    reference: Reference,
    root: Path,
    *,
    batch_size: int = 16,
    kinds: Sequence[ProbeKind] = tuple(ProbeKind),
    progress: bool = False,
) -> list[dict[str, float]]:
    """:func:`score_cases` on the unedited ``lm``, kept under ``root`` by the model's fingerprint, the cases (in
    order, whole: requests and probes), the kinds and the batch size (a score moves in its last bits with its
    batch), so that a resumed run over 10,000 cases reads half an hour of scoring back. A damaged or mismatched
    copy is redone."""
    key = [lm.fingerprint(), repr(list(cases)), sorted(k.value for k in kinds), batch_size]
    path = root / f"scores-{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]}.json"
    try:
        if path.exists():
            kept = json.loads(path.read_text())
            if isinstance(kept, list) and len(kept) == len(cases) and all(isinstance(s, dict) for s in kept):
                return kept
            log.warning("the cached scores in %s are not %d cases' scores; scoring again", path, len(cases))
    except (OSError, ValueError) as exc:  # a cache must never stop a run
        log.warning("the cached scores in %s cannot be read (%s); scoring again", path, exc)
    scores = score_cases(lm, cases, reference, batch_size=batch_size, kinds=kinds, progress=progress)
    atomic_write(path, json.dumps(scores))
    return scores


def _score_chunk(
    lm: LanguageModel,
    cases: Sequence[EditCase],
    reference: Reference,
    batch_size: int,
    kinds: Sequence[ProbeKind],
    subjects: SubjectIndex | None = None,
) -> list[dict[str, float]]:
    of = [(c, [p for p in c.probes if p.kind in kinds]) for c in cases]
    plain = [(c, p) for c, ps in of if not c.request.descriptor for p in ps if p.kind in IN_SCOPE and not p.choice]
    outs = [(c, p) for c, ps in of for p in ps if p.kind in OUT_OF_SCOPE]
    contrast = [(c, p) for c, ps in of for p in ps if p.kind in CONTRAST_SCORE and p.contrast is not None]
    sentiment = [(c, p) for c, ps in of if c.request.descriptor for p in ps if p.kind in IN_SCOPE and not p.choice]
    chosen = [(c, p) for c, ps in of for p in ps if p.choice]

    # One scoring pass for everything without a first-token distribution; repeated pairs are scored once.
    in_pairs: list[tuple[str, str | list[int]]] = [(p.prompt, a) for _, p in plain for a in p.answers]
    margin_pairs = _set_pairs([p for _, p in contrast] + [p for _, p in chosen])
    sent_pairs = _set_pairs([p for _, p in sentiment])
    causes = [subject_cause(c, p.prompt, subjects) for c, p in outs] if subjects is not None else []
    other_pairs: list[tuple[str, str | list[int]]] = [
        (outs[j][1].prompt, other.target_new) for j, (_, other) in enumerate(causes) if other is not None
    ]
    everything = _score_sorted(lm, in_pairs + margin_pairs + sent_pairs + other_pairs, batch_size)
    in_scores = everything[: len(in_pairs)]
    n_before_sent = len(in_pairs) + len(margin_pairs)
    margins = _set_likelihoods([p for _, p in contrast + chosen], everything[len(in_pairs) : n_before_sent])
    choice = {_key(p): l_exp > l_con for (_, p), (l_exp, l_con) in zip(chosen, margins[len(contrast) :], strict=True)}
    sent_liks = _set_likelihoods([p for _, p in sentiment], everything[n_before_sent : n_before_sent + len(sent_pairs)])
    other_scores = iter(everything[n_before_sent + len(sent_pairs) :])
    missing = [
        p for _, p in outs if _key(p) not in reference.predictions or (p.choice and _key(p) not in reference.choices)
    ]
    if missing:
        raise ValueError(f"the reference has no base prediction for {len(missing)} out-of-scope probes; build it first")
    out_scores = _score_sorted(
        lm, [(p.prompt, reference.predictions[_key(p)]) for _, p in outs], batch_size, first=True
    )

    per_case: dict[int, dict[str, list[float]]] = {id(c): {} for c in cases}

    def add(case: EditCase, name: str, value: float) -> None:
        per_case[id(case)].setdefault(name, []).append(value)

    i = 0
    for case, probe in plain:
        scores = in_scores[i : i + len(probe.answers)]
        i += len(probe.answers)
        hit = float(any(s.exact_match for s in scores))
        add(case, "es", hit)
        add(case, KIND_ACCURACY[probe.kind], hit)
        add(case, "token_acc", float(scores[0].greedy.float().mean()))
    for (case, probe), (l_pos, l_neg) in zip(sentiment, sent_liks, strict=True):
        z_sent = 1.0 / (1.0 + math.exp(-(l_pos - l_neg)))
        z_topic = min(1.0, math.exp(l_pos - reference.likelihoods[_key(probe)]))
        add(case, "es", z_sent * z_topic)
        add(case, "z_sent", z_sent)
        add(case, "z_topic", z_topic)
        add(case, KIND_ACCURACY[probe.kind], z_sent * z_topic)
    in_chosen: dict[int, list[float]] = {}
    for case, probe in chosen:
        if probe.kind in IN_SCOPE:
            add(case, "es", float(choice[_key(probe)]))
            add(case, KIND_ACCURACY[probe.kind], float(choice[_key(probe)]))
            in_chosen.setdefault(id(case), []).append(float(choice[_key(probe)]))
    for case in cases:
        if id(case) in in_chosen:
            add(case, "choice_all", float(all(in_chosen[id(case)])))
    for j, ((case, probe), s) in enumerate(zip(outs, out_scores, strict=True)):
        if probe.choice:
            changed = float(choice[_key(probe)] != reference.choices[_key(probe)])
        else:
            changed = 0.0 if s.exact_match else 1.0
        add(case, "dd", changed)
        add(case, KIND_DRAWDOWN[probe.kind], changed)
        if causes:
            cause, other = causes[j]
            add(case, f"dd_{cause}", changed)
            if cause == OWN_SUBJECT:
                fact = "edited" if asks_edited_fact(case.request, probe) else "other"
                add(case, f"dd_own_{fact}_fact", changed)
            if cause == EDITED_SUBJECT and other is not None:
                add(case, "other_edit_answered", float(next(other_scores).exact_match))
        assert s.first_distribution is not None
        add(case, "kl_drawdown", kl_divergence(reference.distributions[_key(probe)], s.first_distribution))
    for (case, probe), (l_exp, l_con) in zip(contrast, margins[: len(contrast)], strict=True):
        margin = l_exp - l_con
        add(case, CONTRAST_SCORE[probe.kind], 1.0 if margin > 0 else 0.0)
        add(case, f"{CONTRAST_SCORE[probe.kind]}_margin", margin)
    return [{k: mean(v) for k, v in sorted(per_case[id(c)].items())} for c in cases]


def ngram_entropy(
    texts: Iterable[str], orders: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)
) -> float:
    """Fluency as in ROME §3: the weighted average of bi- and tri-gram entropies (bits) of generated text,
    averaged over texts. Repetitive, degenerate text scores low."""
    values = []
    for text in texts:
        tokens = text.split()
        parts = []
        for n, w in zip(orders, weights, strict=True):
            grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
            total = sum(grams.values())
            ent = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
            parts.append(w * ent)
        values.append(sum(parts) / sum(weights))
    return mean(values) if values else math.nan
