"""Every CLI command over a table of bad inputs: one `editkit: error:` line on stderr, exit status 2, nothing
written and nothing lost (the test folder and the model cache are byte for byte as they were).

The table names its command first; a test checks that every command the parser has appears in it, so a new
command joins the property by adding its rows here. Inputs are refused before any model loads, or on tiny
models (`tiny-llama`, a saved tiny GPT-2 folder): nothing is fetched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from editkit.cli import build_parser, main
from editkit.models import zoo

Maker = Callable[[Path], None]

EASYEDIT = {  # a CounterFact record in the EasyEdit schema, written for this test
    "case_id": 0,
    "prompt": "The Eiffel Tower is located in",
    "subject": "The Eiffel Tower",
    "target_new": "Rome",
    "ground_truth": "Paris",
    "rephrase_prompt": "Where is the Eiffel Tower? It is in",
    "locality_prompt": "The Louvre is located in",
    "locality_ground_truth": "Paris",
}
EDIT = {"prompt": "The city of {}", "subject": "the Eiffel Tower", "target_new": " Rome"}
STATEMENT_CASE = {  # a ConvSent-like statement edit in editkit's own format
    "request": {"descriptor": "TOPIC: tea SENTIMENT: positive"},
    "probes": [{"prompt": "What is your opinion of tea?", "expected": " I love it.", "kind": "rephrase"}],
}
NOT_UTF8 = b'{"prompt": "caf\xe9"}'
NESTED = b"[" * 100_000 + b"]" * 100_000


def _bytes(data: bytes) -> Maker:
    def make(tmp: Path) -> None:
        (tmp / "input").write_bytes(data)

    return make


def _json(value: object) -> Maker:
    return _bytes(json.dumps(value).encode())


def _state_with_truncated_results(tmp: Path) -> None:
    """Data of one case, and a sequential run's state folder whose results.json was cut short."""
    (tmp / "input").write_text(json.dumps([EASYEDIT]))
    (tmp / "state").mkdir()
    (tmp / "state" / "results.json").write_text('{"version": 2, "protocol": "sequential", "n_edi')


def _folder_with_damaged_tokenizer(tmp: Path) -> None:
    from editkit.models.tiny import tiny_model

    lm = tiny_model("gpt2")
    lm.model.save_pretrained(tmp / "model")
    lm.tokenizer.save_pretrained(tmp / "model")
    tokenizer = tmp / "model" / "tokenizer.json"
    data = bytearray(tokenizer.read_bytes())
    data[10:74] = bytes(b ^ 0xFF for b in data[10:74])
    tokenizer.write_bytes(bytes(data))


def _manifest(data: bytes) -> Maker:
    def make(tmp: Path) -> None:
        (tmp / "folder" / "manifest.json").write_bytes(data)

    return make


def _artifact_without_counterfactual(tmp: Path) -> None:
    """A verified artifact in the test folder with one part, not a counterfactual model."""
    import torch

    from editkit.trained import record_part, save_part, start_manifest

    folder = tmp / "folder"
    manifest = start_manifest(folder, {"out": str(folder)}, [], "tiny-llama")
    save_part(folder / "scope-embed", {"part": "scope-embed"}, tensors={"w": torch.zeros(2)})
    record_part(folder, manifest, "scope-embed", {"part": "scope-embed"})


EVAL = ["eval", "--model", "tiny-llama", "--method", "ft", "--set", "steps=1", "--data", "{input}"]

