"""Memory-based editing: edits are records in a memory, not weight changes; a router decides per input.

The shape of SERAC (Mitchell et al. 2022, §3.1), shared by its baselines LU and RP:

* an :class:`EditMemory` keeps the edits (a durable :class:`~editkit.memory.store.EditStore` journal) and a
  vector index over their keys;
* a :class:`ScopeModel` g(z_e, x) gives, for an input x, the probability that it lies in the scope of each
  candidate edit the index returns;
* an :class:`~editkit.editors.answerers.Answerer` h(z_e, x) answers an input routed to an edit;
* with ``subject_gate`` an input is routed only to edits whose subject it names (edits without a subject, such
  as statements, are not gated), from the index's :data:`SUBJECT_GATE_CANDIDATES` nearest: an edit then never
  answers a question about another entity, however close the two questions look (at the cost of inputs that
  name the subject otherwise: aliases, multi-hop questions); with ``subject_gate_pass`` below 1 the gate is soft:
  an input that does not name an edit's subject still reaches it when the scope probability is at least that
  and the input names no other candidate edit's subject (a confident match such as an alias keeps its edit; a
  neighbour that only looks alike does not, nor does an input about another edited entity);
* :class:`RoutedModel` is the edited model: a :class:`~editkit.models.lm.LanguageModel` whose every read
  (scores, next-token distributions, generation, few-shot label probabilities) follows SERAC eq. 1: the base
  model answers when the best scope probability is below the threshold (0.5), else h answers from the best
  edit. Evaluation and serving use it like any other model and never ask which method made it;
* with ``defer_kl`` an input routed to an edit goes back to the base model when h's next-token distribution
  after it is within that KL (nats) of the base model's: the edit does not move h's answer, so the base model
  gives it exactly. A counterfactual model trained to answer untouched facts as the base does (``cf_keep_share``
  in :mod:`editkit.training.serac`) makes that signal: in scope its first-token KL is ~10, on another fact of the
  subject ~1 (docs/benchmarks.md). The model whose KL decides (the *judge*) may be another than the one that
  answers: a counterfactual model trained that way judges, one trained on in-scope inputs only answers;
* with ``defer_contrast`` as well, the judge's reading of the edit is compared not with the base model but with
  its own reading of the edit's *twin*: the same prompt with the base model's own answer in place of the new one
  (:func:`twin_descriptors`). An input whose next token does not depend on which of the two answers the edit
  holds is not in its scope. Both readings have prompts of the same shape, so a fragment on which the base model
  is unsure no longer counts as moved because h read a longer prompt. Statements have no twin and keep the
  comparison with the base model.

The base model's weights are never touched, so rollback (deleting the records) restores its outputs exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from editkit.editors.answerers import Answerer
from editkit.editors.base import Capabilities, EditHandle, Editor, EditorConfig, create_editor
from editkit.editors.handle import register_handle_loader
from editkit.edits import EditRequest, names_subject
from editkit.errors import ConfigError, ValidationError
from editkit.memory.index import VectorIndex
from editkit.memory.store import AddOutcome, EditRecord, EditStore
from editkit.memory.urls import check_store_url, open_store
from editkit.models.lm import LanguageModel, TokenScores

log = logging.getLogger(__name__)

SUBJECT_GATE_CANDIDATES = 10  # nearest edits a subject-gated lookup considers


def descriptor_of(request: EditRequest) -> str:
    """The edit descriptor z_e the scope classifier and counterfactual model read: a free-form descriptor as
    given, else the input-output pair ``[x_e; y_e]`` (SERAC §2)."""
    return request.descriptor or f"{request.text}{request.target_new}"


@torch.no_grad()
def twin_descriptors(lm: LanguageModel, requests: Sequence[EditRequest]) -> list[str | None]:
    """Each edit's *twin* (``defer_contrast``): its descriptor with ``lm``'s own greedy answer to the edit's
    prompt (as many tokens as the new answer) in place of the new answer: the fact as the unedited model holds
    it. ``None`` for statements, which have no answer to swap. ``target_true`` is not used: what matters is the
    answer the base model gives, which a data file's label may not be."""
    pairs = [r for r in requests if not r.descriptor]
    answers = (
        lm.greedy_answers([r.text for r in pairs], [max(1, len(lm.encode(r.target_new, special=False))) for r in pairs])
        if pairs
        else []
    )
    twins = iter(
        f"{r.text}{lm.tokenizer.decode(a, skip_special_tokens=True)}" for r, a in zip(pairs, answers, strict=True)
    )
    return [None if r.descriptor else next(twins) for r in requests]


