"""editkit serve: the HTTP API over the edit service, on tiny random models through FastAPI's TestClient (an
httpx client, so the official ``openai`` client runs over it unchanged)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'editkit[serve]')")

import torch
from fastapi.testclient import TestClient

from editkit.editors import create_editor
from editkit.models.tiny import tiny_model
from editkit.server.app import ServeConfig, Server, create_app
from editkit.server.desk import EditDesk
from editkit.server.journal import WeightJournal
from editkit.server.tokens import TokenBook
from editkit.service import EditService

PROMPT = "The capital of Germany is"
OTHER = "Michael Jordan plays the sport of"


class Running:
    """A server over a tiny llama with LU (exact-prompt scope), its test client and tokens."""

    def __init__(
        self,
        folder: Path,
        method: str = "lu",
        journal: bool = False,
        settings: dict[str, Any] | None = None,
        guard: Any = None,
        **config: Any,
    ) -> None:
        if settings is None:
            lu = {"delta": 1e-3, "memory": str(folder / "memory.sqlite")}
            settings = lu if method == "lu" else {"steps": 2, "lr": 0.5}
        self.service = EditService(tiny_model("llama"), create_editor(method, settings), guard=guard)
        self.desk = EditDesk(self.service, WeightJournal(folder / "journal") if journal else None)
        self.restored = len(self.desk.restore())
        self.tokens = folder / f"tokens-{uuid.uuid4().hex}.json"  # a restart in the same folder: new tokens
        book = TokenBook(self.tokens)
        self.write = book.add("alice", "write")
        self.read = book.add("reader", "read")
        self.server = Server(self.desk, book, ServeConfig(**config))
        self.client = TestClient(create_app(self.server), raise_server_exceptions=False)
        self.model = self.service.base.name

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.write}"}

    def ask(self, prompt: str = PROMPT, max_tokens: int = 8) -> dict[str, Any]:
        r = self.client.post("/v1/completions", json={"model": self.model, "prompt": prompt, "max_tokens": max_tokens})
        assert r.status_code == 200, r.text
        choice: dict[str, Any] = r.json()["choices"][0]
        return choice

    def edit(
        self, prompt: str = PROMPT, target: str = "Bonn", token: str | None = None, subject: str | None = None
    ) -> dict[str, Any]:
        body = {"prompt": prompt, "target_new": target, "subject": subject}
        r = self.client.post("/v1/edits", json=body, headers=self.auth(token))
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Running]:
    running = Running(tmp_path)
    yield running
    running.server.close()


# --------------------------------------------------------------------------- the OpenAI API
def test_openai_client_lists_the_model_and_completes_chats_and_streams_naming_the_edit_that_answered(
    srv: Running,
) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=srv.read, http_client=srv.client)
    assert [m.id for m in client.models.list().data] == [srv.model]
    base = client.completions.create(model=srv.model, prompt=PROMPT, max_tokens=3)
    assert base.choices[0].model_extra["editkit"]["answered_by"] == "base"
    edit = srv.edit()
    done = client.completions.create(model=srv.model, prompt=PROMPT, max_tokens=3)
    assert done.choices[0].text == " Bonn"  # LU answers with the label exactly
    assert done.choices[0].model_extra["editkit"]["edit_id"] == edit["id"]
    assert done.choices[0].model_extra["editkit"]["scope_score"] == 1.0
    assert done.usage is not None and done.usage.prompt_tokens > 0
    chat = client.chat.completions.create(
        model=srv.model, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    )
    assert chat.choices[0].message.content == "Bonn"
    assert chat.choices[0].model_extra["editkit"]["edit_id"] == edit["id"]
    stream = client.chat.completions.create(
        model=srv.model, messages=[{"role": "user", "content": PROMPT}], stream=True, max_tokens=3
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Bonn"
    assert chunks[0].choices[0].model_extra["editkit"]["answered_by"] == "edit"
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}
    pieces = list(client.completions.create(model=srv.model, prompt=[PROMPT], max_tokens=3, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == " Bonn"
    other = client.completions.create(model=srv.model, prompt=OTHER, max_tokens=3)
    assert other.choices[0].model_extra["editkit"]["answered_by"] == "base"


def test_an_edit_is_added_listed_filtered_paged_explained_and_rolled_back_to_the_base_answer(srv: Running) -> None:
    before = srv.ask()["text"]
    assert before != " Bonn"
    first = srv.edit()
    assert first["author"] == "alice" and first["text"] == PROMPT and first["status"] == "added"
    again = srv.client.post("/v1/edits", json={"prompt": PROMPT, "target_new": "Bonn"}, headers=srv.auth())
    assert again.status_code == 200 and again.json()["status"] == "duplicate" and again.json()["id"] == first["id"]
    second = srv.edit(OTHER, "tennis")
    assert srv.ask()["text"] == " Bonn" and srv.ask(OTHER)["text"] == " tennis"

    listed = srv.client.get("/v1/edits").json()
    assert [e["id"] for e in listed["data"]] == [first["id"], second["id"]] and listed["total"] == 2
    page = srv.client.get("/v1/edits", params={"limit": 1}).json()
    assert [e["id"] for e in page["data"]] == [first["id"]] and page["next_after"] == first["id"]
    rest = srv.client.get("/v1/edits", params={"limit": 1, "after": page["next_after"]}).json()
    assert [e["id"] for e in rest["data"]] == [second["id"]] and rest["next_after"] is None
    assert [e["id"] for e in srv.client.get("/v1/edits", params={"q": "TENNIS"}).json()["data"]] == [second["id"]]
    assert srv.client.get("/v1/edits", params={"author": "bob"}).json()["total"] == 0
    assert srv.client.get("/v1/edits", params={"since": first["created"] + 3600}).json()["total"] == 0
    assert srv.client.get(f"/v1/edits/{second['id']}").json()["target_new"] == " tennis"

    explained = srv.client.post("/v1/explain", json={"input": PROMPT}).json()
    assert explained["answered_by"] == "edit" and explained["edit_id"] == first["id"]

    gone = srv.client.delete(f"/v1/edits/{first['id']}", headers=srv.auth())
    assert gone.status_code == 200 and gone.json()["status"] == "rolled_back"
    assert srv.ask()["text"] == before and srv.ask(OTHER)["text"] == " tennis"
    assert srv.client.get(f"/v1/edits/{first['id']}").status_code == 404
    metrics = srv.client.get("/metrics").text
    assert 'editkit_requests_total{route="/v1/completions",status="200"}' in metrics
    assert 'editkit_edits_total{op="applied"} 2' in metrics and 'editkit_edits_total{op="rolled_back"} 1' in metrics
    assert 'editkit_answers_total{answered_by="edit"}' in metrics and "editkit_edits_active 1" in metrics
    assert 'editkit_request_seconds_bucket{route="/v1/edits/{edit_id}",le="+Inf"}' in metrics


# --------------------------------------------------------------------------- security
def test_a_statement_edit_is_added_answers_through_rp_and_rolls_back(tmp_path: Path) -> None:
    """``{"statement": ...}`` to a server over RP: stored as its descriptor, it answers every input (threshold 0)
    with the statement in RP's prompt, is found by ``q`` and rolls back to the base answer."""
    rp = {"scope": "embed-untrained", "encoder": "tiny-bert", "threshold": 0.0, "memory": str(tmp_path / "m.sqlite")}
    srv = Running(tmp_path, method="rp", settings=rp)
    before = srv.ask()
    statement = "Bonn ist die Hauptstadt Deutschlands."
    r = srv.client.post("/v1/edits", json={"statement": statement}, headers=srv.auth())
    assert r.status_code == 201, r.text
    view = r.json()
    assert (view["descriptor"], view["text"], view["target_new"], view["status"]) == (statement, "", "", "added")
    again = srv.client.post("/v1/edits", json={"statement": statement}, headers=srv.auth())
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    answer = srv.ask()
    assert answer["editkit"]["answered_by"] == "edit" and answer["editkit"]["edit_id"] == view["id"]
    want = srv.service.base.generate([f"{statement}\n{PROMPT}"], 8)[0]
    assert answer["text"] == want
    assert [e["id"] for e in srv.client.get("/v1/edits", params={"q": "hauptstadt"}).json()["data"]] == [view["id"]]
    assert srv.client.delete(f"/v1/edits/{view['id']}", headers=srv.auth()).status_code == 200
    assert srv.ask()["text"] == before["text"]
    srv.server.close()