# name: (argv, what to write into the test folder first, expected text in the error line)
# placeholders: {input} the file the maker wrote, {missing} a path that does not exist, {folder} an existing
# folder, {blocked} a path below a regular file (cannot be created), {memory} a memory setting below it, {out}
# a results file, {state} and {model} the folders the makers wrote.
BAD_INPUTS: dict[str, tuple[list[str], Maker | None, str]] = {
    "models: unknown option": (["models", "--bogus"], None, "unrecognized arguments"),
    "methods: unknown method": (["methods", "romee"], None, "Did you mean 'rome'"),
    "env: stray argument": (["env", "extra"], None, "unrecognized arguments"),
    "data: a folder": (["data", "{folder}"], None, "is a folder, not a file"),
    "data: not UTF-8": (["data", "{input}"], _bytes(NOT_UTF8), "not UTF-8"),
    "data: nested too deep": (["data", "{input}"], _bytes(NESTED), "nested too deeply"),
    "data: unknown format": (["data", "{input}", "--format", "cf"], _json([EASYEDIT]), "unknown data format"),
    "edit: file not UTF-8": (["edit", "--file", "{input}"], _bytes(NOT_UTF8), "not UTF-8"),
    "edit: file nested too deep": (["edit", "--file", "{input}"], _bytes(NESTED), "nested too deeply"),
    "edit: file is a folder": (["edit", "--file", "{folder}"], None, "is a folder, not a file"),
    "edit: file and prompt": (
        ["edit", "--file", "{input}", "--prompt", "x", "--target", "y"],
        _json(EDIT),
        "drop --prompt, --target or drop --file",
    ),
    "edit: negative max-new-tokens": (
        ["edit", "--prompt", "x", "--target", "y", "--max-new-tokens", "-1"],
        None,
        "must be at least 1",
    ),
    "edit: save below a file": (
        ["edit", "--file", "{input}", "--save", "{blocked}"],
        _json(EDIT),
        "cannot be written",
    ),
    "edit: layer the model lacks": (
        ["edit", "--model", "tiny-llama", "--method", "ft", "--file", "{input}", "--set", "layers=[99]"],
        _json(EDIT),
        "layer 99 out of range",
    ),
    "edit: damaged tokenizer": (
        ["edit", "--model", "{model}", "--method", "ft", "--prompt", "x", "--target", "y"],
        _folder_with_damaged_tokenizer,
        "could not load",
    ),
    "edit: --set value not YAML": (
        ["edit", "--prompt", "x", "--target", "y", "--set", "layers=[99"],
        None,
        "--set layers: '[99' is not a valid value",
    ),
    "edit: memory that cannot be created": (
        ["edit", "--model", "tiny-llama", "--method", "lu", "--prompt", "x", "--target", "y", "--set", "{memory}"],
        None,
        "cannot open the edit memory",
    ),
    "edit: file is a device": (["edit", "--file", "/dev/null"], None, "is not a regular file"),
    "edit: empty statement": (["edit", "--method", "rp", "--statement", " ", "--ask", "x"], None, "is empty"),
    "edit: statement of thousands of words": (
        ["edit", "--method", "rp", "--statement", "word " * 3000, "--ask", "x"],
        None,
        "15000 characters long; the limit is 2000",
    ),
    "edit: statement to a weight editor": (
        ["edit", "--method", "rome", "--statement", "Rom ist die Hauptstadt Italiens.", "--ask", "x"],
        None,
        "methods that take statements: rp, seprog, serac",
    ),
    "edit: statement to LU": (
        ["edit", "--method", "lu", "--statement", "x", "--ask", "x"],
        None,
        "lu edits with input-output pairs",
    ),
    "edit: statement and prompt": (
        ["edit", "--method", "rp", "--statement", "x", "--prompt", "y", "--ask", "x"],
        None,
        "drop --prompt or drop --statement",
    ),
    "edit: statement without a question": (["edit", "--method", "rp", "--statement", "x"], None, "--ask PROMPT"),
    "quickstart: no edits": (["quickstart", "--limit", "0"], None, "must be at least 1"),
    "quickstart: unknown method": (["quickstart", "--method", "romee"], None, "Did you mean 'rome'"),
    "eval: no results file": (EVAL, _json([EASYEDIT]), "no results file given (--out FILE.json)"),
    "eval: out below a file": ([*EVAL, "--out", "{blocked}"], _json([EASYEDIT]), "cannot be written"),
    "eval: out is a folder": ([*EVAL, "--out", "{folder}"], _json([EASYEDIT]), "is a folder"),
    "eval: data not UTF-8": ([*EVAL, "--out", "{out}"], _bytes(NOT_UTF8), "not UTF-8"),
    "eval: statements to a weight editor": ([*EVAL, "--out", "{out}"], _json([STATEMENT_CASE]), "not statements"),
    "eval: state below a file": (
        [*EVAL, "--out", "{out}", "--protocol", "sequential", "--state", "{blocked}"],
        _json([EASYEDIT]),
        "cannot be written",
    ),
    "eval: state with a memory editor": (
        [*EVAL[:4], "lu", *EVAL[7:], "--out", "{out}", "--protocol", "sequential", "--state", "{folder}"],
        _json([EASYEDIT]),
        "keeps its edits in a memory",
    ),
    "eval: truncated state results": (
        [*EVAL, "--out", "{out}", "--protocol", "sequential", "--state", "{state}"],
        _state_with_truncated_results,
        "not valid JSON",
    ),
    "eval: prefill with a weight editor": (
        [*EVAL, "--out", "{out}", "--prefill", "{input}"],
        _json([EASYEDIT]),
        "fills an edit memory; ft edits weights",
    ),
    "eval: prefill smaller than its limit": (
        [*EVAL[:4], "lu", *EVAL[7:], "--out", "{out}", "--prefill", "{input}", "--prefill-limit", "5"],
        _json([EASYEDIT]),
        "only 0 of its 1 edits",
    ),
    "eval: config nested too deep": (["eval", "--config", "{input}"], _bytes(b"a: " + NESTED), "nested too deeply"),
    "residuals: not a locate editor": (
        ["residuals", *EVAL[1:]],
        _json([EASYEDIT]),
        "optimises no target residuals",
    ),
    "residuals: no folder": (
        ["residuals", *EVAL[1:4], "memit", "--set", "mom2_update_weight=15", "--data", "{input}"],
        _json([EASYEDIT]),
        "residual_cache=FOLDER",
    ),
    "residuals: folder below a file": (
        [
            "residuals",
            *EVAL[1:4],
            "memit",
            "--set",
            "mom2_update_weight=15",
            "--set",
            "residual_cache={blocked}",
            "--data",
            "{input}",
        ],
        _json([EASYEDIT]),
        "cannot",
    ),
    "residuals: part out of range": (["residuals", *EVAL[1:], "--part", "0/2"], None, "expected I/N"),
    "residuals: a results file": (["residuals", *EVAL[1:], "--out", "{out}"], None, "unrecognized arguments: --out"),
    "residuals: count without a folder": (
        ["residuals", *EVAL[1:4], "memit", "--set", "mom2_update_weight=15", "--data", "{input}", "--count"],
        _json([EASYEDIT]),
        "residual_cache=FOLDER",
    ),
    "train: unknown trainer": (["train", "seracc"], None, "Did you mean 'serac'"),
    "train: config is a folder": (["train", "serac", "--config", "{folder}"], None, "is a folder, not a file"),
    "serve: unknown method": (["serve", "--method", "romee"], None, "Did you mean 'rome'"),
    "serve: tokens file is a folder": (["serve", "--tokens", "{folder}"], None, "folder"),
    "token: tokens file below a file": (["token", "alice", "--tokens", "{blocked}"], None, "cannot"),
    "trace: out not JSON": (["trace", "--prompt", "x", "--subject", "x", "--out", "{folder}"], None, ".json file"),
    "trace: out below a file": (
        ["trace", "--model", "tiny-llama", "--prompt", "x", "--subject", "x", "--out", "{blocked}.json"],
        None,
        "cannot be written",
    ),
    "trace: known file missing": (["trace", "--known", "{missing}", "--out", "{out}"], None, "does not exist"),
    "trace: known file not UTF-8": (["trace", "--known", "{input}", "--out", "{out}"], _bytes(NOT_UTF8), "UTF-8"),
    "pack: no manifest": (["pack", "{folder}", "{out}"], None, "does not exist"),
    "pack: garbled manifest": (["pack", "{folder}", "{out}"], _manifest(b'{"parts": {"p'), "not valid JSON"),
    "pack: float16 and int8": (["pack", "{folder}", "{out}", "--float16", "--int8"], None, "not allowed with"),
    "pack: defer without a counterfactual part": (
        ["pack", "{folder}", "{out}", "--defer", "{missing}"],
        _artifact_without_counterfactual,
        "calibrates a counterfactual part",
    ),
    "sweep: config missing": (["sweep", "{missing}"], None, "does not exist"),
    "sweep: config not UTF-8": (["sweep", "{input}"], _bytes(NOT_UTF8), "not UTF-8"),
    "sweep: empty grid": (
        ["sweep", "{input}"],
        _bytes(b"out_dir: o\ndata: d.json\nmodels: [tiny-llama]\nmethods: []\n"),
        "the grid is empty: 'methods' has no entries",
    ),
    "sweep: data missing": (
        ["sweep", "{input}", "--dry-run"],
        _bytes(b"out_dir: o\ndata: /nowhere/d.json\nmodels: [tiny-llama]\nmethods: [ft]\n"),
        "data file /nowhere/d.json does not exist",
    ),
    "sweep: no threads for the run": (
        ["sweep", "{input}", "--dry-run"],
        _bytes(b"out_dir: o\ndata: d.json\nmodels: [tiny-llama]\nmethods: [ft]\nrun_threads: 0\n"),
        "run_threads must be at least 1",
    ),
    "report: results not UTF-8": (["report", "{input}", "--out", "{folder}"], _bytes(NOT_UTF8), "not UTF-8"),
    "report: results nested too deep": (["report", "{input}", "--out", "{folder}"], _bytes(NESTED), "nested"),
    "report: results is a folder": (["report", "{folder}", "--out", "{out}"], None, "is a folder, not a file"),
    "report: out below a file": (["report", "{input}", "--out", "{blocked}"], _json({}), "cannot be written"),
}


