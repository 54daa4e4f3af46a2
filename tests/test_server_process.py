"""``editkit serve`` as a real process (uvicorn on a free loopback port, a tiny model saved to a folder): the
defaults work with no store or tokens flag (a write token printed once, on first start only), a server killed
with SIGKILL while clients add edits keeps every edit it acknowledged, and of two replicas on one PostgreSQL
store, the one left after the other is killed keeps serving and sees every edit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'editkit[serve]')")

import httpx

from editkit.models.tiny import tiny_model

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    lm = tiny_model("llama")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    def __init__(self, model: Path, cache: Path, port: int, extra: tuple[str, ...] = ()) -> None:
        env = {
            **os.environ,
            "EDITKIT_CACHE": str(cache),
            "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        argv = [sys.executable, "-m", "editkit.cli", "serve", "--model", str(model), "--method", "lu"]
        argv += ["--set", "delta=0.001", "--port", str(port), *extra]
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("listening on"):
                break
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.kill()
        raise AssertionError("editkit serve did not start:\n" + "".join(self.lines))

    def token(self) -> str | None:
        found = [line.rsplit(" ", 1)[-1].strip() for line in self.lines if line.startswith("write token 'admin'")]
        return found[0] if found else None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


def test_defaults_then_kill_9_mid_load_keeps_every_acknowledged_edit(model_folder: Path, tmp_path: Path) -> None:
    port = free_port()
    first = Process(model_folder, tmp_path / "cache", port)
    token = first.token()
    assert token is not None and token.startswith("ek_")
    assert token not in (tmp_path / "cache" / "serve" / "tokens.json").read_text()
    assert any(line.startswith("listening on http://127.0.0.1:") for line in first.lines)
    auth = {"Authorization": f"Bearer {token}"}
    acknowledged: list[int] = []
    stop = threading.Event()

    def client(c: int) -> None:
        with httpx.Client(base_url=first.url, headers=auth, timeout=10) as http:
            for i in range(1000):
                if stop.is_set():
                    return
                try:
                    r = http.post("/v1/edits", json={"prompt": f"Question {c}-{i} is", "target_new": f"answer{i}"})
                except httpx.HTTPError:
                    return  # the server died under us: this edit was not acknowledged
                if r.status_code == 201:
                    acknowledged.append(r.json()["id"])

    clients = [threading.Thread(target=client, args=(c,)) for c in range(3)]
    for t in clients:
        t.start()
    while len(acknowledged) < 10:
        time.sleep(0.01)
    first.kill()
    stop.set()
    for t in clients:
        t.join()

    second = Process(model_folder, tmp_path / "cache", port)
    try:
        assert second.token() is None  # printed once, on the first start only
        listed = httpx.get(f"{second.url}/v1/edits", params={"limit": 500}).json()
        ids = [e["id"] for e in listed["data"]]
        assert set(acknowledged) <= set(ids) and len(ids) == len(set(ids))
        assert all(e["author"] == "admin" for e in listed["data"])
        last = next(e for e in listed["data"] if e["id"] == acknowledged[-1])
        body = {"model": str(model_folder), "prompt": last["text"], "max_tokens": 8}
        answer = httpx.post(f"{second.url}/v1/completions", json=body, timeout=30).json()["choices"][0]
        assert answer["text"] == last["target_new"] and answer["editkit"]["edit_id"] == last["id"]
    finally:
        second.kill()


def test_two_replicas_on_postgresql_one_killed_the_other_serves_every_edit(
    model_folder: Path, tmp_path: Path, postgres_url: str
) -> None:
    shared = ("--store", postgres_url, "--tokens", str(tmp_path / "tokens.json"), "--sync-seconds", "0.2")
    one = Process(model_folder, tmp_path / "one", free_port(), shared)
    two = Process(model_folder, tmp_path / "two", free_port(), shared)
    try:
        token = one.token()
        assert token is not None and two.token() is None  # one tokens file, one admin token
        auth = {"Authorization": f"Bearer {token}"}
        made = [
            httpx.post(f"{p.url}/v1/edits", json={"prompt": f"Question {i} is", "target_new": f"a{i}"}, headers=auth)
            for i, p in enumerate((one, two, one))
        ]
        assert [r.status_code for r in made] == [201, 201, 201]
        one.kill()
        deadline = time.monotonic() + 1.0
        while True:
            ids = {e["id"] for e in httpx.get(f"{two.url}/v1/edits").json()["data"]}
            if ids == {r.json()["id"] for r in made} or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert ids == {r.json()["id"] for r in made}
        body = {"model": str(model_folder), "prompt": "Question 2 is", "max_tokens": 8}
        answer = httpx.post(f"{two.url}/v1/completions", json=body, timeout=30).json()["choices"][0]
        assert answer["text"] == " a2" and answer["editkit"]["edit_id"] == made[2].json()["id"]
        later = httpx.post(f"{two.url}/v1/edits", json={"prompt": "Question 9 is", "target_new": "b"}, headers=auth)
        assert later.status_code == 201
    finally:
        for p in (one, two):
            if p.proc.poll() is None:
                p.kill()
