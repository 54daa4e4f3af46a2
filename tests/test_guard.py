"""The edit guard: which edits it rejects, that a rejected edit leaves the model bit for bit as it was, that its
measurements equal independent ones, and how it runs inside the sequential protocol and from a run config."""

from __future__ import annotations

import json

import pytest
import torch

from editkit.data import demo_cases
from editkit.editors import create_editor
from editkit.errors import ConfigError, ValidationError
from editkit.evaluation import downstream, sequential
from editkit.evaluation.guard import EditGuard, EditRejected, GuardConfig
from editkit.evaluation.results import canary_summary
from editkit.evaluation.runner import RunConfig, _guard
from editkit.evaluation.sequential import sequential_edits
from editkit.models.tiny import tiny_model

SMALL = {"steps": 2, "lr": 1e-3}
HUGE = {"steps": 5, "lr": 1.0}


def _snapshot(lm):
    return {n: p.detach().clone() for n, p in lm.model.named_parameters()}


def _same(lm, snapshot) -> bool:
    return all(torch.equal(snapshot[n], p) for n, p in lm.model.named_parameters())


def _sst2(tmp_path, n=40):
    path = tmp_path / "sst2.jsonl"
    path.write_text("".join(json.dumps({"sentence": f"Film {i} was fine.", "label": i % 2}) + "\n" for i in range(n)))
    return path


def test_an_outsized_edit_is_rejected_and_leaves_no_trace(llama):
    guard = EditGuard(GuardConfig(min_history=3, drift_factor=10.0, recall_edits=0))
    small, huge = create_editor("ft", SMALL), create_editor("ft", HUGE)
    requests = [c.request for c in demo_cases()]
    for r in requests[:3]:
        handle = guard.apply(small, llama, [r])
        ch = next(iter(handle.changes.values()))
        name = next(iter(handle.changes))
        out_features = llama.model.get_submodule(name.rsplit(".", 1)[0]).out_features
        expected = float((ch.edited.double() - ch.original.double()).norm()) / out_features
        assert handle.info["guard"]["drift"] == pytest.approx(expected)
    before = _snapshot(llama)
    with pytest.raises(EditRejected, match="moves the weights") as exc:
        guard.apply(huge, llama, [requests[3]])
    assert exc.value.checks["drift_ratio"] > 10
    assert _same(llama, before)
    assert guard.rejected == 1 and len(guard.accepted) == 3
    guard.apply(small, llama, [requests[4]])  # an ordinary edit still goes through
    assert len(guard.accepted) == 4


def _mean_target_logprob(lm, requests):
    scores = lm.score([r.text for r in requests], [r.target_new for r in requests])
    return sum(float(s.mean()) for s in scores) / len(scores)


def test_an_edit_that_erases_earlier_edits_is_rejected(llama, monkeypatch):
    guard = EditGuard(GuardConfig(min_history=100, recall_edits=2, max_recall_drop=0.5))
    requests = [c.request for c in demo_cases()]
    for r in requests[:2]:
        guard.apply(create_editor("ft", SMALL), llama, [r])
    before = _mean_target_logprob(llama, requests[:2])
    handle = guard.apply(create_editor("ft", SMALL), llama, [requests[2]])
    checks = handle.info["guard"]  # measured on the last two accepted edits, before and after this one
    assert checks["recall_logprob_before"] == pytest.approx(before, abs=1e-5)
    assert checks["recall_logprob"] == pytest.approx(_mean_target_logprob(llama, requests[:2]), abs=1e-5)

    falls = iter([-4.0])  # the next edit's recall score: 1 nat per token below the current one
    monkeypatch.setattr(guard, "_recall_score", lambda lm, recent: next(falls))
    guard._recall_now = -3.0
    snapshot = _snapshot(llama)
    with pytest.raises(EditRejected, match=r"last 2 accepted edits' targets lose 1\.0 nats per token"):
        guard.apply(create_editor("ft", SMALL), llama, [requests[3]])
    assert _same(llama, snapshot)


def test_canary_auc_is_measured_and_a_fall_rejects(llama, tmp_path, monkeypatch):
    examples = downstream.load_examples(_sst2(tmp_path), "sst2", n=8)
    guard = EditGuard(GuardConfig(recall_edits=0), canary={"sst2": examples}, batch_size=3)
    auc_before = downstream.evaluate_task(llama, "sst2", examples)["auc"]
    handle = guard.apply(create_editor("ft", SMALL), llama, [demo_cases()[0].request])
    checks = handle.info["guard"]
    assert checks["canary_auc_before"] == pytest.approx(auc_before)
    assert checks["canary_auc"] == pytest.approx(downstream.evaluate_task(llama, "sst2", examples)["auc"])

    falls = iter([0.4])  # the next edit's canary score, far below the current one
    monkeypatch.setattr(guard, "_canary_score", lambda lm: next(falls))
    guard._canary_now = 0.9
    before = _snapshot(llama)
    with pytest.raises(EditRejected, match=r"canary AUC on sst2 falls 0\.90 -> 0\.40"):
        guard.apply(create_editor("ft", SMALL), llama, [demo_cases()[1].request])
    assert _same(llama, before)


def test_the_guard_takes_weight_editors_and_checks_its_settings(llama):
    with pytest.raises(ValidationError, match="outside the weights"):
        EditGuard().apply(create_editor("lu"), llama, [demo_cases()[0].request])
    with pytest.raises(ConfigError, match="drift_factor"):
        GuardConfig(drift_factor=0.5)
    with pytest.raises(ConfigError, match="no setting"):
        GuardConfig.from_dict({"drift_limit": 3})


