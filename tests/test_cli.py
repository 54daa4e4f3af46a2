"""The command line, called in-process: listings, and user errors as one line with status 2, before any model
is loaded."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
import torch

from conftest import write_tiny_cases
from editkit.cli import main
from editkit.models import zoo


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the CLI tries to fetch or load a model."""
    monkeypatch.setattr(zoo, "load", lambda *a, **k: pytest.fail("the CLI loaded a model"))
    monkeypatch.setattr(zoo, "fetch", lambda *a, **k: pytest.fail("the CLI fetched a model"))


def test_methods_lists_the_builtin_methods(capsys):
    """`editkit methods` lists every registered method."""
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("rome", "ft", "ft-c"):
        assert f" {name} " in out


def test_methods_name_lists_its_settings(capsys):
    """`editkit methods rome` shows ROME's settings."""
    assert main(["methods", "rome"]) == 0
    out = capsys.readouterr().out
    assert "v_lr" in out and "corpus" in out


def test_models_lists_the_zoo_with_cache_status(capsys, no_model):
    """`editkit models` lists the zoo and reports an empty cache as missing."""
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "smollm2-135m" in line)
    assert "missing" in row
    assert str(zoo.cache_dir()) in out


def test_env_reports_versions(capsys):
    """`editkit env` prints what a bug report needs, including the torch version."""
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert torch.__version__ in out
    assert str(zoo.cache_dir()) in out


def _file(content: str) -> Callable[[Path], str]:
    def write(tmp: Path) -> str:
        path = tmp / "edit.json"
        path.write_text(content)
        return str(path)

    return write


VALID = {"prompt": "The Eiffel Tower is located in", "subject": "Eiffel Tower", "target_new": " Rome"}
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