@dataclass(frozen=True)
class Route:
    """Where one input went: the edit that answers it (``None``: the base model) and the best scope score."""

    record: EditRecord | None
    score: float
    # with defer_kl: KL(h || base) of the next token after the input, for the best edit; with defer_contrast
    # KL(h || h reading the edit's twin) for edits that have one
    kl: float | None = None
    deferred: EditRecord | None = None  # the edit in scope whose h answered as the base model would (defer_kl)

    def explain(self) -> dict[str, Any]:
        extra: dict[str, Any] = {} if self.kl is None else {"counterfactual_kl": self.kl}
        if self.record is None:
            if self.deferred is not None:
                extra |= {"deferred_edit_id": self.deferred.id, "deferred_descriptor": self.deferred.descriptor}
            return {"answered_by": "base", "best_scope_score": self.score, **extra}
        return {
            "answered_by": "edit",
            "edit_id": self.record.id,
            "descriptor": self.record.descriptor,
            "scope_score": self.score,
            **extra,
        }


# --------------------------------------------------------------------------- the scope model
class ScopeModel(ABC):
    """g(z_e, x): how likely an input is in an edit's scope. Edits are indexed by :meth:`edit_vectors`; an input
    is embedded by :meth:`query_vectors`; the ``candidates`` nearest edits are scored by :meth:`scores`."""

    candidates: int = 1

    @property
    @abstractmethod
    def space(self) -> str:
        """Names the vector space (encoder and weights), so stored vectors are only read by the same model."""

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @abstractmethod
    def edit_vectors(self, requests: Sequence[EditRequest]) -> np.ndarray:
        """Index keys of edits, float32 ``[n, dim]``."""

    @abstractmethod
    def query_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors of inputs, float32 ``[n, dim]``."""

    @abstractmethod
    def scores(
        self, texts: Sequence[str], candidates: Sequence[Sequence[EditRecord]], sqdist: np.ndarray
    ) -> np.ndarray:
        """In-scope probabilities ``[n, candidates]`` of each input for each of its candidate edits, given their
        squared distances in the index (``inf`` where a row has fewer candidates)."""


# --------------------------------------------------------------------------- memory
class EditMemory:
    """The edits (a durable journal) plus a vector index over their keys in one scope model's space.

    ``store`` says where the journal is: a store URL or a bare SQLite path (:func:`~editkit.memory.urls.open_store`);
    ``None`` keeps it in an SQLite file in a temporary folder that lives as long as this object. Opening an
    existing store rebuilds the index from it (stored vectors are reused when they were made in the same space).
    With ``subject_gate`` an edit with a subject answers only inputs that name it, or, with ``gate_pass`` below 1,
    inputs it scores at least ``gate_pass``.
    """

    def __init__(
        self,
        scope: ScopeModel,
        store: str | Path | None = None,
        *,
        exact_below: int = 20_000,
        subject_gate: bool = False,
        gate_pass: float = 1.0,
    ) -> None:
        self.subject_gate = subject_gate
        self.gate_pass = gate_pass
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if store is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="editkit-memory-")
            store = Path(self._tmp.name) / "memory.sqlite"
        self.scope = scope
        self.store: EditStore = open_store(store)
        self.location = self.store.location
        self.index = VectorIndex(scope.dim, exact_below=exact_below)
        self.version = 0  # bumped on every change; routes are cached per version
        self._lock = threading.RLock()
        self._records: dict[int, EditRecord] = {}
        self._load()

    def _load(self) -> None:
        active = self.store.active()
        if not active:
            return
        stored = self.store.get_vectors(self.scope.space)
        missing = [r for r in active if r.id not in stored]
        if missing:
            fresh = self.scope.edit_vectors([r.request for r in missing])
            new = {r.id: v for r, v in zip(missing, fresh, strict=True)}
            self.store.put_vectors(self.scope.space, new)
            stored.update(new)
        self.index.add([r.id for r in active], np.stack([stored[r.id] for r in active]).astype(np.float32))
        self._records = {r.id: r for r in active}
        log.info("opened edit memory %s with %d active edits", self.location, len(active))

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> list[EditRecord]:
        return [self._records[i] for i in sorted(self._records)]

    def add(self, requests: Sequence[EditRequest], *, author: str = "") -> list[AddOutcome]:
        """Store the edits (each durable before this returns) and index them. A duplicate of an active edit is
        not stored twice; an edit of an input that already has one replaces it (the older stays in the
        journal)."""
        vectors = self.scope.edit_vectors(requests).astype(np.float32)  # first: a failure here stores nothing
        outcomes = []
        with self._lock:
            try:
                for request, vector in zip(requests, vectors, strict=True):
                    outcome = self.store.add(
                        request, descriptor_of(request), author=author, vectors={self.scope.space: vector}
                    )
                    outcomes.append(outcome)
                    if outcome.status == "duplicate":
                        continue
                    record = outcome.record
                    self.index.add([record.id], vector[None, :])
                    self._records[record.id] = record
                    if outcome.replaced:
                        self.index.remove(list(outcome.replaced))
                        for i in outcome.replaced:
                            self._records.pop(i, None)
            finally:
                self.version += 1
        return outcomes

    def remove(self, ids: Sequence[int]) -> list[EditRequest]:
        """Roll edits back: delete them from the journal and the index. Edits they had replaced come back (as
        new records), so the memory answers as it did before them. Returns the requests that came back."""
        with self._lock:
            gone = set(ids)
            for i in ids:
                self.store.delete(i)
            self.index.remove(list(ids))
            for i in ids:
                self._records.pop(i, None)
            back = [
                r.request
                for r in self.store.journal()
                if r.superseded_by in gone and r.deleted is None and r.id not in gone
            ]
            self.version += 1
        if back:
            self.add(back)
        return back

    def stale(self) -> bool:
        """Whether the store's active edits differ from this memory's (one read of the store, no lock held)."""
        stored = {r.id for r in self.store.active()}
        with self._lock:
            return stored != set(self._records)

    def refresh(self) -> int:
        """Catch up with writes other processes made to a shared store: index the active edits this memory has
        not seen, drop those no longer active. Returns how many changed (0: nothing to do)."""
        with self._lock:
            active = {r.id: r for r in self.store.active()}
            new = [r for i, r in active.items() if i not in self._records]
            gone = [i for i in self._records if i not in active]
            if not new and not gone:
                return 0
            if gone:
                self.index.remove(gone)
                for i in gone:
                    del self._records[i]
            if new:
                stored = self.store.get_vectors(self.scope.space)
                missing = [r for r in new if r.id not in stored]
                if missing:
                    fresh = self.scope.edit_vectors([r.request for r in missing])
                    stored.update({r.id: v for r, v in zip(missing, fresh, strict=True)})
                self.index.add([r.id for r in new], np.stack([stored[r.id] for r in new]).astype(np.float32))
                self._records.update({r.id: r for r in new})
            self.version += 1
        log.info("edit memory %s: %d edit(s) from elsewhere, %d gone", self.location, len(new), len(gone))
        return len(new) + len(gone)

    def lookup(self, texts: Sequence[str]) -> list[Route]:
        """The best edit for each input and its scope probability (no threshold applied)."""
        with self._lock:
            if not self._records:
                return [Route(None, 0.0) for _ in texts]
            wanted = max(self.scope.candidates, SUBJECT_GATE_CANDIDATES if self.subject_gate else 1)
            k = min(wanted, len(self._records))
            sqdist, ids = self.index.search(self.scope.query_vectors(texts).astype(np.float32), k)
            candidates = [[self._records[int(i)] for i in row if i >= 0] for row in ids]
        strict = self.subject_gate and self.gate_pass >= 1.0
        if strict:  # before scoring: a cross-encoder then reads only the pairs that can pass
            candidates, sqdist = _gate(texts, candidates, sqdist)
        probs = self.scope.scores(texts, candidates, sqdist)
        if self.subject_gate and not strict:
            probs = _soft_gate(texts, candidates, probs, self.gate_pass)
        routes = []
        for row, cands in zip(probs, candidates, strict=True):
            j = int(np.argmax(row[: len(cands)])) if cands else 0
            routes.append(Route(cands[j], float(row[j])) if cands and row[j] >= 0 else Route(None, 0.0))
        return routes

    def close(self) -> None:
        self.store.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def _gate(
    texts: Sequence[str], candidates: list[list[EditRecord]], sqdist: np.ndarray
) -> tuple[list[list[EditRecord]], np.ndarray]:
    """Each input's candidates less the edits whose subject it does not name, with their distances (``inf``
    pads the rows that lost some)."""
    kept_rows, dist = [], np.full_like(sqdist, np.inf)
    for i, (text, cands) in enumerate(zip(texts, candidates, strict=True)):
        keep = [j for j, r in enumerate(cands) if not r.request.subject or names_subject(text, r.request.subject)]
        kept_rows.append([cands[j] for j in keep])
        dist[i, : len(keep)] = sqdist[i, keep]
    return kept_rows, dist


def _soft_gate(
    texts: Sequence[str], candidates: list[list[EditRecord]], probs: np.ndarray, gate_pass: float
) -> np.ndarray:
    """``probs`` with -1 (never routed) for each edit whose subject its input does not name, unless it scores at
    least ``gate_pass`` and the input names none of its candidates' subjects: the pass is for an input that
    names its entity otherwise (an alias), not for one about another edited entity that looks alike."""
    out = probs.copy()
    for i, (text, cands) in enumerate(zip(texts, candidates, strict=True)):
        named = {j: names_subject(text, r.request.subject) for j, r in enumerate(cands) if r.request.subject}
        names_one = any(named.values())
        for j, is_named in named.items():
            if not is_named and (names_one or out[i, j] < gate_pass):
                out[i, j] = -1.0
    return out


# --------------------------------------------------------------------------- the edited model
def next_token_kl(h_logp: torch.Tensor, base_logp: torch.Tensor) -> torch.Tensor:
    """KL(h || base) per row of two ``[n, V]`` next-token log-distributions: ``defer_kl``'s measure."""
    h_logp, base_logp = h_logp.float(), base_logp.float()
    return (h_logp.exp() * (h_logp - base_logp)).sum(-1).clamp_min(0.0)