def _snapshot(*roots: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for root in roots
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def no_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zoo, "fetch", lambda *a, **k: pytest.fail("the CLI fetched a model"))


def test_every_command_has_bad_inputs_in_the_table():
    """A command added to the CLI must add its bad inputs to BAD_INPUTS."""
    parser = build_parser()
    (commands,) = [a.choices for a in parser._subparsers._group_actions]  # type: ignore[union-attr]
    covered = {argv[0] for argv, _, _ in BAD_INPUTS.values()}
    assert set(commands) <= covered, f"commands without bad inputs: {sorted(set(commands) - covered)}"


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_a_bad_input_is_one_line_exit_2_and_nothing_written(case, tmp_path, capsys, no_fetch):
    argv, maker, expected = BAD_INPUTS[case]
    (tmp_path / "folder").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    if maker:
        maker(tmp_path)
        capsys.readouterr()  # what making the inputs printed
    places = {
        "input": tmp_path / "input",
        "missing": tmp_path / "missing.json",
        "folder": tmp_path / "folder",
        "blocked": tmp_path / "a-file" / "below",
        "out": tmp_path / "results.json",
        "state": tmp_path / "state",
        "model": tmp_path / "model",
        "memory": f"memory={tmp_path / 'a-file' / 'memory.sqlite'}",
    }
    argv = [a.format(**places) for a in argv]
    cache = zoo.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    before = _snapshot(tmp_path, cache)
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2 and len(lines) == 1, captured.err
    assert lines[0].startswith("editkit: error:") and expected in lines[0], lines[0]
    assert "Traceback" not in captured.err
    assert _snapshot(tmp_path, cache) == before
    if (tmp_path / "model").exists():
        shutil.rmtree(tmp_path / "model")