# (argv with "{file}" replaced by the path the maker writes, maker, expected text in the message)
USER_ERRORS = {
    "unknown method": (["edit", "--method", "romee", "--prompt", "x", "--target", "y"], None, "Did you mean 'rome'"),
    "unknown method to describe": (["methods", "romee"], None, "Did you mean 'rome'"),
    "missing file": (["edit", "--file", "{missing}"], None, "does not exist"),
    "invalid JSON": (["edit", "--file", "{file}"], _file("{prompt: x"), "is not valid JSON"),
    "JSON not an object": (["edit", "--file", "{file}"], _file("42"), "must hold one JSON object"),
    "unknown field": (["edit", "--file", "{file}"], _file(json.dumps({**VALID, "promt": "x"})), "unknown fields"),
    "no prompt or target": (["edit"], None, "give --prompt and --target"),
    "bad --set": (["edit", "--prompt", "x", "--target", "y", "--set", "v_lr"], None, "KEY=VALUE"),
    "unknown setting": (["edit", "--prompt", "x", "--target", "y", "--set", "v_lrr=1"], None, "Did you mean 'v_lr'"),
    "ROME without subject": (["edit", "--prompt", "The Eiffel Tower is in", "--target", "Rome"], None, "subject"),
    "unknown memory store": (
        ["edit", "--method", "lu", "--prompt", "x", "--target", "y", "--set", "memory=mysql://db/edits"],
        None,
        "unknown edit store scheme 'mysql'. Known: postgres, postgresql, sqlite.",
    ),
    "serve: a store for a weight editor": (["serve", "--method", "rome", "--store", "x.sqlite"], None, "--journal"),
    "serve: unknown store": (["serve", "--method", "lu", "--store", "mysql://db/x"], None, "unknown edit store"),
    "serve: unknown method": (["serve", "--method", "romee"], None, "Did you mean 'rome'"),
    "serve: guard on a memory editor": (["serve", "--method", "lu", "--guard"], None, "the guard checks weight"),
    "serve: unknown guard setting": (
        ["serve", "--method", "ft", "--guard-set", "drift=2"],
        None,
        "Did you mean 'drift_factor'",
    ),
    "eval: missing data file": (["eval", "--data", "{missing}", "--out", "{out}"], None, "does not exist"),
    "eval: malformed record": (
        ["eval", "--data", "{file}", "--out", "{out}"],
        _file(json.dumps([{**EASYEDIT, "case_id": 1}, {**EASYEDIT, "target_new": ""}])),
        "record 1",
    ),
    "eval: not JSON": (["eval", "--data", "{file}", "--out", "{out}"], _file("[{prompt: x"), "is not valid JSON"),
    "eval: schema is not --format": (
        ["eval", "--data", "{file}", "--format", "zsre-mend", "--out", "{out}"],
        _file(json.dumps([EASYEDIT])),
        "does not look like 'zsre-mend'",
    ),
    "eval: empty data set": (["eval", "--data", "{file}", "--out", "{out}"], _file("[]"), "holds no records"),
    "eval: unknown method": (
        ["eval", "--method", "romee", "--data", "{file}", "--out", "{out}"],
        _file(json.dumps([EASYEDIT])),
        "Did you mean 'rome'",
    ),
    "eval: unknown model": (
        ["eval", "--model", "smollm2", "--data", "{file}", "--out", "{out}"],
        _file(json.dumps([EASYEDIT])),
        "Did you mean 'smollm2-135m'",
    ),
    "eval: unknown protocol key in config": (
        ["eval", "--config", "{file}", "--data", "x.json", "--out", "{out}"],
        _file("protocl: batch\n"),
        "Did you mean 'protocol'",
    ),
    "eval: wrong type in config": (
        ["eval", "--config", "{file}", "--data", "x.json", "--out", "{out}"],
        _file("limit: many\n"),
        "RunConfig.limit",
    ),
    "eval: downstream without sequential": (
        ["eval", "--data", "x.json", "--downstream", "sst2", "--out", "{out}"],
        None,
        "sequential",
    ),
    "eval: no threads": (["eval", "--data", "x.json", "--threads", "0", "--out", "{out}"], None, "--threads"),
    "eval: guard without sequential": (["eval", "--data", "x.json", "--guard", "--out", "{out}"], None, "sequential"),
    "eval: unknown guard setting": (
        ["eval", "--data", "{file}", "--protocol", "sequential", "--guard-set", "drift_limit=3", "--out", "{out}"],
        _file(json.dumps([EASYEDIT])),
        "Did you mean 'drift_factor'",
    ),
    "report: missing results": (["report", "{missing}", "--out", "{out}"], None, "does not exist"),
    "report: not a results file": (["report", "{file}", "--out", "{out}"], _file("{}"), "not an editkit results"),
}