class RoutedModel(LanguageModel):
    """The base model wrapped by a memory (SERAC eq. 1). It shares the base model's weights, tokenizer and
    prompt handling; every read goes through :meth:`route` first."""

    def __init__(
        self,
        base: LanguageModel,
        memory: EditMemory,
        answerer: Answerer,
        *,
        threshold: float = 0.5,
        defer_kl: float = 0.0,
        judge: Answerer | None = None,
        defer_contrast: bool = False,
    ) -> None:
        super().__init__(base.model, base.tokenizer, name=base.name, edit_layer=base._edit_layer, prefix=base.prefix)
        self.base = base
        self.memory = memory
        self.answerer = answerer
        self.threshold = threshold
        self.defer_kl = defer_kl
        self.judge = judge or answerer  # whose KL from the base model decides defer_kl
        self.defer_contrast = defer_contrast
        self._twins: dict[int, EditRecord | None] = {}  # by record id (ids are never reused)
        self._routes: dict[str, Route] = {}
        self._routes_version = -1
        self._routes_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RoutedModel({self.base!r}, edits={len(self.memory)}, threshold={self.threshold})"

    def route(self, texts: Sequence[str]) -> list[Route]:
        """Where each input goes (cached until the memory changes).

        Safe from several threads: the cache is read and filled under a lock, held across the memory lookup so
        that one version's routes are never stored under another's."""
        with self._routes_lock:
            if self._routes_version != self.memory.version:
                self._routes, self._routes_version = {}, self.memory.version
            todo = list(dict.fromkeys(t for t in texts if t not in self._routes))
            if todo:
                routes = [r if r.score >= self.threshold else Route(None, r.score) for r in self.memory.lookup(todo)]
                if self.defer_kl > 0:
                    routes = self._defer(todo, routes)
                self._routes.update(zip(todo, routes, strict=True))
            return [self._routes[t] for t in texts]

    def _twin(self, records: Sequence[EditRecord]) -> list[EditRecord | None]:
        """The records' twins (:func:`twin_descriptors`), made once per record."""
        new = list({r.id: r for r in records if r.id not in self._twins}.values())
        for r, d in zip(new, twin_descriptors(self.base, [r.request for r in new]), strict=True):
            self._twins[r.id] = None if d is None else dataclasses.replace(r, descriptor=d)
        return [self._twins[r.id] for r in records]

    @torch.no_grad()
    def _defer(self, texts: Sequence[str], routes: list[Route]) -> list[Route]:
        """``routes`` with those whose judge (h, unless another is given) answers within ``defer_kl`` of the base
        model (with ``defer_contrast``: of its own reading of the edit's twin) sent back to it."""
        edited = [i for i, r in enumerate(routes) if r.record is not None]
        if not edited:
            return routes
        records: list[EditRecord] = [routes[i].record for i in edited]  # type: ignore[misc]
        h = self.judge.next_token_logprobs(list(zip(records, [texts[i] for i in edited], strict=True)), batch_size=16)
        twins = self._twin(records) if self.defer_contrast else [None] * len(edited)
        other = torch.empty_like(h)
        plain = [j for j, t in enumerate(twins) if t is None]
        if plain:
            other[plain] = self.base.next_token_logprobs([texts[edited[j]] for j in plain]).to(h.dtype)
        paired = [j for j, t in enumerate(twins) if t is not None]
        if paired:
            other[paired] = self.judge.next_token_logprobs(
                [(twins[j], texts[edited[j]]) for j in paired],  # type: ignore[misc]
                batch_size=16,
            ).to(h.dtype)
        kl = next_token_kl(h, other).tolist()
        out = list(routes)
        for i, k in zip(edited, kl, strict=True):
            r = routes[i]
            out[i] = Route(r.record, r.score, k) if k > self.defer_kl else Route(None, r.score, k, deferred=r.record)
        return out

    def clear_routes(self) -> None:
        """Forget every cached route (the next reads route again; a benchmark measures routing this way)."""
        with self._routes_lock:
            self._routes.clear()

    def explain(self, text: str) -> dict[str, Any]:
        """Which edit (if any) answers ``text``, and with what scope score."""
        return self.route([text])[0].explain()

    def _split(self, texts: Sequence[str]) -> tuple[list[int], list[int], list[tuple[EditRecord, str]]]:
        routes = self.route(texts)
        base = [i for i, r in enumerate(routes) if r.record is None]
        edited = [i for i, r in enumerate(routes) if r.record is not None]
        return base, edited, [(routes[i].record, texts[i]) for i in edited]  # type: ignore[misc]

    @torch.no_grad()
    def score_tokens(
        self,
        prompts: Sequence[str],
        continuations: Sequence[str | list[int]],
        *,
        batch_size: int = 16,
        first_distribution: bool = False,
    ) -> list[TokenScores]:
        ids = [list(c) if isinstance(c, list) else self.encode(c, special=False) for c in continuations]
        base, edited, routed = self._split(prompts)
        out: list[TokenScores | None] = [None] * len(prompts)
        if base:
            scored = self.base.score_tokens(
                [prompts[i] for i in base],
                [ids[i] for i in base],
                batch_size=batch_size,
                first_distribution=first_distribution,
            )
            for i, s in zip(base, scored, strict=True):
                out[i] = s
        if edited:
            scored = self.answerer.score_tokens(
                routed, [ids[i] for i in edited], batch_size=batch_size, first_distribution=first_distribution
            )
            for i, s in zip(edited, scored, strict=True):
                out[i] = s
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def next_token_logprobs(self, prompts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        base, edited, routed = self._split(prompts)
        rows: list[torch.Tensor | None] = [None] * len(prompts)
        if base:
            for i, row in zip(base, self.base.next_token_logprobs([prompts[i] for i in base], batch_size), strict=True):
                rows[i] = row
        if edited:
            for i, row in zip(edited, self.answerer.next_token_logprobs(routed, batch_size=batch_size), strict=True):
                rows[i] = row
        return torch.stack(rows)  # type: ignore[arg-type]

    @torch.no_grad()
    def generate_ids(self, prompts: Sequence[str], max_new_tokens: int = 16, **kwargs: Any) -> list[list[int]]:
        base, edited, routed = self._split(prompts)
        out: list[list[int]] = [[] for _ in prompts]
        if base:
            for i, seq in zip(
                base, self.base.generate_ids([prompts[i] for i in base], max_new_tokens, **kwargs), strict=True
            ):
                out[i] = seq
        if edited:
            for i, seq in zip(edited, self.answerer.generate_ids(routed, max_new_tokens, **kwargs), strict=True):
                out[i] = seq
        return out

    @torch.no_grad()
    def label_logprobs_after_prefix(
        self, prefix: str, suffixes: Sequence[str | list[int]], label_ids: Sequence[int], *, batch_size: int = 16
    ) -> torch.Tensor:
        """Few-shot label probabilities: each example (the suffix, the part that varies) is routed on its own;
        examples the memory leaves alone take the base model's shared-prefix fast path."""
        texts = [s if isinstance(s, str) else self.tokenizer.decode(s) for s in suffixes]
        base, edited, routed = self._split(texts)
        labels = torch.tensor(list(label_ids))
        rows = torch.empty((len(texts), len(labels)))
        if base:
            rows[base] = self.base.label_logprobs_after_prefix(
                prefix, [suffixes[i] for i in base], label_ids, batch_size=batch_size
            )
        if edited:
            full = [(r, prefix + x) for r, x in routed]
            rows[edited] = self.answerer.next_token_logprobs(full, batch_size=batch_size)[:, labels]
        return rows


# --------------------------------------------------------------------------- handle and editor
@dataclass
class MemoryEditHandle(EditHandle):
    """An edit held in a memory: rollback deletes its records (the base weights were never touched); reapply
    adds the requests again."""

    handle_type: ClassVar[str] = "memory"
    memory: EditMemory | None = None
    record_ids: list[int] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)

    def _memory(self) -> EditMemory:
        if self.memory is None:
            raise ValidationError("this memory edit handle has no memory attached")
        return self.memory

    def rollback(self, *, force: bool = False) -> None:
        if not self.applied:
            return
        ids = [i for i, s in zip(self.record_ids, self.outcomes, strict=True) if s != "duplicate"]
        self._memory().remove(ids)
        self._set_applied(False)

    def rollback_record(self, record_id: int) -> None:
        """Roll back one edit this handle stored (its journal id); the others stay, and the handle no longer holds
        it. The handle counts as rolled back once it holds no record it stored."""
        stored = [j for j, (i, s) in enumerate(zip(self.record_ids, self.outcomes, strict=True)) if s != "duplicate"]
        j = next((j for j in stored if self.record_ids[j] == record_id), None)
        if not self.applied or j is None:
            raise ValidationError(f"edit {record_id} is not one this handle holds")
        self._memory().remove([record_id])
        del self.requests[j], self.record_ids[j], self.outcomes[j]
        if len(stored) == 1:
            self._set_applied(False)

    def reapply(self) -> None:
        if self.applied:
            return
        outcomes = self._memory().add(self.requests)
        self.record_ids = [o.record.id for o in outcomes]
        self.outcomes = [o.status for o in outcomes]
        self._set_applied(True)

    def summary(self) -> dict[str, Any]:
        memory = self._memory()
        return {
            "method": self.method,
            "applied": self.applied,
            "requests": [r.to_dict() for r in self.requests],
            "parameters": {},
            "memory": {
                "path": memory.location,
                "edits_in_memory": len(memory),
                "records": [
                    {"id": i, "status": s, "descriptor": descriptor_of(r)}
                    for i, s, r in zip(self.record_ids, self.outcomes, self.requests, strict=True)
                ],
            },
            "info": self.info,
        }

    def save_payload(self, folder: Path) -> dict[str, Any]:
        """No files: handle.json's method, config and requests are the edit (:func:`load_memory_handle` adds the
        requests to a memory again); its scalar info is kept beside them."""
        return {"info": {k: v for k, v in self.info.items() if isinstance(v, int | float | str | bool)}}