def test_writes_need_a_write_token_and_reads_a_read_token_when_asked(tmp_path: Path) -> None:
    srv = Running(tmp_path, read_tokens=True)
    body = {"prompt": PROMPT, "target_new": "Bonn"}
    assert srv.client.post("/v1/edits", json=body).status_code == 401
    assert srv.client.post("/v1/edits", json=body, headers=srv.auth("ek_wrong")).status_code == 401
    assert srv.client.post("/v1/edits", json=body, headers=srv.auth(srv.read)).status_code == 403
    assert srv.client.get("/v1/edits").status_code == 401
    assert srv.client.get("/v1/edits", headers=srv.auth(srv.read)).status_code == 200
    assert srv.client.get("/healthz").json()["status"] == "ok"  # health stays open
    stored = srv.tokens.read_text()
    assert srv.write not in stored and srv.read not in stored  # hashed
    assert srv.client.get("/v1/edits").headers.get("access-control-allow-origin") is None
    srv.server.close()


def test_cors_only_for_configured_origins(tmp_path: Path) -> None:
    srv = Running(tmp_path, cors_origins="https://ok.example")
    ok = srv.client.get("/healthz", headers={"Origin": "https://ok.example"})
    assert ok.headers.get("access-control-allow-origin") == "https://ok.example"
    other = srv.client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert other.headers.get("access-control-allow-origin") is None
    srv.server.close()


