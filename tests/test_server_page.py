"""The web page at ``/``: served with a strict content security policy, and driven in a real headless browser
(playwright with the system's chromium; skipped when either is absent): add an edit through the form, ask and
see the edit answer with its routing, roll it back and see the base model's answer again."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'editkit[serve]')")

from fastapi.testclient import TestClient

from editkit.editors import create_editor
from editkit.models.tiny import tiny_model
from editkit.server.app import ServeConfig, Server, create_app
from editkit.server.desk import EditDesk
from editkit.server.tokens import TokenBook
from editkit.service import EditService

PROMPT = "The capital of Germany is"


def make_server(folder: Path) -> tuple[Server, str]:
    service = EditService(tiny_model("llama"), create_editor("lu", {"delta": 1e-3, "memory": str(folder / "m.sqlite")}))
    book = TokenBook(folder / "tokens.json")
    token = book.add("alice")
    return Server(EditDesk(service), book, ServeConfig()), token


def test_the_page_is_served_with_a_content_security_policy(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path)
    page = TestClient(create_app(server)).get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    for element in ('id="ask-form"', 'id="edit-form"', 'id="journal"', 'id="routing"', "/v1/edits"):
        assert element in page.text
    assert ".innerHTML" not in page.text  # user text goes in as textContent only
    server.close()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, str]]:
    import uvicorn

    server, token = make_server(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", token
    uv.should_exit = True
    thread.join(10)
    server.close()


def test_add_ask_and_roll_back_through_the_page_in_a_headless_browser(live: tuple[str, str], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium executable (Debian: apt-get install chromium)")
    url, token = live
    artefacts = Path(os.environ.get("EDITKIT_TEST_ARTIFACTS", tmp_path))
    artefacts.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url)
        sync_api.expect(page.locator("#model")).to_contain_text("with lu")

        page.fill("#ask-input", PROMPT)
        page.click("#ask-button")
        sync_api.expect(page.locator("#routing")).to_contain_text("base model")
        before = page.text_content("#answer")

        page.fill("#edit-prompt", PROMPT)
        page.fill("#edit-target", "Bonn")
        page.fill("#token", token)
        page.click("#edit-button")
        sync_api.expect(page.locator("#journal tr")).to_have_count(1)
        sync_api.expect(page.locator("#journal")).to_contain_text("alice")

        page.click("#ask-button")
        sync_api.expect(page.locator("#routing")).to_contain_text("answered by edit 1")
        sync_api.expect(page.locator("#answer")).to_have_text("Bonn")
        page.screenshot(path=str(artefacts / "serve_page.png"), full_page=True)

        page.click("#journal button.rollback")
        sync_api.expect(page.locator("#journal tr")).to_have_count(0)
        page.click("#ask-button")
        sync_api.expect(page.locator("#routing")).to_contain_text("base model")
        assert page.text_content("#answer") == before
        browser.close()
    assert (artefacts / "serve_page.png").stat().st_size > 0
