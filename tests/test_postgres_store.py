"""The PostgreSQL edit store against a real server (started by the ``postgres_server`` fixture): the rules every
store follows, two connections racing on one input, and server replicas sharing one journal."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'editkit[serve]')")

import test_memory
from editkit.memory.postgres import PostgresStore, redact
from editkit.memory.store import EditStore, StoreUnavailableError
from editkit.memory.urls import open_store

RULES: list[Callable[[Any], None]] = [
    test_memory.test_add_get_delete_active_and_journal,
    test_memory.test_a_duplicate_of_an_active_edit_writes_nothing,
    test_memory.test_an_edit_of_the_same_input_supersedes_the_older_one,
    test_memory.test_descriptor_and_author_limits,
    test_memory.test_vectors_round_trip_per_space,
    test_memory.test_an_edit_and_its_vectors_are_one_write,
    test_memory.test_threads_share_one_store,
]


@pytest.fixture
def pg(postgres_url: str) -> Iterator[EditStore]:
    with open_store(postgres_url) as store:
        yield store


@pytest.mark.parametrize("rule", RULES, ids=[r.__name__.removeprefix("test_") for r in RULES])
def test_the_store_rules_hold_on_postgresql(pg: EditStore, rule: Callable[[Any], None]) -> None:
    assert isinstance(pg, PostgresStore)
    rule(pg)


def test_export_import_and_reopening_keep_the_journal(postgres_url: str, tmp_path: Path) -> None:
    with open_store(postgres_url) as a:
        first = a.add(test_memory.PM, "pm", author="ops").record
        a.add(test_memory.SPORT, "sport")
        a.delete(first.id)
        a.export_jsonl(tmp_path / "export.jsonl")
    with open_store(postgres_url.replace("postgresql://", "postgres://")) as b:
        assert [r.active for r in b.journal()] == [False, True]
        assert b.import_jsonl(tmp_path / "export.jsonl") == 0  # the active edit is there already
        assert b.add(test_memory.q(1), "q1").record.id == 3  # ids keep increasing


def test_two_connections_racing_on_one_input_leave_one_active_edit(postgres_url: str) -> None:
    stores = [PostgresStore(postgres_url), PostgresStore(postgres_url)]

    def writer(s: PostgresStore, answer: str) -> None:
        for i in range(15):
            s.add(test_memory.q(i % 5, answer), f"q{i % 5}{answer}")

    threads = [threading.Thread(target=writer, args=(s, a)) for s, a in zip(stores, (" yes", " no"), strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.request.text for r in stores[1].active()) == sorted(test_memory.q(i).text for i in range(5))
    for s in stores:
        s.close()


def test_a_lost_connection_fails_one_call_and_the_next_connects_again(postgres_url: str) -> None:
    import psycopg

    with open_store(postgres_url) as store:
        first = store.add(test_memory.PM, "pm").record
        database = postgres_url.rsplit("/", 1)[1]
        with psycopg.connect(postgres_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
        with pytest.raises(StoreUnavailableError, match="failed"):
            store.add(test_memory.SPORT, "sport")
        assert [r.id for r in store.journal()] == [first.id]  # nothing half-written; connected again
        assert store.add(test_memory.SPORT, "sport").status == "added"


def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    with pytest.raises(StoreUnavailableError) as info:
        PostgresStore("postgresql://ed:s3cret@127.0.0.1:1/edits", connect_timeout=2)
    assert "s3cret" not in str(info.value) and "\n" not in str(info.value)
    assert redact("postgresql://ed:s3cret@h/db") == "postgresql://ed:***@h/db"


def test_replicas_see_each_others_edits_and_rollbacks_within_a_second(postgres_url: str, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from editkit.editors import create_editor
    from editkit.models.tiny import tiny_model
    from editkit.server.app import ServeConfig, Server, create_app
    from editkit.server.desk import EditDesk
    from editkit.server.tokens import TokenBook
    from editkit.service import EditService

    book = TokenBook(tmp_path / "tokens.json")
    token = book.add("alice")
    replicas = []
    for _ in range(2):
        service = EditService(tiny_model("llama"), create_editor("lu", {"delta": 1e-3, "memory": postgres_url}))
        server = Server(EditDesk(service), book, ServeConfig(sync_seconds=0.1))
        replicas.append((server, TestClient(create_app(server))))
    (one, a), (_, b) = replicas
    model = one.model_name
    prompt = "The capital of Germany is"

    def answer(client: TestClient) -> str:
        body = {"model": model, "prompt": prompt, "max_tokens": 4}
        text: str = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
        return text

    def within_a_second(check: Callable[[], bool]) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            if check():
                return time.monotonic() - t0
            time.sleep(0.02)
        raise AssertionError("a replica did not see the change within one second")

    before = answer(b)
    auth = {"Authorization": f"Bearer {token}"}
    made = a.post("/v1/edits", json={"prompt": prompt, "target_new": "Bonn"}, headers=auth)
    assert made.status_code == 201
    within_a_second(lambda: answer(b) == " Bonn")
    assert b.get(f"/v1/edits/{made.json()['id']}").json()["author"] == "alice"
    gone = b.delete(f"/v1/edits/{made.json()['id']}", headers=auth)
    assert gone.status_code == 200
    within_a_second(lambda: answer(a) == before)
    for server, _ in replicas:
        server.close()