LONG = "tok " * 3000  # over the tiny model's 2,048 positions
BAD = {
    "malformed json": ("post", "/v1/edits", b'{"prompt": "x", ', 400),
    "missing target": ("post", "/v1/edits", {"prompt": PROMPT}, 400),
    "unknown field": ("post", "/v1/edits", {"prompt": PROMPT, "target_new": "x", "colour": 1}, 400),
    "edit of 1 MB": ("post", "/v1/edits", {"prompt": PROMPT, "target_new": "x" * 1_000_000}, 413),
    "statement edit to LU": ("post", "/v1/edits", {"statement": "Bonn is the capital of Germany."}, 422),
    "statement with a prompt": ("post", "/v1/edits", {"statement": "Bonn is the capital.", "prompt": PROMPT}, 400),
    "empty statement": ("post", "/v1/edits", {"statement": "  "}, 400),
    "statement over 2,000 characters": ("post", "/v1/edits", {"statement": "word " * 500}, 400),
    "edit not a str": ("post", "/v1/edits", {"prompt": ["a"], "target_new": "x"}, 400),
    "prompt over context": ("post", "/v1/completions", {"model": "M", "prompt": LONG}, 400),
    "negative max_tokens": ("post", "/v1/completions", {"model": "M", "prompt": "x", "max_tokens": -1}, 400),
    "huge max_tokens": ("post", "/v1/completions", {"model": "M", "prompt": "x", "max_tokens": 10**9}, 400),
    "chat zero max_tokens": ("post", "/v1/chat/completions", {"model": "M", "messages": [], "max_tokens": 0}, 400),
    "chat no user": ("post", "/v1/chat/completions", {"model": "M", "messages": [{"role": "system"}]}, 400),
    "unknown model": ("post", "/v1/completions", {"model": "gpt-5", "prompt": "x"}, 404),
    "unknown edit id": ("get", "/v1/edits/999", None, 404),
    "rollback unknown id": ("delete", "/v1/edits/999", None, 404),
    "edit id not a number": ("get", "/v1/edits/abc", None, 400),
    "bad paging": ("get", "/v1/edits?limit=0", None, 400),
    "explain without input": ("post", "/v1/explain", {}, 400),
    "explain over context": ("post", "/v1/explain", {"input": LONG}, 400),
    "chat over context": (
        "post",
        "/v1/chat/completions",
        {"model": "M", "messages": [{"role": "user", "content": LONG}]},
        400,
    ),
    "unknown route": ("get", "/v2/nothing", None, 404),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_4xx_json_error_never_a_500(srv: Running, case: str) -> None:
    method, path, body, status = BAD[case]
    if isinstance(body, dict):
        body = json.loads(json.dumps(body).replace('"M"', json.dumps(srv.model)))
    kwargs: dict[str, Any] = {"headers": srv.auth()}
    if isinstance(body, bytes):
        kwargs["content"] = body
        kwargs["headers"] |= {"Content-Type": "application/json"}
    elif body is not None:
        kwargs["json"] = body
    r = srv.client.request(method.upper(), path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and "Traceback" not in r.text
    assert srv.client.get("/healthz").status_code == 200


def test_a_body_without_a_declared_length_is_cut_at_the_limit(srv: Running) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "' + b"x" * 40_000
        yield b"y" * 40_000 + b'", "target_new": "z"}'

    r = srv.client.post("/v1/edits", content=chunks(), headers=srv.auth() | {"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert srv.client.get("/v1/edits").json()["total"] == 0


# --------------------------------------------------------------------------- batching
def test_concurrent_queries_share_a_pass_and_get_the_answers_they_would_alone(srv: Running) -> None:
    prompts = [PROMPT, OTHER, "Apple was founded by", "The official language of Brazil is", "tok tok"]
    alone = {p: srv.service.answer([p], 3)[0][0] for p in prompts}
    sizes: list[int] = []
    gate = threading.Event()
    answer = srv.service.answer

    def held(ps: list[str], *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(ps))
        gate.wait(10)
        return answer(ps, *args, **kwargs)

    srv.service.answer = held  # type: ignore[method-assign]
    futures = [srv.server.batcher.submit(p, 3) for p in prompts]  # whatever the first pass took, the rest wait
    threading.Timer(0.3, gate.set).start()
    assert [f.result(10)[0] for f in futures] == [alone[p] for p in prompts]
    assert sum(sizes) == len(prompts) and max(sizes) >= len(prompts) - 1


# --------------------------------------------------------------------------- weight editors
def test_weight_edits_are_journalled_reapplied_on_restart_bit_for_bit_and_rolled_back_last_first(
    tmp_path: Path,
) -> None:
    first = Running(tmp_path, method="ft", journal=True)
    a = first.edit()
    b = first.edit(OTHER, "tennis")
    assert (a["id"], b["id"]) == (1, 2) and a["parameters"]
    refused = first.client.delete("/v1/edits/1", headers=first.auth())
    assert refused.status_code == 409 and "roll those back first" in refused.json()["error"]["message"]
    edited = {n: p.detach().clone() for n, p in first.service.base.model.named_parameters()}
    answers = [first.ask()["text"], first.ask(OTHER)["text"]]
    first.server.close()

    again = Running(tmp_path, method="ft", journal=True)
    assert again.restored == 2
    for n, p in again.service.base.model.named_parameters():
        assert torch.equal(p, edited[n]), n
    assert [again.ask()["text"], again.ask(OTHER)["text"]] == answers
    assert [e["id"] for e in again.client.get("/v1/edits").json()["data"]] == [1, 2]
    assert again.client.get("/v1/edits/2").json()["author"] == "alice"
    assert again.client.delete("/v1/edits/2", headers=again.auth()).status_code == 200
    assert again.client.delete("/v1/edits/1", headers=again.auth()).status_code == 200
    base = tiny_model("llama")
    for (n, p), q in zip(again.service.base.model.named_parameters(), base.model.parameters(), strict=True):
        assert torch.equal(p, q), n
    c = again.edit("Apple was founded by", "Gates")
    again.server.close()

    third = Running(tmp_path, method="ft", journal=True)
    assert third.restored == 1 and [e["id"] for e in third.client.get("/v1/edits").json()["data"]] == [c["id"]] == [3]
    third.server.close()


def test_alphaedit_keeps_the_keys_of_its_edits_across_a_restart(tmp_path: Path, tiny_corpus: Path) -> None:
    settings = {
        **{"v_steps": 6, "n_context": 2, "context_length": 4, "v_weight_decay": 0.0, "clamp_norm_factor": 1e4},
        **{"layers": [2], "corpus": str(tiny_corpus), "mom2_n_tokens": 2000, "nullspace_threshold": 0.05},
    }
    first = Running(tmp_path, method="alphaedit", journal=True, settings=settings)
    no_subject = first.client.post("/v1/edits", json={"prompt": PROMPT, "target_new": "Bonn"}, headers=first.auth())
    assert no_subject.status_code == 400 and "subject" in no_subject.json()["error"]["message"]
    first.edit("The Eiffel Tower is located in the city of", "Rome", subject="The Eiffel Tower")
    first.edit("Michael Jordan plays the sport of", "tennis", subject="Michael Jordan")
    first.client.delete("/v1/edits/2", headers=first.auth())
    kept = first.service.editor.export_state(first.service.base)
    assert kept and kept["counts"].tolist() == [1]
    first.server.close()

    again = Running(tmp_path, method="alphaedit", journal=True, settings=settings)
    restored = again.service.editor.export_state(again.service.base)
    assert restored.keys() == kept.keys() and all(torch.equal(restored[k], kept[k]) for k in kept)
    again.server.close()


def test_with_the_guard_a_rejected_edit_is_a_422_and_leaves_model_and_journal_as_they_were(tmp_path: Path) -> None:
    from editkit.evaluation.guard import EditGuard, GuardConfig

    guard = EditGuard(GuardConfig(drift_factor=1.0001, min_history=1, recall_edits=0))
    srv = Running(tmp_path, method="ft", journal=True, guard=guard)
    facts = [(PROMPT, "Bonn"), (OTHER, "tennis"), ("Apple was founded by", "Gates"), ("People in Peru speak", "Dutch")]
    statuses = []
    for prompt, target in facts:
        before = {n: p.detach().clone() for n, p in srv.service.base.model.named_parameters()}
        r = srv.client.post("/v1/edits", json={"prompt": prompt, "target_new": target}, headers=srv.auth())
        statuses.append(r.status_code)
        if r.status_code == 422:
            assert r.json()["error"]["code"] == "edit_rejected" and "median accepted edit" in r.text
            for n, p in srv.service.base.model.named_parameters():
                assert torch.equal(p, before[n]), n
    assert statuses[0] == 201 and 422 in statuses  # a drift above 1.0001x the median is rejected
    listed = srv.client.get("/v1/edits").json()["data"]
    assert len(listed) == statuses.count(201) == len(guard.accepted)
    assert [e["id"] for e in listed] == list(range(1, len(listed) + 1))  # rejected edits take no journal id
    srv.server.close()


def test_a_journal_that_does_not_match_the_model_is_refused(tmp_path: Path) -> None:
    from editkit.errors import ValidationError

    first = Running(tmp_path, method="ft", journal=True)
    first.edit()
    first.server.close()
    path = tmp_path / "journal" / "journal.jsonl"
    entry = json.loads(path.read_text().splitlines()[0])
    entry["edited_sha256"] = {k: "0" * 64 for k in entry["edited_sha256"]}
    path.write_text(json.dumps(entry) + "\n" + '{"op": "apply", "id": 2, "auth')  # and a line cut by a crash
    with pytest.raises(ValidationError, match="differs from what was recorded"):
        Running(tmp_path, method="ft", journal=True)


def test_a_query_never_sees_a_half_applied_weight_edit(tmp_path: Path) -> None:
    """Readers ask while a writer adds weight edits; every answer must be the answer of the model with exactly
    the edits its explanation names (the writer records that answer after each of its edits)."""
    srv = Running(tmp_path, method="ft", journal=True)
    editor = srv.service.editor
    apply = editor.apply

    def slow_apply(*args: Any, **kwargs: Any) -> Any:  # the weights change, then the apply lingers before it ends
        handle = apply(*args, **kwargs)
        time.sleep(0.2)
        return handle

    editor.apply = slow_apply  # type: ignore[method-assign]
    probe = "Apple was founded by"
    expected = {0: srv.ask(probe, 4)["text"]}
    seen: list[tuple[int, str]] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            choice = srv.ask(probe, 4)
            seen.append((len(choice["editkit"]["handles"]), choice["text"]))

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    facts = [(PROMPT, "Bonn"), (OTHER, "tennis"), ("The official language of Brazil is", "French")]
    try:
        for n, (prompt, target) in enumerate(facts, start=1):
            srv.edit(prompt, target)
            expected[n] = srv.ask(probe, 4)["text"]
    finally:
        done.set()
        for t in readers:
            t.join()
    srv.server.close()
    assert len(set(expected.values())) > 1  # the edits change the probe's answer, so a torn read would show
    assert seen and all(text == expected[n] for n, text in seen), (expected, seen)
