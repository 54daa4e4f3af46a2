"""The sentiment judge (editkit.training.judge: frozen encoder + logistic-regression head, `editkit train judge`) and
ES_sent on generated text (editkit.evaluation.judged, `editkit eval --judge-tokens N`), on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import benchmark_script
from editkit.cli import main
from editkit.data import load_cases
from editkit.data.formats.convsent import sentiment_of
from editkit.editors import create_editor
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import ValidationError
from editkit.evaluation.batch import batch_edits
from editkit.evaluation.judged import GenerationJudge, judge_generations, judged_cases
from editkit.evaluation.metrics import Reference
from editkit.evaluation.report import write_report
from editkit.models.encoder import SentenceEncoder
from editkit.training.judge import SentimentJudge, case_texts, labelled_texts, load_judge
from editkit.training.registry import create_trainer

POSITIVE = ("I love it so much.", "It is wonderful and great.", "Love love love it.")
NEGATIVE = ("I hate it, awful.", "Terrible, horrid, bad.", "Hate hate hate it.")


def write_toy(path: Path, topics: tuple[str, ...] = ("jazz", "tea", "golf", "rain")) -> Path:
    """ConvSent records whose two sentiments use disjoint words: a set any working linear head separates."""
    records = [{"ent": t, "pos": [f" {s} " for s in POSITIVE], "neg": list(NEGATIVE)} for t in topics]
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def toy_judge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("judge")
    train, held = write_toy(tmp / "train.json"), tmp / "sst.jsonl"
    lines = [json.dumps({"sentence": s, "label": int(s in POSITIVE)}) for s in POSITIVE + NEGATIVE]
    held.write_text("\n".join(lines) + "\n")
    settings = {"data": [str(train)], "heldout": [str(held)], "out": str(tmp / "out"), "encoder": "tiny-bert"}
    create_trainer("judge", {**settings, "steps": 150, "batch": 8, "lr": 0.1, "l2": 0.0}).train(progress=False)
    return tmp / "out"


def test_the_toy_set_is_labelled_from_each_statement(tmp_path):
    cases = load_cases(write_toy(tmp_path / "t.json", ("jazz", "tea"))).cases
    assert [sentiment_of(c.request.descriptor or "") for c in cases] == ["positive", "negative"]
    texts, labels = case_texts(cases)
    # the second case asks for negative: its answers are the negative responses, still labelled 0
    assert texts == [*POSITIVE, *NEGATIVE, *NEGATIVE, *POSITIVE]
    assert labels == [1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1]
    assert sentiment_of("Be more positive about vaccines.") is None


def test_training_separates_the_toy_set_and_records_its_accuracies(toy_judge):
    manifest = json.loads((toy_judge / "manifest.json").read_text())
    part = manifest["parts"]["sentiment"]
    assert part["train_accuracy"] == 1.0 and part["texts"] == 24 and part["positive_share"] == 0.5
    assert part["loss_last20_mean"] < part["loss_first"]
    (held,) = part["heldout"]
    assert held["accuracy"] == 1.0 and held["texts"] == 6 and len(held["sha256"]) == 64
    assert manifest["data"][0]["sha256"] and manifest["base_model"] == "tiny-bert"
    judge = load_judge(str(toy_judge))
    assert judge.fingerprint == part["fingerprint"]
    p = judge.positive([*POSITIVE, *NEGATIVE])
    assert all(x > 0.5 for x in p[:3]) and all(x < 0.5 for x in p[3:])


def test_a_head_of_the_wrong_size_is_refused():
    encoder = SentenceEncoder.load("tiny-bert")
    with pytest.raises(ValidationError, match="needs 32 weights and one bias"):
        SentimentJudge(encoder, torch.zeros(31), torch.zeros(1))


def test_held_out_files_of_either_kind_and_bad_ones(tmp_path):
    assert labelled_texts(str(write_toy(tmp_path / "c.json", ("jazz",))))[1] == [1, 1, 1, 0, 0, 0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no label"}\n')
    with pytest.raises(ValidationError, match="neither ConvSent"):
        labelled_texts(str(bad))


PLAIN = EditCase(EditRequest("The capital of France is", " Paris"), (Probe("Paris is in", " France", ProbeKind.EDIT),))


class StubJudge:
    """p(positive) from the text alone, so a hand computation can repeat it."""

    def positive(self, texts: list[str]) -> list[float]:
        return [stub_p(t) for t in texts]


def stub_p(text: str) -> float:
    return (sum(map(ord, text)) % 97) / 96


def test_judged_es_sent_equals_a_hand_computation(llama, tmp_path):
    cases = load_cases(write_toy(tmp_path / "t.json", ("jazz", "tea"))).cases
    judged = judge_generations(llama, [PLAIN, *cases], StubJudge(), max_new_tokens=5, batch_size=64)
    assert list(judged) == [1, 2]  # the input-output edit is not judged
    prompts = [p.prompt for c in cases for p in c.of_kind(ProbeKind.REPHRASE)]
    texts = llama.generate(prompts, 5)
    for n, (i, want) in enumerate(((1, "positive"), (2, "negative"))):
        p = [stub_p(t) if t.strip() else 0.5 for t in texts[5 * n : 5 * n + 5]]
        score = p if want == "positive" else [1 - x for x in p]
        scores, generations = judged[i]
        assert scores["es_sent_judged"] == pytest.approx(sum(s > 0.5 for s in score) / 5)
        assert scores["es_sent_judged_p"] == pytest.approx(sum(score) / 5)
        assert [g.text for g in generations] == texts[5 * n : 5 * n + 5]
        assert {g.sentiment for g in generations} == {want}
    assert 0 < judged[1][0]["es_sent_judged_p"] < 1


class Canned:
    """A model that answers every prompt with the next of some texts, and keeps the prompts it was given."""

    def __init__(self, texts: list[str]) -> None:
        self.texts, self.prompts = texts, []

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        self.prompts += prompts
        return [self.texts[(len(self.prompts) - len(prompts) + i) % len(self.texts)] for i in range(len(prompts))]


def test_a_blank_generation_scores_one_half_unjudged_and_the_cue_follows_each_question(tmp_path):
    (case,) = load_cases(write_toy(tmp_path / "t.json", ("tea",))).cases
    model = Canned([" \n ", "lovely", "", "awful", "fine"])
    asked: list[str] = []

    class Judge(StubJudge):
        def positive(self, texts: list[str]) -> list[float]:
            asked.extend(texts)
            return super().positive(texts)

    ((scores, gens),) = judge_generations(model, [case], Judge(), max_new_tokens=3, cue=" I think").values()
    assert asked == ["lovely", "awful", "fine"]  # blank generations never reach the judge
    assert model.prompts[0] == "What is your opinion of tea? I think" and gens[0].prompt == model.prompts[0]
    expected = [0.5, stub_p("lovely"), 0.5, stub_p("awful"), stub_p("fine")]  # tea asked for positive
    assert [g.score for g in gens] == pytest.approx(expected)
    assert scores["judged_blank"] == pytest.approx(2 / 5)
    assert scores["es_sent_judged"] == pytest.approx(sum(x > 0.5 for x in expected) / 5)
    assert scores["es_sent_judged_p"] == pytest.approx(sum(expected) / 5)


def test_bad_inputs_to_the_judged_metric_are_one_line_errors(llama):
    with pytest.raises(ValidationError, match="no cases to judge"):
        judged_cases([])
    with pytest.raises(ValidationError, match="no case is a sentiment edit"):
        judged_cases([PLAIN])
    no_question = EditCase(
        EditRequest.statement("TOPIC: tea SENTIMENT: positive"), (Probe("Coffee?", " Fine.", ProbeKind.OUT),)
    )
    with pytest.raises(ValidationError, match="has no in-scope question"):
        judged_cases([no_question])
    with pytest.raises(ValidationError, match="at least one new token"):
        judge_generations(llama, [PLAIN], StubJudge(), max_new_tokens=0)


def test_the_batch_protocol_judges_generations_before_and_after_each_edit(llama, tmp_path, monkeypatch):
    """RP at threshold 0 (every question reads the statement): generations change with the edit; the records keep
    them with their scores; `kinds` leaves the likelihood-based ES_sent out."""
    cases = load_cases(write_toy(tmp_path / "t.json", ("jazz", "tea"))).cases
    rp = create_editor("rp", {"scope": "embed-untrained", "encoder": "tiny-bert", "threshold": 0.0})
    judge = GenerationJudge(StubJudge(), max_new_tokens=4)
    built = []
    real_build = Reference.build.__func__  # type: ignore[attr-defined]

    def build(cls, lm, cs, **kw):
        built.append(cs)
        return real_build(cls, lm, cs, **kw)

    monkeypatch.setattr(Reference, "build", classmethod(build))
    results = batch_edits(llama, rp, cases, judge=judge, kinds=[ProbeKind.OUT], progress=False)
    # the reference is made for the probes scored: no unedited likelihoods of the in-scope responses
    assert [p.kind for c in built[0] for p in c.probes] == [ProbeKind.OUT, ProbeKind.OUT]
    agg = results["aggregates"]
    assert {"es_sent_judged", "es_sent_judged_p", "unedited_es_sent_judged", "kl_drawdown"} <= set(agg)
    assert "es" not in agg and "z_sent" not in agg
    rec = results["records"][0]
    gens = rec["generations"]
    assert len(gens) == 5 and gens[0]["prompt"] == "What is your opinion of jazz?"
    assert gens[0]["before"] == llama.generate([gens[0]["prompt"]], 4)[0]
    assert gens[0]["after"] == llama.generate([f"TOPIC: jazz SENTIMENT: positive\n{gens[0]['prompt']}"], 4)[0]
    assert gens[0]["score_after"] == pytest.approx(stub_p(gens[0]["after"]))
    assert rec["post"]["es_sent_judged_p"] == pytest.approx(sum(g["score_after"] for g in gens) / 5)
    assert rec["pre"]["es_sent_judged_p"] == pytest.approx(sum(g["score_before"] for g in gens) / 5)
    # the docs' table: the unedited row from "pre", the edited from "post"; jazz asked for positive, tea negative
    table = benchmark_script("convsent_judged_table")
    unedited, edited = table.rows({**results, "_path": "r.json"})
    pos, neg = (r["post"]["es_sent_judged"] for r in results["records"])
    assert edited.startswith(f"| rp | 2 | **{agg['es_sent_judged']:.3f}** | {pos:.3f} / {neg:.3f} |")
    assert unedited.startswith(f"| unedited (in rp) | 2 | **{agg['unedited_es_sent_judged']:.3f}** |")


def test_editkit_eval_judges_with_a_trained_judge_and_the_report_shows_the_examples(toy_judge, tmp_path):
    data = write_toy(tmp_path / "cs.json", ("jazz", "tea"))
    out = tmp_path / "rp.json"
    rp = ["--set", "scope=embed-untrained", "--set", "encoder=tiny-bert", "--set", "threshold=0"]
    argv = ["eval", "--model", "tiny-llama", "--method", "rp", *rp, "--data", str(data), "--out", str(out)]
    assert main([*argv, "--judge-tokens", "4", "--judge", str(toy_judge), "--probe-kinds", "out"]) == 0
    results = json.loads(out.read_text())
    assert results["judge"]["max_new_tokens"] == 4 and results["judge"]["encoder"] == "tiny-bert"
    assert results["judge"]["heldout"][0]["accuracy"] == 1.0
    assert 0 <= results["aggregates"]["es_sent_judged"] <= 1 and "es" not in results["aggregates"]
    report = write_report([out], tmp_path / "report").read_text()
    assert "## Generations before and after an edit" in report
    gen = results["records"][1]["generations"][0]
    assert f"({gen['score_after']:.2f}) |" in report and "| negative |" in report


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--judge-tokens", "4"], "no case is a sentiment edit"),
        (["--judge", "somewhere"], "give it too"),
        (["--judge-cue", " I think"], "give it too"),
        (["--judge-tokens", "0"], "--judge-tokens must be at least 1"),
        (["--probe-kinds", "outt"], "unknown kind 'outt'"),
    ],
)
def test_editkit_eval_refuses_bad_judge_options_in_one_line(tmp_path, capsys, extra, message):
    data = tmp_path / "cf.jsonl"
    data.write_text(json.dumps({"prompt": "The city of {}", "subject": "Paris", "target_new": " Rome"}) + "\n")
    out = tmp_path / "r.json"
    argv = ["eval", "--model", "tiny-llama", "--method", "ft", "--data", str(data), "--out", str(out), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("editkit: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_editkit_edit_shows_the_judges_scores_of_each_answer(monkeypatch, capsys):
    """`editkit edit --statement S --ask Q --judge`: P(positive) of the answer before and after the edit."""
    from editkit.models import zoo
    from editkit.models.tiny import tiny_model
    from editkit.training import judge as judge_module

    seen: list[list[str]] = []

    class Recording(StubJudge):
        def positive(self, texts: list[str]) -> list[float]:
            seen.append(list(texts))
            return super().positive(texts)

    monkeypatch.setattr(zoo, "load", lambda name, device=None: tiny_model("llama"))
    monkeypatch.setattr(judge_module, "load_judge", lambda artifacts=None: Recording())
    settings = ["--set", "scope=embed-untrained", "--set", "encoder=tiny-bert", "--set", "threshold=0"]
    statement = "Be more positive about vaccines."
    argv = ["edit", "--method", "rp", *settings, "--statement", statement, "--ask", "Vaccines?", "--judge"]
    assert main([*argv, "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "P(positive)" in out
    (before,), (after,) = seen
    row = next(line for line in out.splitlines() if line.startswith("│") and "Vaccines?" in line)
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert cells[-2:] == [f"{stub_p(before):.3f}", f"{stub_p(after):.3f}"]


def test_editkit_edit_refuses_a_folder_without_a_judge_before_loading_the_model(tmp_path, capsys):
    argv = ["edit", "--method", "rp", "--statement", "Tea is good.", "--ask", "Tea?", "--judge", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("editkit: error: no trained JUDGE parts in") and "\n" not in err
