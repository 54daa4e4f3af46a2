"""editkit.memory.urls: edit stores chosen by URL (sqlite: URLs, bare paths, registered schemes, unknown ones)."""

from __future__ import annotations

from pathlib import Path

import pytest

from editkit.edits import EditRequest
from editkit.errors import UnknownNameError, ValidationError
from editkit.memory import EditStore, SQLiteStore, open_store, register_store, store_schemes, urls

PM = EditRequest(prompt="Who is the UK PM?", target_new=" Boris Johnson")


def _opened(url: str | Path) -> Path:
    store = open_store(url)
    try:
        assert isinstance(store, SQLiteStore)
        store.add(PM, "pm")
        return store.path
    finally:
        store.close()


def test_sqlite_urls_and_bare_paths_open_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "sub" / "memory.sqlite"
    assert _opened(f"sqlite://{target}") == target  # sqlite:///abs/path: the path keeps its leading slash
    monkeypatch.chdir(tmp_path)
    assert _opened("sqlite:sub/memory.sqlite") == Path("sub/memory.sqlite")
    assert _opened(str(target)) == target
    assert _opened(target) == target
    assert _opened("sub/memory.sqlite") == Path("sub/memory.sqlite")
    with SQLiteStore(target) as store:
        assert len(store.journal()) == 1  # every form opened the one file; the same edit was a duplicate
        assert store.location == str(target)


def test_a_bare_path_with_a_colon_is_still_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert _opened("run:2.sqlite") == Path("run:2.sqlite")
    assert (tmp_path / "run:2.sqlite").is_file()


def test_an_unregistered_scheme_is_one_line_naming_the_known_ones() -> None:
    with pytest.raises(UnknownNameError) as info:
        open_store("mysql://editkit@db.example/edits")
    message = str(info.value)
    assert "\n" not in message and "'mysql'" in message and "Known: postgres, postgresql, sqlite." in message


@pytest.mark.parametrize(
    ("url", "match"),
    [("sqlite://host/x.sqlite", "names no host"), ("sqlite:", "names no file"), ("sqlite:///", "names no file")],
)
def test_malformed_sqlite_urls_are_refused(url: str, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        open_store(url)


def test_a_registered_scheme_gets_the_whole_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urls, "_FACTORIES", urls._FACTORIES.copy())
    seen: list[str] = []

    def factory(url: str) -> EditStore:
        seen.append(url)
        return SQLiteStore(tmp_path / "fake.sqlite")

    register_store("fakedb", factory)
    assert store_schemes() == ["fakedb", "postgres", "postgresql", "sqlite"]
    open_store("FakeDB://user@host:5432/edits?sslmode=require").close()
    assert seen == ["FakeDB://user@host:5432/edits?sslmode=require"]
    open_store("fakedb:short").close()  # a registered scheme needs no //
    assert seen[-1] == "fakedb:short"
    register_store("fakedb", factory)  # the same factory again is harmless
    with pytest.raises(ValueError, match="registered twice"):
        register_store("FAKEDB", lambda url: factory(url))
    with pytest.raises(ValueError, match="store scheme"):
        register_store("1db", factory)


def test_a_memory_editor_reads_a_store_url(tmp_path: Path) -> None:
    from editkit.editors import create_editor
    from editkit.models.tiny import tiny_model

    path = tmp_path / "edits.sqlite"
    settings = {"scope": "embed-untrained", "encoder": "tiny-bert", "threshold": 0.0}
    handle = create_editor("rp", {**settings, "memory": f"sqlite://{path}"}).apply(tiny_model("llama"), [PM])
    assert handle.summary()["memory"]["path"] == str(path)
    reopened = create_editor("rp", {**settings, "memory": str(path)}).routed(tiny_model("llama"))
    assert [r.request for r in reopened.memory.records()] == [PM]
    with pytest.raises(UnknownNameError, match="edit store scheme"):
        create_editor("rp", {**settings, "memory": "mysql://db/edits"})  # refused before any model loads
    with pytest.raises(ValidationError, match="names no host"):
        create_editor("lu", {"memory": "sqlite://host/edits.sqlite"})
