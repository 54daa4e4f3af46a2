"""Shared fixtures. Tiny random models for fast tests; SmolLM2 (from the model cache) for real-model tests;
benchmark data read by path from ``$EDITKIT_DATA`` (default: ``../shared/data`` beside the repository)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

import toy_editor  # noqa: F401  (registers the test-only trained editor and trainer "toy")
from editkit.models.lm import LanguageModel
from editkit.models.tiny import tiny_model

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EDITKIT_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` imported as module ``NAME`` (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def data_file(rel: str) -> Path:
    """A benchmark file, checked against the data set's MANIFEST; the test is skipped when it is absent."""
    path = DATA / rel
    if not path.is_file():
        pytest.skip(f"benchmark data {path} not available (set EDITKIT_DATA)")
    manifest = DATA / "MANIFEST.json"
    if manifest.is_file():
        for entry in json.loads(manifest.read_text()):
            if entry.get("file") == rel:
                assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], f"{path} differs from MANIFEST"
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Unit tests get an empty cache; real-model tests keep the user's (where the model was fetched). No test
    trains an editor's parts on first use unless it turns that on (tests/test_enn_first_use.py)."""
    monkeypatch.setenv("EDITKIT_TRAIN_ON_FIRST_USE", "0")
    if request.node.get_closest_marker("real_model") is None:
        monkeypatch.setenv("EDITKIT_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(params=["llama", "gemma3", "gpt2", "gptj", "gpt_neox", "t5"])
def any_arch(request: pytest.FixtureRequest) -> LanguageModel:
    return tiny_model(request.param)


@pytest.fixture
def llama() -> LanguageModel:
    return tiny_model("llama")


@pytest.fixture(scope="session")
def smollm2() -> LanguageModel:
    from editkit.models.zoo import load

    return load("smollm2-135m", progress=False)


@pytest.fixture(scope="session")
def wikitext() -> Path:
    return data_file("wikitext/wikitext-2/valid.txt")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small text file for key statistics of tiny models (the text their tokenizer was trained on)."""
    from editkit.models.tiny import TEXT

    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(TEXT * 30)
    return path


TINY_FACTS = [
    ("The Eiffel Tower is located in the city of", "The Eiffel Tower stands in the city of", " Rome"),
    ("Michael Jordan plays the sport of", "The sport Michael Jordan plays is", " tennis"),
    ("The capital of Germany is", "Germany's capital city is", " Bonn"),
    ("Apple was founded by", "The founder of Apple is", " Bill Gates"),
    ("The official language of Brazil is", "People in Brazil speak", " French"),
    ("Lionel Messi plays the sport of", "The sport Lionel Messi plays is", " cricket"),
]


def write_tiny_cases(path: Path) -> Path:
    """Six edit cases in editkit's format, written for the tests: edit, rephrase and one unrelated probe each."""
    lines = []
    for i, (prompt, rephrase, target) in enumerate(TINY_FACTS):
        other = TINY_FACTS[(i + 1) % len(TINY_FACTS)][0]
        case = {
            "request": {"prompt": prompt, "target_new": target, "case_id": f"tiny-{i}"},
            "probes": [
                {"prompt": prompt, "expected": target, "kind": "edit"},
                {"prompt": rephrase, "expected": target, "kind": "rephrase"},
                {"prompt": other, "expected": " Paris", "kind": "out"},
            ],
        }
        lines.append(json.dumps(case))
    path.write_text("\n".join(lines) + "\n")
    return path


TINY_TRAINING = {
    "encoder": "tiny-bert",
    "base_model": "tiny-llama",
    "scope_steps": 3,
    "scope_batch": 4,
    "cf_steps": 3,
    "cf_batch": 4,
    "hard_negatives": 2,
    "checkpoint_every": 2,
}


@pytest.fixture(scope="session")
def serac_parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SERAC's three parts trained for a few steps on tiny models (the training itself: tests/test_training.py)."""
    from editkit.training.serac import SERACTrainConfig, train

    folder = tmp_path_factory.mktemp("serac")
    data = write_tiny_cases(folder / "cases.jsonl")
    train(
        SERACTrainConfig.from_dict({**TINY_TRAINING, "data": [str(data)], "out": str(folder / "parts")}), progress=False
    )
    return folder / "parts"


def _postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server binaries (initdb, pg_ctl), or None."""
    import shutil

    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return candidates[-1].parent if candidates else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server for the session: initdb in a temporary folder, on a free loopback port, trust
    authentication, stopped and removed at the end. Its URL names the server, not a database. As root, initdb
    and the server run as the ``postgres`` user (initdb refuses root); skipped when the binaries are absent."""
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile

    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'editkit[serve]')")
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="editkit-pg-"))
    if os.geteuid() == 0:
        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run initdb as")
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chown(folder, pg.pw_uid, pg.pw_gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"

    def run(*argv: str) -> None:
        subprocess.run([*as_user, *argv], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "editkit", "--auth=trust", "--no-sync")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    ctl = [str(bindir / "pg_ctl"), "-D", str(data)]
    run(*ctl, "-o", options, "-l", str(folder / "log"), "-w", "start")
    try:
        yield f"postgresql://editkit@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, *ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A new, empty database on the session's PostgreSQL server."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return f"{postgres_server}/{name}"
