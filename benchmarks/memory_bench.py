"""What the edit memory costs as it grows: disk bytes per edit, seconds per durable add, opening a memory, and
vector index build time and single-query search latency (exact and HNSW), for memories of 10 to 10,000 edits.

No model is involved: edits are synthetic CounterFact-style requests and their keys random 384-dim vectors (the
size of MiniLM's). For each size N a fresh SQLite memory is filled by importing N - T edits (one transaction,
their vectors in a second) and then T edits added one at a time through ``SQLiteStore.add`` with their vector,
as ``EditMemory`` adds them (one fsynced write each), so the timed adds see a journal of about N edits. Bytes
per edit count the whole file (requests, descriptors, one vector space, indexes, SQLite's page overhead) after
a clean close. Index numbers are from ``VectorIndex.build`` over
the N vectors, exact (``IndexFlatL2``) and forced approximate (``exact_below=0``: HNSW), with recall of the
approximate index against the exact one on the same queries.

    python benchmarks/memory_bench.py --sizes 10 1000 10000 --out benchmarks/results/memory_smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

import editkit
from editkit.edits import EditRequest
from editkit.memory import SQLiteStore, VectorIndex

SPACE = "bench-random-384"
LANGUAGES = [" French", " English", " Spanish", " German", " Italian", " Dutch", " Polish", " Swedish"]


def request(i: int) -> EditRequest:
    return EditRequest(
        prompt="The mother tongue of {} is",
        subject=f"Person number {i}",
        target_new=LANGUAGES[i % len(LANGUAGES)],
        target_true=LANGUAGES[(i + 1) % len(LANGUAGES)],
        case_id=str(i),
    )


def descriptor(r: EditRequest) -> str:
    return f"{r.text}{r.target_new}"  # SERAC's [x_e; y_e], as editors.memory.descriptor_of writes it


def quantiles(seconds: list[float]) -> dict[str, float]:
    arr = np.asarray(seconds)
    return {"median": float(np.median(arr)), "p95": float(np.percentile(arr, 95)), "n": len(seconds)}


def one_size(n: int, args: argparse.Namespace, work: Path, rng: np.random.Generator) -> dict[str, Any]:
    path = work / f"memory_{n}.sqlite"
    timed = min(args.timed_adds, n)
    vectors = rng.normal(size=(n, args.dim)).astype(np.float32)
    out: dict[str, Any] = {"edits": n, "timed_adds": timed}

    export = work / f"edits_{n}.jsonl"
    with export.open("w", encoding="utf-8") as f:
        for i in range(n - timed):
            r = request(i)
            f.write(json.dumps({"request": r.to_dict(), "descriptor": descriptor(r), "author": "bench"}) + "\n")
    with SQLiteStore(path) as store:
        t0 = time.perf_counter()
        imported = store.import_jsonl(export)
        out["import_seconds_per_edit"] = (time.perf_counter() - t0) / max(1, imported)
        ids = [r.id for r in store.active()]
        t0 = time.perf_counter()
        store.put_vectors(SPACE, {i: vectors[j] for j, i in enumerate(ids)})
        out["put_vectors_bulk_seconds"] = time.perf_counter() - t0
        add_seconds = []
        for i in range(n - timed, n):
            r = request(i)
            t0 = time.perf_counter()
            store.add(r, descriptor(r), author="bench", vectors={SPACE: vectors[i]})  # as EditMemory adds
            add_seconds.append(time.perf_counter() - t0)
        assert len(store) == n, f"expected {n} active edits, found {len(store)}"
    out["add_seconds"] = quantiles(add_seconds)
    wal = Path(f"{path}-wal")
    size = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    out["file_bytes"] = size
    out["bytes_per_edit"] = size / n

    t0 = time.perf_counter()
    store = SQLiteStore(path)  # includes PRAGMA integrity_check
    out["open_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    active = store.active()
    stored = store.get_vectors(SPACE)
    out["load_active_and_vectors_seconds"] = time.perf_counter() - t0
    store.close()
    keys = {r.id: stored[r.id] for r in active}

    queries = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    k = min(args.k, n)
    found: dict[str, np.ndarray] = {}
    for mode, kwargs in (("exact", {}), ("hnsw", {"exact_below": 0})):
        t0 = time.perf_counter()
        index = VectorIndex.build(keys, args.dim, **kwargs)
        build = time.perf_counter() - t0
        assert index.exact == (mode == "exact")
        latencies, rows = [], []
        for q in queries:
            t0 = time.perf_counter()
            _, ids_ = index.search(q[None, :], k)
            latencies.append(time.perf_counter() - t0)
            rows.append(ids_[0])
        found[mode] = np.stack(rows)
        out[f"index_{mode}"] = {"build_seconds": build, "search_seconds": quantiles(latencies), "k": k}
    exact, approx = found["exact"], found["hnsw"]
    out["index_hnsw"]["recall_at_1"] = float((exact[:, 0] == approx[:, 0]).mean())
    out["index_hnsw"][f"recall_at_{k}"] = float(
        np.mean([len(set(e) & set(a)) / k for e, a in zip(exact, approx, strict=True)])
    )
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'edits':>6} {'B/edit':>7} {'add ms':>7} {'p95':>6} {'import ms':>9} {'open s':>7} "
        f"{'build ex s':>10} {'build hnsw s':>12} {'search ex ms':>12} {'search hnsw ms':>14} {'R@1':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['edits']:>6} {r['bytes_per_edit']:>7.0f} {1e3 * r['add_seconds']['median']:>7.2f} "
            f"{1e3 * r['add_seconds']['p95']:>6.2f} "
            f"{1e3 * r['import_seconds_per_edit']:>9.3f} {r['open_seconds']:>7.3f} "
            f"{r['index_exact']['build_seconds']:>10.3f} {r['index_hnsw']['build_seconds']:>12.3f} "
            f"{1e3 * r['index_exact']['search_seconds']['median']:>12.3f} "
            f"{1e3 * r['index_hnsw']['search_seconds']['median']:>14.3f} {r['index_hnsw']['recall_at_1']:>5.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 10000], help="numbers of edits")
    ap.add_argument("--dim", type=int, default=384, help="vector length (MiniLM: 384)")
    ap.add_argument("--timed-adds", type=int, default=200, help="durable adds timed one by one at each size")
    ap.add_argument("--queries", type=int, default=200, help="single-vector searches timed per index")
    ap.add_argument("--k", type=int, default=10, help="neighbours per search")
    ap.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads (1: the machine is shared)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the memories go (default: a temp folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    if min(args.sizes) < 1 or args.timed_adds < 1 or args.queries < 1 or args.k < 1:
        ap.error("--sizes, --timed-adds, --queries and --k must be positive")
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    load_average = list(os.getloadavg())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="memory-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        rows = []
        for n in args.sizes:
            rows.append(one_size(n, args, work, rng))
            print(f"{n} edits done ({time.perf_counter() - started:.1f}s)", flush=True)
    result = {
        "benchmark": "memory",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {
            "editkit": editkit.__version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "faiss": faiss.__version__,
            "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": load_average,
        },
        "seconds_total": time.perf_counter() - started,
        "results": rows,
    }
    print(table(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