@pytest.mark.parametrize("case", list(USER_ERRORS), ids=list(USER_ERRORS))
def test_user_errors_are_one_line_and_status_2(case, tmp_path, capsys, no_model):
    """Mistakes a user can make print one `editkit: error:` line (no traceback), exit 2, and load no model."""
    argv, maker, expected = USER_ERRORS[case]
    path = maker(tmp_path) if maker else ""
    argv = [a.format(file=path, missing=tmp_path / "nonexistent.json", out=tmp_path / "results.json") for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("editkit: error:")
    assert expected in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_serve_without_the_serve_extra_is_one_line_saying_how_to_install_it(monkeypatch, capsys, no_model):
    import sys

    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now raises ImportError
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["editkit: error: editkit serve needs the serve extra: pip install 'editkit[serve]'"]


def test_token_adds_a_named_token_shown_once_and_stored_hashed(tmp_path, capsys):
    pytest.importorskip("fastapi")
    from editkit.server.tokens import TokenBook

    path = tmp_path / "tokens.json"
    assert main(["token", "bob", "--role", "read", "--tokens", str(path)]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert token.startswith("ek_") and token not in path.read_text()
    found = TokenBook(path).check(token)
    assert found is not None and (found.name, found.role) == ("bob", "read")
    assert main(["token", "bob", "--tokens", str(path)]) == 2  # names are unique


@pytest.mark.parametrize("argv", [["frobnicate"], [], ["edit", "--max-new-tokens", "many"]])
def test_argparse_errors_exit_2(argv, capsys):
    """Malformed command lines are argparse's business: one error line naming the help, and SystemExit(2)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("editkit: error:") and "--help)" in line


def test_quickstart_answers_after_the_edit_with_the_edited_model(monkeypatch, capsys):
    """A memory editor leaves the base model's weights alone: "after" must be read from the handle's model."""
    from editkit.data import demo_cases
    from editkit.models import zoo
    from editkit.models.tiny import tiny_model

    monkeypatch.setattr(zoo, "load", lambda name, device=None: tiny_model("llama"))
    assert main(["quickstart", "--method", "lu", "--limit", "1", "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    steps = [line for line in captured.err.splitlines() if line.startswith("... ")]
    assert [s.split()[1] for s in steps] == ["loading", "answering", "preparing", "edit", "answering"], steps
    request = demo_cases()[0].request
    row = next(line for line in out.splitlines() if request.text in line and "edit" in line)
    after = row.split("│")[-2].strip()
    assert after.startswith(request.target_new.strip()), row  # LU answers an edit's own input with its label


def test_eval_runs_with_the_threads_asked_for(monkeypatch, tmp_path, capsys):
    """`--threads N` sets torch's threads before the run, and the results record them."""
    from editkit.models.tiny import tiny_model

    monkeypatch.setattr(zoo, "load", lambda name, device=None: tiny_model("llama"))
    data = tmp_path / "cf.json"
    data.write_text(json.dumps([EASYEDIT]))
    out = tmp_path / "results.json"
    before = torch.get_num_threads()
    wanted = 1 if before > 1 else 2
    try:
        argv = ["eval", "--method", "ft", "--set", "steps=1", "--data", str(data), "--out", str(out)]
        assert main([*argv, "--threads", str(wanted)]) == 0
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)
    results = json.loads(out.read_text())
    assert results["environment"]["threads"] == wanted
    assert results["run"]["threads"] == wanted


def test_residual_parts_fill_the_folder_a_batch_run_then_reads(monkeypatch, tmp_path, capsys):
    """`editkit residuals --part I/N` optimises the I-th of N ranges of a batch run's requests into its
    residual_cache; with every part done, the run itself optimises nothing and edits as it would alone."""
    from editkit.editors.locate import LocateEditor
    from editkit.models.tiny import tiny_model

    monkeypatch.setattr(zoo, "load", lambda name, device=None: tiny_model("llama"))
    subjects = ["The Eiffel Tower", "The Louvre", "Big Ben", "The Colosseum", "The Louvre"]
    data = tmp_path / "cf.json"
    data.write_text(
        json.dumps(
            [{**EASYEDIT, "case_id": i, "prompt": f"{s} is located in", "subject": s} for i, s in enumerate(subjects)]
        )
    )
    fast = ["v_steps=4", "n_context=1", "context_length=3", "mom2_update_weight=1", "v_batch=1"]
    memit = ["--method", "memit", *(a for kv in fast for a in ("--set", kv)), "--data", str(data)]
    run = [*memit, "--edits-per-step", "2,4", "--distinct-subjects", "--max-groups", "1"]
    real = LocateEditor._optimise
    optimised: list[str] = []

    def counted(self, lm, reqs, *args, **kwargs):
        optimised.extend(r.subject for r in reqs)
        return real(self, lm, reqs, *args, **kwargs)

    monkeypatch.setattr(LocateEditor, "_optimise", counted)
    folder = tmp_path / "z"
    cached = [*run, "--set", f"residual_cache={folder}"]
    # the run edits the first two cases, then the first four with distinct subjects (the second Louvre waits)
    assert main(["residuals", *cached, "--case-range", "1:5"]) == 0  # a shard's: no group begins in it
    assert optimised == []
    assert main(["residuals", *cached, "--part", "2/2"]) == 0
    assert optimised == ["Big Ben", "The Colosseum"] and len(list(folder.iterdir())) == 2
    assert "part 2/2: 2 of the run's 4 residuals, 0 already in the folder" in capsys.readouterr().out
    assert main(["residuals", *cached, "--count", "--part", "1/2"]) == 0  # counts every part, optimises nothing
    assert optimised == ["Big Ben", "The Colosseum"]
    assert capsys.readouterr().out.splitlines()[-3:] == [
        f"2 of the run's 4 residuals are in {folder}",
        "  part 1/2: 0 of 2",
        "  part 2/2: 2 of 2",
    ]
    assert main(["residuals", *cached, "--part", "1/2"]) == 0
    assert main(["residuals", *cached]) == 0  # 1/1: everything there already
    assert "4 of the run's 4 residuals, 4 already in the folder" in capsys.readouterr().out
    optimised[:] = []
    assert main(["eval", *cached, "--out", str(tmp_path / "cached.json")]) == 0
    assert optimised == []
    assert main(["eval", *run, "--out", str(tmp_path / "alone.json")]) == 0
    assert len(optimised) == 6  # without the folder: the group of 2, then the group of 4
    with_parts, alone = (json.loads((tmp_path / f"{n}.json").read_text())["records"] for n in ("cached", "alone"))
    assert [r["post"] for r in with_parts] == [r["post"] for r in alone]
    assert main(["residuals", *memit, "--set", "residual_cache=x", "--protocol", "sequential"]) == 2
    assert "ahead of batch runs only" in capsys.readouterr().err
    assert main(["residuals", *memit]) == 2
    assert "residual_cache=FOLDER" in capsys.readouterr().err
    assert main(["residuals", "--method", "ft", "--data", str(data)]) == 2
    assert "optimises no target residuals" in capsys.readouterr().err
    unlocated = write_tiny_cases(tmp_path / "unlocated.jsonl")
    assert main(["residuals", *cached, "--data", str(unlocated)]) == 2  # the last --data is the one read
    assert "needs a subject in every edit" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["residuals", *cached, "--part", "3/2"])
    assert "expected I/N with 1 <= I <= N" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # it writes residuals: no results file to name
        main(["residuals", *cached, "--out", "o.json"])
    assert "unrecognized arguments: --out" in capsys.readouterr().err


