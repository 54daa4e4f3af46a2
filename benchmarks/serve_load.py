"""Load on ``editkit serve`` over loopback: 1, 4 and 16 concurrent clients mixing 90% queries and 10% edits for
a fixed time each, with batching on (``--max-batch 16``) and off (``--max-batch 1``); then a SIGKILL and a
restart. Every acknowledged edit is checked against the journal afterwards (none lost, none twice).

    python benchmarks/serve_load.py --model smollm2-135m --method lu --seconds 8 \
        --out benchmarks/results/serve_load_smollm2_lu.json

Each (batching, clients) cell starts a fresh server (its own cache folder, so an empty edit store) and waits for
``/healthz``; clients are threads of this process, each with its own HTTP connection, sending requests back to
back: a completion (``max_tokens`` 8) of a question drawn from a pool of 40, or, one time in ten, an edit of a new
question of the pool's kind (unique per request). Queries of edited questions are answered by their edit. The
server and the clients share the machine's cores, so the numbers are of this machine under its own load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
SUBJECTS = ["France", "Japan", "Brazil", "Kenya", "Canada", "Norway", "Chile", "Egypt", "India", "Peru"]
TEMPLATES = ["The capital of {} is", "The currency of {} is the", "The largest city of {} is", "People in {} speak"]
POOL = [t.format(s) for s in SUBJECTS for t in TEMPLATES]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, args: argparse.Namespace, cache: Path, port: int, max_batch: int) -> None:
        env = {**os.environ, "EDITKIT_CACHE": args.model_cache, "PYTHONPATH": str(ROOT / "src")}
        env["OMP_NUM_THREADS"] = str(args.threads)
        argv = [sys.executable, "-m", "editkit.cli", "serve", "--model", args.model, "--method", args.method]
        argv += ["--port", str(port), "--max-batch", str(max_batch), "--tokens", str(cache / "tokens.json")]
        argv += ["--store", str(cache / "edits.sqlite")] if args.memory else ["--journal", str(cache / "journal")]
        for setting in args.set:
            argv += ["--set", setting]
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("listening on"):
                break
        for _ in range(600):
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise SystemExit("editkit serve did not start:\n" + "".join(self.lines))
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep the pipe drained

    def token(self) -> str | None:
        found = [line.rsplit(" ", 1)[-1].strip() for line in self.lines if line.startswith("write token 'admin'")]
        return found[0] if found else None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


def journal(url: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = httpx.get(f"{url}/v1/edits", params={"after": after, "limit": 500}, timeout=30).json()
        out += page["data"]
        if page["next_after"] is None:
            return out
        after = page["next_after"]


def checked(url: str, acknowledged: list[dict[str, Any]]) -> dict[str, int]:
    """The journal against the acknowledged edits: how many are missing (or hold other text), how many twice."""
    listed = journal(url)
    by_id = {e["id"]: e for e in listed}
    lost = [a["id"] for a in acknowledged if a["id"] not in by_id or by_id[a["id"]]["text"] != a["text"]]
    texts = [e["text"] for e in listed]
    return {"journal": len(listed), "lost_edits": len(lost), "duplicated_edits": len(texts) - len(set(texts))}


def load(url: str, model: str, token: str, clients: int, seconds: float, seed: int) -> dict[str, Any]:
    """Clients send requests back to back for ``seconds`` (or until the server dies); returns latencies and the
    acknowledged edits."""
    latencies: dict[str, list[float]] = {"query": [], "edit": []}
    acknowledged: list[dict[str, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(c: int) -> None:
        rng = random.Random(seed * 1000 + c)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            i = 0
            while time.monotonic() < stop:
                i += 1
                t0 = time.perf_counter()
                try:
                    if rng.random() < 0.1:
                        prompt = f"{rng.choice(TEMPLATES).format(f'Country {c}-{i}')}"
                        r = http.post("/v1/edits", json={"prompt": prompt, "target_new": f"answer{c}x{i}"})
                        kind, ok = "edit", r.status_code == 201
                    else:
                        body = {"model": model, "prompt": rng.choice(POOL), "max_tokens": 8}
                        r = http.post("/v1/completions", json=body)
                        kind, ok = "query", r.status_code == 200
                except httpx.HTTPError:  # the server was killed: this request was not acknowledged
                    return
                dt = time.perf_counter() - t0
                with lock:
                    if not ok:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                        continue
                    latencies[kind].append(dt)
                    if kind == "edit":
                        acknowledged.append(r.json())

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0

    def pct(xs: list[float], q: float) -> float | None:
        return round(statistics.quantiles(xs, n=100, method="inclusive")[q - 1] * 1000, 1) if len(xs) > 1 else None

    requests = len(latencies["query"]) + len(latencies["edit"])
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "requests": requests,
        "requests_per_second": round(requests / wall, 2),
        "queries": len(latencies["query"]),
        "edits_acknowledged": len(acknowledged),
        "query_ms": {"p50": pct(latencies["query"], 50), "p99": pct(latencies["query"], 99)},
        "edit_ms": {"p50": pct(latencies["edit"], 50), "p99": pct(latencies["edit"], 99)},
        "errors": len(errors),
        "first_errors": errors[:3],
        "acknowledged": acknowledged,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="lu")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method setting")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--batches", default="16,1", help="--max-batch values to compare")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the server")
    ap.add_argument(
        "--model-cache",
        default=os.environ.get("EDITKIT_CACHE") or str(Path.home() / ".cache" / "editkit"),
        help="where the model is cached (edits and tokens go to a temporary folder of each run)",
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from editkit.editors import create_editor
    from editkit.provenance import code_version, environment

    args.memory = create_editor(args.method).capabilities.storage == "memory"
    batches = [int(b) for b in args.batches.split(",")]
    client_counts = [int(c) for c in args.clients.split(",")]
    runs = []
    with tempfile.TemporaryDirectory(prefix="editkit-serve-load-") as tmp:
        for max_batch in batches:
            for clients in client_counts:
                cache = Path(tmp) / f"b{max_batch}-c{clients}"
                port = free_port()
                server = Server(args, cache, port, max_batch)
                token = server.token()
                assert token is not None
                model = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
                result = load(server.url, model, token, clients, args.seconds, seed=clients)
                result["max_batch"] = max_batch
                result |= checked(server.url, result["acknowledged"])
                text = httpx.get(f"{server.url}/metrics").text
                metrics = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
                passes = float(metrics["editkit_batch_size_count"])
                result["mean_batch"] = round(float(metrics["editkit_batch_size_sum"]) / passes, 2) if passes else None
                server.kill()
                del result["acknowledged"]
                print(json.dumps({k: v for k, v in result.items() if k != "first_errors"}), flush=True)
                runs.append(result)
        # SIGKILL in the middle of a load of the most clients, then a restart on the same store
        clients = max(client_counts)
        cache = Path(tmp) / "kill"
        port = free_port()
        server = Server(args, cache, port, batches[0])
        token = server.token()
        assert token is not None
        model = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
        threading.Timer(args.seconds / 2, server.kill).start()
        killed = load(server.url, model, token, clients, args.seconds, seed=99)
        server = Server(args, cache, port, batches[0])
        fault = {"clients": clients, "killed_after_s": args.seconds / 2}
        fault["edits_acknowledged"] = len(killed["acknowledged"])
        fault |= checked(server.url, killed["acknowledged"])
        server.kill()
        print(json.dumps(fault), flush=True)
    out = {
        "benchmark": "serve_load",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "code_version": code_version(),
        "environment": environment(),
        "model": args.model,
        "method": args.method,
        "settings": args.set,
        "seconds_per_run": args.seconds,
        "mix": {"queries": 0.9, "edits": 0.1, "max_tokens": 8, "question_pool": len(POOL)},
        "runs": runs,
        "kill_9": fault,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