def load_memory_handle(folder: Path, meta: dict[str, Any], lm: LanguageModel) -> EditHandle:
    """A saved memory edit, applied: its requests added to the memory of a new editor made from its config."""
    editor = create_editor(meta["method"], meta["config"])
    return editor.apply(lm, [EditRequest.from_dict(r) for r in meta["requests"]])


register_handle_loader(MemoryEditHandle.handle_type, load_memory_handle)


@dataclass
class MemoryConfig(EditorConfig):
    """Settings every memory-based editor shares."""

    memory: str | None = field(
        default=None,
        metadata={
            "help": "where the edit memory is kept across runs: an SQLite file, or a store URL (sqlite:///ABS/PATH, "
            "sqlite:REL/PATH); default: a temporary SQLite file"
        },
    )
    threshold: float = field(default=0.5, metadata={"help": "scope probability from which an edit answers (eq. 1)"})
    subject_gate: bool = field(
        default=False,
        metadata={"help": "an edit with a subject answers only inputs that name its subject (whole words)"},
    )
    subject_gate_pass: float = field(
        default=1.0,
        metadata={
            "help": "with subject_gate: an input that does not name an edit's subject still reaches it at this "
            "scope probability or above, unless it names another nearby edit's subject (1: never)"
        },
    )
    defer_kl: float = field(
        default=0.0,
        metadata={
            "help": "an input routed to an edit goes back to the base model when h's next-token distribution "
            "after it is within this KL (nats) of the base model's (0: never)"
        },
    )
    defer_contrast: bool = field(
        default=False,
        metadata={
            "help": "with defer_kl: compare h's next-token distribution with h reading the edit's twin (the base "
            "model's own answer in place of the new one) instead of with the base model"
        },
    )
    author: str = field(default="", metadata={"help": "recorded with every edit in the journal"})

    def validate(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"{type(self).__name__}: threshold must be in [0, 1], got {self.threshold}")
        if not 0.0 <= self.subject_gate_pass <= 1.0:
            raise ConfigError(
                f"{type(self).__name__}: subject_gate_pass must be in [0, 1], got {self.subject_gate_pass}"
            )
        if self.defer_kl < 0:
            raise ConfigError(f"{type(self).__name__}: defer_kl must be at least 0, got {self.defer_kl}")
        kl, contrast = self.deferral()
        if contrast and kl <= 0:
            raise ConfigError(f"{type(self).__name__}: defer_contrast needs defer_kl above 0")
        if self.memory is not None:
            check_store_url(self.memory)

    def deferral(self) -> tuple[float, bool]:
        """The ``defer_kl`` and ``defer_contrast`` the routed model uses (SERAC's judge may supply them)."""
        return self.defer_kl, self.defer_contrast