def test_a_sequential_runs_state_names_the_run_while_it_goes_on(monkeypatch, tmp_path):
    """The partial results in a sequential run's state folder carry its config (so its label), as the final
    results do: a report of a run still going on names it."""
    from editkit.models.tiny import tiny_model

    monkeypatch.setattr(zoo, "load", lambda name, device=None: tiny_model("llama"))
    data = tmp_path / "cf.json"
    data.write_text(json.dumps([EASYEDIT]))
    out, state = tmp_path / "results.json", tmp_path / "state"
    argv = ["eval", "--method", "ft", "--set", "steps=1", "--data", str(data), "--out", str(out)]
    assert main([*argv, "--protocol", "sequential", "--label", "ft-one-step", "--state", str(state)]) == 0
    assert json.loads((state / "results.json").read_text())["run"]["label"] == "ft-one-step"
    assert json.loads(out.read_text())["run"]["state"] == str(state)


def test_edit_goes_through_the_edit_service(monkeypatch, tmp_path, capsys):
    """`editkit edit` applies and answers through EditService: "after" is the edited model's answer (LU answers
    an edit's own input with its label), and the edit lands in the memory the store URL names."""
    from editkit.memory import SQLiteStore
    from editkit.models.tiny import tiny_model
    from editkit.service import EditService

    monkeypatch.setattr(zoo, "load", lambda name, device=None: tiny_model("llama"))
    applied = []
    real_apply = EditService.apply

    def apply(self, requests):
        applied.append(requests)
        return real_apply(self, requests)

    monkeypatch.setattr(EditService, "apply", apply)
    path = tmp_path / "memory.sqlite"
    prompt = "The Eiffel Tower is located in"
    argv = ["edit", "--method", "lu", "--prompt", prompt, "--target", "Rome", "--set", f"memory=sqlite://{path}"]
    assert main([*argv, "--max-new-tokens", "2"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if prompt in line and "│" in line)
    assert row.split("│")[3].strip().startswith("Rome"), row  # prompt, before, after, answered by, scope score
    assert row.split("│")[4].strip().startswith("edit 1:") and row.split("│")[5].strip() == "1.000", row
    assert [[r.text for r in requests] for requests in applied] == [[prompt]]
    with SQLiteStore(path) as store:
        assert [r.request.target_new for r in store.active()] == [" Rome"]


# every option `editkit eval` had when its options were written out by hand, and must keep
EVAL_OPTIONS = (
    *("--config", "--model", "--method", "--label", "--data", "--format", "--skip-invalid", "--limit"),
    *("--protocol", "--edits-per-step", "--max-groups", "--distinct-subjects", "--every", "--downstream"),
    *("--downstream-data", "--downstream-n", "--state", "--guard", "--guard-set", "--seed", "--set", "--device"),
    *("--threads", "--out"),
)


def test_eval_help_lists_every_run_setting_with_its_help(capsys):
    """`editkit eval --help` keeps every option, and each run setting's option shows the setting's help."""
    from editkit.evaluation.runner import RunConfig

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines
    for option in EVAL_OPTIONS:
        assert f" {option} " in out, option
    for f in dataclasses.fields(RunConfig):
        if f.name not in ("settings", "guard"):  # mappings: --set / --guard-set
            assert f.metadata["help"] in out, f.name
    assert "--protocol {batch,sequential}" in out and "(default 20)" in out


@dataclasses.dataclass
class Toy:
    n: int = dataclasses.field(default=3, metadata={"help": "a count"})
    rate: float | None = dataclasses.field(default=None, metadata={"help": "a rate"})
    mode: Literal["a", "b"] = dataclasses.field(default="a", metadata={"help": "a mode"})
    ks: list[int] = dataclasses.field(default_factory=lambda: [1, 2], metadata={"help": "some k's"})
    on: bool = dataclasses.field(default=False, metadata={"help": "a switch"})
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={"help": "a mapping"})


