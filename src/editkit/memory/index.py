"""A vector index over edit keys (FAISS): exact below a size threshold, approximate (HNSW) above it.

A memory-based editor looks up the edits nearest to every input it serves, so lookup cost grows with the
memory. Exact search (``IndexFlatL2`` in an ``IndexIDMap2``, brute force, O(n) per query) is what small
memories should use: it is exact, supports removal, and costs well under a millisecond per query at 20,000
edits of 384 numbers. Past ``exact_below`` vectors the index switches to HNSW (``IndexHNSWFlat``, sub-linear,
approximate).

HNSW cannot remove vectors. A removed (or re-added) edit's old entry becomes a tombstone: it stays in the graph
and searches fetch more neighbours than asked for and drop tombstones (fetching more again for a query that
came up short). Once tombstones pass 20% of the entries in the graph, the index is rebuilt from the live
vectors, and the rebuild chooses the mode by the live count: an index that shrank below ``exact_below`` goes
back to exact search then (and only then; :meth:`VectorIndex.rebuild` forces it).

Search returns squared Euclidean distances, ascending, and edit ids; ``inf`` / -1 pad rows when fewer than
``k`` vectors are indexed. The index keeps its own copy of every live vector (for rebuilds). Every method holds
one lock, so an index may be shared between threads.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

import faiss
import numpy as np

log = logging.getLogger(__name__)

REBUILD_FRACTION = 0.2  # rebuild an HNSW graph once this fraction of its entries are tombstones


class VectorIndex:
    """Nearest edits by squared L2 distance.

    Args:
        dim: length of every vector.
        exact_below: exact search while fewer vectors than this are indexed; 0 makes the index approximate
            from the first vector.
        hnsw_m: neighbours per node of the HNSW graph (memory and recall grow with it).
        ef_construction: HNSW candidate list length while building (build time and recall grow with it).
        ef_search: minimum HNSW candidate list length while searching (raised to the number fetched).
    """

    def __init__(
        self,
        dim: int,
        *,
        exact_below: int = 20_000,
        hnsw_m: int = 32,
        ef_construction: int = 64,
        ef_search: int = 64,
    ) -> None:
        for name, value, least in (
            ("dim", dim, 1),
            ("exact_below", exact_below, 0),
            ("hnsw_m", hnsw_m, 2),
            ("ef_construction", ef_construction, 1),
            ("ef_search", ef_search, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer of at least {least}, got {value!r}")
        self.dim = dim
        self.exact_below = exact_below
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self._lock = threading.RLock()
        self._vectors: dict[int, np.ndarray] = {}  # id -> its live vector
        # Approximate mode only: HNSW labels are insertion positions; _owner[label] is the id stored there, or -1
        # for a tombstone. _label maps a live id to its label.
        self._owner = np.empty(0, dtype=np.int64)
        self._label: dict[int, int] = {}
        self._tombstones = 0
        self._exact = exact_below > 0
        self._index: faiss.Index = self._empty(exact=self._exact)

    def __repr__(self) -> str:
        mode = "exact" if self._exact else f"hnsw(m={self.hnsw_m}, tombstones={self._tombstones})"
        return f"VectorIndex(dim={self.dim}, n={len(self)}, {mode})"

    @classmethod
    def build(cls, vectors: Mapping[int, np.ndarray], dim: int, **kwargs: int) -> VectorIndex:
        """An index holding ``vectors`` (id -> 1-D vector), built in one pass in the mode its size calls for."""
        index = cls(dim, **kwargs)
        if vectors:
            ids = sorted(vectors)
            index.add(ids, np.stack([np.asarray(vectors[i]) for i in ids]))
        return index

    @property
    def exact(self) -> bool:
        """Whether searches are exact (brute force) rather than approximate (HNSW)."""
        return self._exact

    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, edit_id: object) -> bool:
        return edit_id in self._vectors

    # ------------------------------------------------------------------ internals
    def _empty(self, *, exact: bool) -> faiss.Index:
        if exact:
            return faiss.IndexIDMap2(faiss.IndexFlatL2(self.dim))
        hnsw = faiss.IndexHNSWFlat(self.dim, self.hnsw_m)
        hnsw.hnsw.efConstruction = self.ef_construction
        return hnsw

    def _matrix(self, vectors: np.ndarray, what: str) -> np.ndarray:
        arr = np.asarray(vectors)
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"{what} must be an array of real numbers (float32 preferred), got dtype {arr.dtype}")
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            hint = "; for one vector pass v[None, :]" if arr.ndim == 1 and arr.shape[0] == self.dim else ""
            raise ValueError(f"{what} must have shape [n, {self.dim}], got {list(arr.shape)}{hint}")
        out = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(out).all():
            raise ValueError(f"{what} contain NaN or infinite values (or values beyond float32)")
        return out

    def _append_hnsw(self, ids: Sequence[int], arr: np.ndarray) -> None:
        start = self._index.ntotal
        self._index.add(arr)
        self._owner = np.concatenate([self._owner, np.asarray(ids, dtype=np.int64)])
        for offset, i in enumerate(ids):
            self._label[i] = start + offset

    def _rebuild(self) -> None:
        t0 = time.perf_counter()
        was = "exact" if self._exact else "approximate"
        self._exact = len(self._vectors) < self.exact_below
        self._index = self._empty(exact=self._exact)
        self._owner = np.empty(0, dtype=np.int64)
        self._label = {}
        self._tombstones = 0
        if self._vectors:
            ids = sorted(self._vectors)
            arr = np.stack([self._vectors[i] for i in ids])
            if self._exact:
                self._index.add_with_ids(arr, np.asarray(ids, dtype=np.int64))
            else:
                self._append_hnsw(ids, arr)
        log.info(
            "rebuilt vector index (%s -> %s) over %d vectors in %.2fs",
            was,
            "exact" if self._exact else "approximate",
            len(self._vectors),
            time.perf_counter() - t0,
        )

    def _forget(self, ids: Sequence[int]) -> None:
        """Take live ids out of the faiss index (exact: removed; approximate: tombstoned). Lock held."""
        if not ids:
            return
        if self._exact:  # faiss's Python wrapper accepts an id array where the stubs say IDSelector
            self._index.remove_ids(np.asarray(ids, dtype=np.int64))  # type: ignore[arg-type]
        else:
            labels = [self._label.pop(i) for i in ids]
            self._owner[labels] = -1
            self._tombstones += len(labels)

    def _maybe_rebuild(self) -> None:
        if not self._exact and self._tombstones > REBUILD_FRACTION * max(1, self._index.ntotal):
            self._rebuild()

    # ------------------------------------------------------------------ the interface
    def add(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Index ``vectors`` (``[n, dim]``, float32) under ``ids``; an id already present gets the new vector."""
        arr = self._matrix(vectors, "vectors")
        keys = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int | np.integer) or i < 0:
                raise ValueError(f"ids must be non-negative integers (-1 marks padding), got {i!r}")
            keys.append(int(i))
        if len(keys) != arr.shape[0]:
            raise ValueError(f"{len(keys)} ids for {arr.shape[0]} vectors")
        if len(set(keys)) != len(keys):
            raise ValueError("ids repeat within one add; pass each id once")
        if not keys:
            return
        with self._lock:
            self._forget([i for i in keys if i in self._vectors])
            for i, v in zip(keys, arr, strict=True):
                self._vectors[i] = v.copy()
            if self._exact and len(self._vectors) >= self.exact_below:
                self._rebuild()  # grew past the threshold: one HNSW build over everything, new vectors included
            elif self._exact:
                self._index.add_with_ids(arr, np.asarray(keys, dtype=np.int64))
            else:
                self._append_hnsw(keys, arr)
                self._maybe_rebuild()

    def remove(self, ids: Iterable[int]) -> None:
        """Remove ids from the index; ids that are not indexed are ignored."""
        with self._lock:
            present = [i for i in dict.fromkeys(int(i) for i in ids) if i in self._vectors]
            self._forget(present)
            for i in present:
                del self._vectors[i]
            self._maybe_rebuild()

    def rebuild(self) -> None:
        """Rebuild from the live vectors now: drops tombstones and picks exact or approximate by the live count."""
        with self._lock:
            self._rebuild()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest indexed vectors of each query.

        Returns squared L2 distances ``[n, k]`` (float32, ascending) and ids ``[n, k]`` (int64); where fewer than
        ``k`` vectors are indexed the rest of the row is ``inf`` / -1."""
        q = self._matrix(queries, "queries")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        dist = np.full((q.shape[0], k), np.inf, dtype=np.float32)
        out = np.full((q.shape[0], k), -1, dtype=np.int64)
        with self._lock:
            live = len(self._vectors)
            if live == 0 or q.shape[0] == 0:
                return dist, out
            if self._exact:
                d, i = self._index.search(q, min(k, live))
                found = i >= 0
                dist[:, : d.shape[1]] = np.where(found, np.maximum(d, 0), np.inf)
                out[:, : i.shape[1]] = i
                return dist, out
            self._search_hnsw(q, k, live, dist, out)
        return dist, out

    def nearest_exact(self, queries: np.ndarray) -> np.ndarray:
        """The id of each query's nearest live vector by brute force, whatever the mode (-1 when empty): what an
        approximate search's recall is measured against."""
        q = self._matrix(queries, "queries")
        with self._lock:
            if not self._vectors:
                return np.full(q.shape[0], -1, dtype=np.int64)
            ids = np.fromiter(self._vectors, dtype=np.int64, count=len(self._vectors))
            flat = faiss.IndexFlatL2(self.dim)
            flat.add(np.stack([self._vectors[int(i)] for i in ids]).astype(np.float32))
        _, nearest = flat.search(q, 1)
        return ids[nearest[:, 0]]

    def _search_hnsw(self, q: np.ndarray, k: int, live: int, dist: np.ndarray, out: np.ndarray) -> None:
        """Fill ``dist`` / ``out`` from the graph, over-fetching to make up for tombstones. Lock held."""
        total = self._index.ntotal
        want = min(k, live)
        # Expect tombstones in proportion to their share of the graph; fetch twice that, plus a margin.
        fetch = min(total, k + 2 * math.ceil(k * self._tombstones / live) + (8 if self._tombstones else 0))
        rows = np.arange(q.shape[0])
        while rows.size:
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, fetch))  # type: ignore[attr-defined]
            d, labels = self._index.search(q[rows], fetch, params=params)
            ids = np.where(labels >= 0, self._owner[np.maximum(labels, 0)], -1)
            keep = ids >= 0
            order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept entries first, in distance order
            ids = np.take_along_axis(ids, order, axis=1)
            d = np.where(ids >= 0, np.take_along_axis(d, order, axis=1), np.inf)
            width = ids.shape[1]
            out[rows, :width] = ids
            dist[rows, :width] = d
            short = keep.sum(axis=1) < want
            if not short.any() or fetch >= total:
                return
            rows = rows[short]
            fetch = min(total, 2 * fetch)