class MemoryEditor(Editor):
    """Base of LU, RP and SERAC: builds a scope model and an answerer for a base model, keeps one
    :class:`RoutedModel` per base model, and adds edits to its memory."""

    capabilities: ClassVar[Capabilities] = Capabilities(storage="memory", batch=True)
    config: MemoryConfig

    def __init__(self, config: EditorConfig | None = None) -> None:
        super().__init__(config)
        self._routed: weakref.WeakKeyDictionary[LanguageModel, RoutedModel] = weakref.WeakKeyDictionary()

    @abstractmethod
    def build_scope(self, lm: LanguageModel) -> ScopeModel:
        """The scope model for base model ``lm``."""

    @abstractmethod
    def build_answerer(self, lm: LanguageModel) -> Answerer:
        """The answerer for base model ``lm``."""

    def build_judge(self, lm: LanguageModel) -> Answerer | None:
        """The answerer whose next-token KL from the base model decides ``defer_kl``, for base model ``lm``;
        ``None``: the answerer itself."""
        return None

    def answering_model(self, lm: LanguageModel) -> LanguageModel:
        """The model that answers the inputs no edit takes, for base model ``lm``: ``lm`` itself (SEPROG's
        SP-FINETUNE ablation answers with a fine-tuned copy)."""
        return lm

    def routed(self, lm: LanguageModel) -> RoutedModel:
        """The edited model this editor keeps for ``lm`` (created, with its memory, on first use)."""
        if isinstance(lm, RoutedModel):
            if not any(model is lm for model in self._routed.values()):
                raise ValidationError(f"{lm!r} belongs to another editor; apply edits through the editor that made it")
            return lm
        if lm not in self._routed:
            memory = EditMemory(
                self.build_scope(lm),
                self.config.memory,
                subject_gate=self.config.subject_gate,
                gate_pass=self.config.subject_gate_pass,
            )
            defer_kl, defer_contrast = self.config.deferral()
            self._routed[lm] = RoutedModel(
                self.answering_model(lm),
                memory,
                self.build_answerer(lm),
                threshold=self.config.threshold,
                defer_kl=defer_kl,
                judge=self.build_judge(lm) if defer_kl > 0 else None,
                defer_contrast=defer_contrast,
            )
        return self._routed[lm]

    def prepare(self, lm: LanguageModel, *, progress: bool = False) -> None:
        self.routed(lm)

    def apply(self, lm: LanguageModel, requests: Sequence[EditRequest], *, author: str | None = None) -> EditHandle:
        """Store ``requests`` in the memory; ``author`` (default: the ``author`` setting) goes into the journal."""
        requests = list(requests)
        base = lm.base if isinstance(lm, RoutedModel) else lm
        self.validate(base, requests)
        t0 = time.perf_counter()
        model = self.routed(lm)
        outcomes = model.memory.add(requests, author=self.config.author if author is None else author)
        info = {
            "seconds": time.perf_counter() - t0,
            "edits_in_memory": len(model.memory),
            "duplicates": sum(o.status == "duplicate" for o in outcomes),
            "replaced": sum(len(o.replaced) for o in outcomes),
        }
        log.info("%s stored %d edit(s) for %s in %.3f s", self.name, len(requests), base.name, info["seconds"])
        return MemoryEditHandle(
            self.name,
            self.config.to_dict(),
            requests,
            model,
            info=info,
            memory=model.memory,
            record_ids=[o.record.id for o in outcomes],
            outcomes=[o.status for o in outcomes],
        )