def test_config_options_follow_the_field_types():
    """Options made from a typed config: None when not given, switches for booleans, choices for Literals,
    numbers converted, lists left as text for the config to split, mappings left out."""
    from editkit.cli import _config_options

    options = dict(_config_options(Toy))
    assert list(options) == ["n", "rate", "mode", "ks", "on"]
    assert options["n"] == {"default": None, "help": "a count (default 3)", "type": int}
    assert options["rate"] == {"default": None, "help": "a rate", "type": float}
    assert options["mode"] == {"default": None, "help": "a mode (default a)", "choices": ["a", "b"]}
    assert options["ks"] == {"default": None, "help": "some k's (default 1,2)"}
    assert options["on"] == {"default": None, "help": "a switch", "action": "store_true"}


def test_eval_options_override_the_config_file_and_only_when_given(monkeypatch, tmp_path):
    """An option left out keeps the config file's value; one given replaces it; method settings merge."""
    from editkit.evaluation import runner

    made = []
    monkeypatch.setattr(
        runner,
        "run",
        lambda config: made.append(config) or {"aggregates": {}, "method": "ft", "model": "m", "n_cases": 0},
    )
    config = tmp_path / "run.yaml"
    config.write_text(
        "method: ft\nlimit: 5\nedits_per_step: [2, 4]\ndistinct_subjects: true\nsettings: {lr: 0.1, steps: 3}\n"
    )
    argv = ["eval", "--config", str(config), "--data", "x.json", "--out", str(tmp_path / "r.json")]
    assert main(argv) == 0
    assert (made[0].limit, made[0].edits_per_step, made[0].distinct_subjects) == (5, [2, 4], True)
    assert main([*argv, "--limit", "3", "--edits-per-step", "1, 5", "--set", "steps=7", "--skip-invalid"]) == 0
    assert (made[1].limit, made[1].edits_per_step, made[1].distinct_subjects) == (3, [1, 5], True)
    assert made[1].settings == {"lr": 0.1, "steps": 7} and made[1].skip_invalid and made[1].method == "ft"