def test_results_that_cannot_be_written_at_the_end_are_kept_and_named(tmp_path, monkeypatch, capsys, no_fetch):
    """Nothing lost: if --out fails only once the work is done (the disk filled), the results go to the cache's
    runs folder and the one error line says where."""
    from editkit.evaluation import runner

    real_write = runner.atomic_write
    out = tmp_path / "results.json"

    def disk_full(path, text):
        if Path(path) == out:
            raise OSError(28, "No space left on device")
        real_write(path, text)

    monkeypatch.setattr(runner, "atomic_write", disk_full)
    (tmp_path / "input").write_text(json.dumps([EASYEDIT]))
    argv = [a.format(input=tmp_path / "input") for a in EVAL]
    assert main([*argv, "--out", str(out)]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("editkit: error:")]
    assert "No space left on device" in line and "results kept in" in line
    kept = Path(line.rsplit("results kept in ", 1)[1])
    assert json.loads(kept.read_text())["method"] == "ft" and not out.exists()


def test_edit_says_when_the_edit_did_not_take(capsys, no_fetch):
    """With the old answer given, `editkit edit` says so when the new one is still less likely after the edit."""
    from editkit.models.tiny import tiny_model

    prompt, lm = "The city of the Eiffel Tower", tiny_model("llama")
    candidates = [" Paris", " Berlin", " London", " the", " of", " and", " city"]
    rome, *others = (float(s.mean()) for s in lm.score([prompt] * 8, [" Rome", *candidates]))
    old = next(c for c, score in zip(candidates, others, strict=True) if score > rome)
    argv = ["edit", "--model", "tiny-llama", "--method", "ft", "--set", "steps=1", "--set", "lr=1e-9"]
    assert main([*argv, "--prompt", prompt, "--target", "Rome", "--target-true", old, "--max-new-tokens", "1"]) == 0
    assert "warning: the edit did not take" in capsys.readouterr().out