def _one_outsized(cases, interrupt_at=None):
    """An FT editor that makes the edit of ``cases[2]`` with a thousand times the learning rate, and raises
    KeyboardInterrupt at call ``interrupt_at``."""
    editor, huge = create_editor("ft", SMALL), create_editor("ft", HUGE)
    real_apply, calls = editor.apply, []

    def apply(lm, requests):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return (huge.apply if requests[0] == cases[2].request else real_apply)(lm, requests)

    editor.apply = apply  # type: ignore[method-assign]
    return editor


def test_sequential_run_with_guard_records_rejections_and_resumes(tmp_path):
    cases = demo_cases()[:5]
    config = GuardConfig(min_history=2, recall_edits=0)
    out = sequential_edits(
        tiny_model("llama"), _one_outsized(cases), cases, every=5, guard=EditGuard(config), progress=False
    )
    assert [r["n_edits"] for r in out["records"] if "rejected" in r] == [3]
    assert out["rejected_edits"][0]["reasons"][0].startswith("it moves the weights")
    assert out["aggregates"]["rejected_edits"] == 1
    assert out["records"][2]["drift"] == out["records"][1]["drift"]  # the rejected edit moved nothing
    assert out["records"][2]["post"]["efficacy"] == out["records"][2]["pre"]["efficacy"]

    state = tmp_path / "state"
    with pytest.raises(KeyboardInterrupt):
        sequential_edits(
            tiny_model("llama"),
            _one_outsized(cases, interrupt_at=4),
            cases,
            every=5,
            state_dir=state,
            guard=EditGuard(config),
            progress=False,
        )
    resumed = sequential_edits(
        tiny_model("llama"),
        _one_outsized(cases),
        cases,
        every=5,
        state_dir=state,
        guard=EditGuard(config),
        progress=False,
    )
    assert [r.get("rejected") for r in resumed["records"]] == [r.get("rejected") for r in out["records"]]
    for a, b in zip(resumed["records"], out["records"], strict=True):
        assert a["post"] == pytest.approx(b["post"], abs=1e-5)


def test_results_keep_the_canaries_by_count_digest_and_idx_not_their_text(tmp_path):
    examples = [{"sentence": f"Film {i} was fine.", "label": i % 2, "idx": 10 + i} for i in range(4)]
    cases = demo_cases()[:2]
    state = tmp_path / "state"

    def run(canary):
        guard = EditGuard(GuardConfig(recall_edits=0), canary={"sst2": canary})
        return sequential_edits(
            tiny_model("llama"),
            create_editor("ft", SMALL),
            cases,
            every=2,
            state_dir=state,
            guard=guard,
            progress=False,
        )

    kept = run(examples)["guard"]["canary"]["sst2"]
    assert kept["n"] == 4 and kept["idx"] == [10, 11, 12, 13] and len(kept["sha256"]) == 64
    assert "Film" not in (state / "results.json").read_text()
    # other canaries are another run: the digest is in the run key
    with pytest.raises(ValidationError, match="other settings"):
        run([{**e, "sentence": e["sentence"].upper()} for e in examples])
    # a data set without idx is kept by count and digest
    unnamed = EditGuard(GuardConfig(), canary={"sst2": [{k: e[k] for k in ("sentence", "label")} for e in examples]})
    assert set(canary_summary(unnamed.canary)["sst2"]) == {"n", "sha256"}


def test_a_rejected_edit_is_neither_succeeded_nor_forgotten(monkeypatch):
    # Every record counts as a success, so only the rejection can keep edit 3 out of the tally.
    monkeypatch.setattr(sequential, "edit_success", lambda scores: 1.0)
    cases = demo_cases()[:5]
    out = sequential_edits(
        tiny_model("llama"),
        _one_outsized(cases),
        cases,
        every=5,
        guard=EditGuard(GuardConfig(min_history=2, recall_edits=0)),
        progress=False,
    )
    assert out["checkpoints"][-1]["succeeded"] == 4 and out["checkpoints"][-1]["forgotten"] == 0


def test_run_config_guard_draws_canaries_apart_from_evaluated_examples(tmp_path):
    _sst2(tmp_path, n=200)
    config = RunConfig.build(
        None,
        data="x.jsonl",
        out="r.json",
        protocol="sequential",
        downstream=["sst2"],
        downstream_data=str(tmp_path),
        downstream_n=40,
        guard={"canary_n": "10", "drift_factor": "5"},
    )
    evaluated = {"sst2": downstream.load_examples(tmp_path / "sst2.jsonl", "sst2", n=40)}
    guard = _guard(config, evaluated)
    canary = guard.canary["sst2"]
    assert len(canary) == 10 and sum(e["label"] for e in canary) == 5
    assert not any(e in evaluated["sst2"] for e in canary)
    assert guard.config.drift_factor == 5.0
    bad = RunConfig.build(None, data="x.jsonl", out="r.json", protocol="sequential", guard={"canary_n": "many"})
    with pytest.raises(ConfigError, match="canary_n must be an integer"):
        _guard(bad, {})
    with pytest.raises(ConfigError, match="sequential protocol"):
        RunConfig.build(None, data="x.jsonl", out="r.json", guard={})