def test_edit_with_a_statement_shows_which_edit_answered_and_its_scope_score(monkeypatch, capsys):
    """`editkit edit --statement S --ask Q`: Q before and after, the edit that answered it and its scope score
    (RP's untrained scope on a tiny encoder; the threshold splits the two questions)."""
    from editkit.models.tiny import tiny_model
    from editkit.service import EditService

    monkeypatch.setattr(zoo, "load", lambda name, device=None: tiny_model("llama"))
    statement, near, far = "Boris Johnson is the UK PM.", "Who is the UK PM?", "What is 2+2?"
    explained = {}
    real_answer = EditService.answer

    def answer(self, prompts, *args, **kwargs):
        out = real_answer(self, prompts, *args, **kwargs)
        explained.update({p: why for p, (_, why) in zip(prompts, out, strict=True)})
        return out

    monkeypatch.setattr(EditService, "answer", answer)
    settings = ["--set", "scope=embed-untrained", "--set", "encoder=tiny-bert", "--set", "threshold=0.95"]
    argv = ["edit", "--method", "rp", *settings, "--statement", statement, "--ask", near, "--ask", far]
    assert main([*argv, "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert f"statement {statement!r}" in out
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in out.splitlines()
        if line.startswith("│")
    }
    assert set(rows) == {near, far}  # a statement has no prompt of its own to answer
    assert explained[near]["answered_by"] == "edit" and explained[far]["answered_by"] == "base"
    assert rows[near][2] == f"edit 1: {statement}" and rows[far][2] == "base model"
    assert rows[near][3] == f"{explained[near]['scope_score']:.3f}"
    assert rows[far][3] == f"{explained[far]['best_scope_score']:.3f}"


def test_eval_runs_rp_on_convsent_statement_edits(tmp_path, capsys):
    """ConvSent records load as statement edits ("TOPIC: X SENTIMENT: ..."), which RP takes: `editkit eval`
    scores ES_sent with its two factors, the KL drawdown, and the unedited model beside them."""
    data = tmp_path / "convsent.json"
    data.write_text(
        json.dumps(
            [
                {"ent": "Estero", "pos": [" I love it.", " Great place."], "neg": [" I dislike it.", " Too hot."]},
                {"ent": "Tallahassee", "pos": [" Lovely city."], "neg": [" Boring."]},
            ]
        )
    )
    out = tmp_path / "rp.json"
    rp = ["--set", "scope=embed-untrained", "--set", "encoder=tiny-bert", "--set", "threshold=0"]
    argv = ["eval", "--model", "tiny-llama", "--method", "rp", *rp, "--data", str(data), "--out", str(out)]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    agg = results["aggregates"]
    assert {"es", "z_sent", "z_topic", "kl_drawdown", "dd", "unedited_es", "unedited_z_topic"} <= set(agg)
    assert agg["unedited_z_topic"] == pytest.approx(1.0) and 0 < agg["es"] <= 1 and agg["kl_drawdown"] > 0
    assert agg["es"] != agg["unedited_es"]  # every input read the statement in its prompt (threshold 0)


def test_a_deferred_input_is_shown_as_answered_by_the_base_model_from_its_edit():
    from editkit.cli import _answered_by

    assert _answered_by({"answered_by": "base", "best_scope_score": 0.2}) == "base model"
    deferred = {"answered_by": "base", "best_scope_score": 0.97, "counterfactual_kl": 1.357, "deferred_edit_id": 3}
    assert _answered_by(deferred) == "base model (deferred from edit 3: KL 1.36)"
    assert _answered_by({"answered_by": "edit", "edit_id": 3, "descriptor": "x" * 80}) == f"edit 3: {'x' * 60}"
