"""Metrics against independent computations, protocols (batch, sequential, resume), downstream, drift, report."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from editkit.data import demo_cases
from editkit.editors import create_editor
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import EditkitError, ValidationError
from editkit.evaluation import downstream
from editkit.evaluation.batch import batch_edits, edit_groups
from editkit.evaluation.drift import DriftTracker
from editkit.evaluation.flags import flag_drift_jump
from editkit.evaluation.metrics import Reference, cached_scores, kl_divergence, ngram_entropy, score_cases
from editkit.evaluation.report import write_report
from editkit.evaluation.sequential import sequential_edits
from editkit.models.tiny import tiny_model
from learned_parts import enn_parts  # noqa: F401  (fixture)


def _snapshot(lm):
    return {n: p.detach().clone() for n, p in lm.model.named_parameters()}


# --------------------------------------------------------------------------- token scores
def test_score_tokens_matches_full_logits(any_arch):
    prompts, conts = ["The cat", "A much longer prompt here"], [" sat down", " ok"]
    scored = any_arch.score_tokens(prompts, conts, first_distribution=True)
    for p, c, s in zip(prompts, conts, scored, strict=True):
        batch = any_arch.teacher_forced([p], [c])
        logits = any_arch.logits(batch.inputs)[0]
        pos = batch.pred_mask[0].nonzero().squeeze(1)
        logp = F.log_softmax(logits[pos].float(), -1)
        targets = batch.pred_ids[0, pos]
        assert torch.allclose(s.logprobs, logp.gather(-1, targets[:, None]).squeeze(1), atol=1e-5)
        assert torch.equal(s.greedy, logp.argmax(-1) == targets)
        assert torch.allclose(s.first_distribution, logp[0], atol=1e-5)


def test_exact_match_is_greedy_generation(llama):
    """A continuation is an exact match iff greedy decoding produces its tokens."""
    prompts = ["The capital of France is", "Once upon a time"]
    greedy = llama.generate_ids(prompts, 3)
    scored = llama.score_tokens(prompts, greedy)
    assert all(s.exact_match for s in scored)
    other = [[(g[0] + 1) % 300, *g[1:]] for g in greedy]
    assert not any(s.exact_match for s in llama.score_tokens(prompts, other))


def test_kl_divergence_matches_torch():
    a, b = torch.randn(50).log_softmax(-1), torch.randn(50).log_softmax(-1)
    expected = F.kl_div(b, a, log_target=True, reduction="sum")
    assert kl_divergence(a, b) == pytest.approx(float(expected), rel=1e-5)
    assert kl_divergence(a, a) == 0.0


def test_ngram_entropy():
    assert ngram_entropy(["a a a a a a"]) == 0.0
    varied = ngram_entropy(["the quick brown fox jumps over the lazy dog"])
    assert varied > 2.5


# --------------------------------------------------------------------------- ES / DD / KL / ES_sent
def _own_answer_case(lm):
    """A case whose in-scope answers are the model's own greedy answers: ES is 1 before any edit."""
    other = "My favourite colour is"
    for prompt in ("The capital of France is", "The cat sat on the", "Once upon a time"):
        ids = lm.generate_ids([prompt], 1)[0]
        ans = lm.tokenizer.decode(ids)
        if ans.strip() and lm.encode(ans, special=False) == ids:  # the answer text round-trips to the same token
            break
    else:
        raise AssertionError("no prompt with a clean greedy answer")
    req = EditRequest(prompt=prompt, target_new=ans, case_id="own")
    return EditCase(req, (Probe(prompt, ans, ProbeKind.EDIT), Probe(other, " blue", ProbeKind.OUT)))


def test_es_dd_kl_on_the_unedited_model(llama):
    case = _own_answer_case(llama)
    ref = Reference.build(llama, [case])
    (scores,) = score_cases(llama, [case], ref)
    assert scores["es"] == 1.0 and scores["edit_acc"] == 1.0
    assert scores["dd"] == 0.0 and scores["dd_out"] == 0.0
    assert scores["kl_drawdown"] == pytest.approx(0.0, abs=1e-3)


def test_dd_and_kl_see_a_changed_model(llama):
    case = _own_answer_case(llama)
    ref = Reference.build(llama, [case])
    with torch.no_grad():
        for p in llama.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    (scores,) = score_cases(llama, [case], ref)
    assert scores["kl_drawdown"] > 0.01
    assert scores["dd"] == 1.0 or scores["kl_drawdown"] > 0.01  # a big random change moves the distribution


def test_es_sent_follows_equation_6(llama):
    pos, neg = (" I love it.", " It is great."), (" I hate it.",)
    probe = Probe("What is your opinion of tea?", pos[0], ProbeKind.REPHRASE, neg[0], pos[1:], neg[1:])
    case = EditCase(EditRequest(descriptor="TOPIC: tea SENTIMENT: positive"), (probe,))
    ref = Reference.build(llama, [case])
    (scores,) = score_cases(llama, [case], ref)
    liks = [float(s.mean()) for s in llama.score([probe.prompt] * 3, [*pos, *neg])]
    z_sent = 1 / (1 + math.exp(-((liks[0] + liks[1]) / 2 - liks[2])))
    assert scores["z_sent"] == pytest.approx(z_sent, rel=1e-4)
    assert scores["z_topic"] == pytest.approx(1.0)  # the unedited model is its own base
    assert scores["es"] == pytest.approx(z_sent, rel=1e-4)


def test_es_sent_and_kl_drawdown_after_a_statement_edit_follow_equations_6_and_7(llama):
    """RP edits with the statement (threshold 0: every input reads it in its prompt); ES_sent (eq. 6) and the KL
    drawdown (eq. 7) recomputed by hand from the base model's own scores of the prompted inputs."""
    statement = "TOPIC: tea SENTIMENT: positive"
    pos, neg = (" Wonderful", " yes"), (" I hate it.", " Tea is awful.")  # pos: less likely after the statement
    probe = Probe("What is your opinion of tea?", pos[0], ProbeKind.REPHRASE, neg[0], pos[1:], neg[1:])
    out = Probe("What is your opinion of coffee?", " It is fine.", ProbeKind.OUT)
    case = EditCase(EditRequest.statement(statement), (probe, out))
    ref = Reference.build(llama, [case])
    rp = create_editor("rp", {"scope": "embed-untrained", "encoder": "tiny-bert", "threshold": 0.0})
    with rp.edited(llama, [case.request]) as edited:
        (scores,) = score_cases(edited, [case], ref)

    def mean_lik(prompt: str, answers: tuple[str, ...]) -> float:
        return sum(float(s.mean()) for s in llama.score([prompt] * len(answers), list(answers))) / len(answers)

    prompted = f"{statement}\n{probe.prompt}"
    l_pos, l_neg, l_base = mean_lik(prompted, pos), mean_lik(prompted, neg), mean_lik(probe.prompt, pos)
    z_sent, z_topic = 1 / (1 + math.exp(l_neg - l_pos)), min(1.0, math.exp(l_pos - l_base))
    assert z_topic < 1.0  # the edit moved the responses' likelihood: eq. 6's second factor is at work
    assert scores["z_sent"] == pytest.approx(z_sent, rel=1e-4)
    assert scores["z_topic"] == pytest.approx(z_topic, rel=1e-4)
    assert scores["es"] == pytest.approx(z_sent * z_topic, rel=1e-4)
    base, after = llama.next_token_logprobs([out.prompt, f"{statement}\n{out.prompt}"])
    kl = float(F.kl_div(after, base, log_target=True, reduction="sum"))  # KL(p_base || p_edited)
    assert kl > 1e-3 and scores["kl_drawdown"] == pytest.approx(kl, rel=1e-2, abs=1e-4)  # the base row is float16


def test_counterfact_margins_and_scores(llama):
    case = demo_cases()[0]
    ref = Reference.build(llama, [case])
    (scores,) = score_cases(llama, [case], ref)
    edit = case.of_kind(ProbeKind.EDIT)[0]
    new, true = (float(s.mean()) for s in llama.score([edit.prompt] * 2, [edit.expected, edit.contrast]))
    assert scores["efficacy_margin"] == pytest.approx(new - true, abs=1e-5)
    assert scores["efficacy"] == float(new > true)


def test_reference_must_cover_the_probes(llama):
    case = _own_answer_case(llama)
    with pytest.raises(ValueError, match="reference"):
        score_cases(llama, [case], Reference())


def test_reference_saves_loads_and_extends_only_what_it_lacks(llama, tmp_path):
    cases = demo_cases()[:3]
    ref = Reference.build(llama, cases[:2])
    ref.save(tmp_path)
    back = Reference.load(tmp_path)
    assert back.predictions == ref.predictions and back.likelihoods == ref.likelihoods
    assert back.distributions.keys() == ref.distributions.keys()
    for k, d in ref.distributions.items():
        assert torch.equal(back.distributions[k], d)
    assert back.extend(llama, cases[:2]) == 0
    assert back.extend(llama, cases) == len(Reference.build(llama, cases[2:]).predictions) > 0
    assert score_cases(llama, cases, back) == score_cases(llama, cases, Reference.build(llama, cases))
    assert Reference.load(tmp_path / "nothing").predictions == {}
    (tmp_path / "reference.json").write_text(json.dumps({"probes": [], "predictions": [], "likelihoods": []}))
    with pytest.raises(ValidationError, match="do not match"):
        Reference.load(tmp_path)


def test_a_cached_reference_is_reused_for_the_same_model_and_probes(tmp_path, monkeypatch):
    from editkit.models.tiny import tiny_model

    lm, cases = tiny_model("llama"), demo_cases()[:2]
    first = Reference.cached(lm, cases, tmp_path)
    assert len(list(tmp_path.iterdir())) == 1

    def no_generation(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(type(lm), "generate_ids", no_generation)
    again = Reference.cached(lm, cases, tmp_path)
    assert again.predictions == first.predictions and score_cases(lm, cases, again) == score_cases(lm, cases, first)
    monkeypatch.undo()
    Reference.cached(tiny_model("llama", seed=1), cases, tmp_path)  # other weights: a reference of their own
    Reference.cached(lm, demo_cases()[:3], tmp_path)  # other probes: another
    assert len(list(tmp_path.iterdir())) == 3
    for folder in tmp_path.iterdir():
        (folder / "reference.safetensors").write_bytes(b"damaged")
    assert Reference.cached(lm, cases, tmp_path).predictions == first.predictions  # rebuilt


def test_cached_unedited_scores_are_read_back_and_redone_when_anything_differs(tmp_path, monkeypatch):
    from editkit.evaluation import metrics

    lm, cases = tiny_model("llama"), demo_cases()[:3]
    ref = Reference.build(lm, cases)
    first = cached_scores(lm, cases, ref, tmp_path)
    assert first == score_cases(lm, cases, ref)
    calls = []
    real = metrics.score_cases
    monkeypatch.setattr(metrics, "score_cases", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert cached_scores(lm, cases, ref, tmp_path) == first and not calls  # read back, not scored
    cached_scores(lm, cases[:2], ref, tmp_path)  # other cases
    cached_scores(lm, cases, ref, tmp_path, batch_size=4)  # another batch size
    cached_scores(lm, cases, ref, tmp_path, kinds=(ProbeKind.EDIT,))  # other kinds
    assert len(calls) == 3 and len(list(tmp_path.iterdir())) == 4
    for path in tmp_path.iterdir():
        path.write_text("[{")  # damaged
    assert cached_scores(lm, cases, ref, tmp_path) == first and len(calls) == 4


def test_reference_build_reports_both_of_its_passes(llama, capsys):
    """Both passes over the out-of-scope probes (greedy answers, then next-token distributions: minutes each on
    a large run) say how far they are."""
    ref = Reference.build(llama, demo_cases()[:2], progress=True)
    lines = capsys.readouterr().err.splitlines()
    n = len(ref.predictions)
    assert any(f"out-of-scope probes: {n}/{n}" in line for line in lines), lines
    assert any(f"next-token distributions of {n} probes: {n}/{n}" in line for line in lines), lines


def test_a_reference_refuses_another_model(tmp_path):
    from editkit.models.tiny import tiny_model

    lm = tiny_model("llama")
    Reference.build(lm, demo_cases()[:1]).save(tmp_path)
    assert Reference.load(tmp_path).extend(tiny_model("llama"), demo_cases()[:1]) == 0  # the same weights again
    with pytest.raises(ValidationError, match="made on another model"):
        Reference.load(tmp_path).extend(tiny_model("gpt2"), demo_cases()[:1])
    with torch.no_grad():
        next(lm.model.parameters())[0, 0] += 1.0  # same name, other weights
    with pytest.raises(ValidationError, match="made on another model"):
        Reference.load(tmp_path).extend(lm, demo_cases()[:1])


def test_scoring_in_chunks_gives_the_scores_of_one_pass(llama, monkeypatch):
    import editkit.evaluation.metrics as metrics

    cases = demo_cases()[:6]
    ref = Reference.build(llama, cases)
    whole = score_cases(llama, cases, ref)
    monkeypatch.setattr(metrics, "CHUNK_PROBES", 3)  # a chunk or two of cases at a time
    chunked = score_cases(llama, cases, ref)
    assert len(chunked) == len(cases)
    for a, b in zip(chunked, whole, strict=True):
        assert a.keys() == b.keys() and a == pytest.approx(b, abs=1e-4)


# --------------------------------------------------------------------------- downstream
@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_shared_prefix_cache_equals_full_prompts(arch):
    from editkit.models.tiny import tiny_model

    lm = tiny_model(arch)
    prefix = "Review : good film\nSentiment : positive\n"
    suffixes = ["Review : bad\nSentiment :", "Review : a long and winding review of things\nSentiment :"]
    ids = [5, 9]
    shared = lm.label_logprobs_after_prefix(prefix, suffixes, ids, batch_size=2)
    full = torch.stack(
        [
            lm.next_token_logprobs([lm.tokenizer.decode(lm.encode(prefix) + lm.encode(s, special=False))])[0]
            for s in suffixes
        ]
    )[:, ids]
    assert torch.allclose(shared, full, atol=1e-4)


def test_f1_auc_and_interval():
    gold = [1, 1, 0, 0, 1, 0]
    pred = [1, 0, 0, 1, 1, 0]
    assert downstream.f1_binary(gold, pred) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert downstream.f1_binary([0, 1], [0, 0]) == 0.0
    lo, hi = downstream.bootstrap_interval(gold * 20, pred * 20)
    assert lo <= downstream.f1_binary(gold, pred) <= hi
    assert downstream.roc_auc([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.2]) == 1.0
    assert downstream.roc_auc([1, 0], [0.5, 0.5]) == 0.5


def test_downstream_examples_are_balanced_and_seeded(tmp_path):
    path = tmp_path / "sst2.jsonl"
    path.write_text("".join(json.dumps({"sentence": f"s{i}", "label": i % 2}) + "\n" for i in range(40)))
    a = downstream.load_examples(path, "sst2", n=10, seed=1)
    assert sum(e["label"] for e in a) == 5 and len(a) == 10
    assert a == downstream.load_examples(path, "sst2", n=10, seed=1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x", "label": 1}) + "\n")
    with pytest.raises(ValidationError, match="field 'sentence'"):
        downstream.load_examples(bad, "sst2")
    with pytest.raises(EditkitError, match="unknown downstream task"):
        downstream.get_task("mnli")


def test_evaluate_task_on_a_tiny_model(llama, tmp_path):
    path = tmp_path / "cola.jsonl"
    path.write_text("".join(json.dumps({"sentence": f"Sentence {i}.", "label": i % 2}) + "\n" for i in range(12)))
    out = downstream.evaluate_task(llama, "cola", downstream.load_examples(path, "cola", n=12), batch_size=5)
    assert out["n"] == 12 and 0.0 <= out["f1"] <= 1.0 and out["f1_ci"][0] <= out["f1"] <= out["f1_ci"][1]


def test_sequential_aggregates_report_downstream_f1_and_auc(llama, tmp_path):
    path = tmp_path / "sst2.jsonl"
    path.write_text("".join(json.dumps({"sentence": f"Film {i} was.", "label": i % 2}) + "\n" for i in range(8)))
    tasks = {"sst2": downstream.load_examples(path, "sst2", n=8)}
    editor = create_editor("ft", {"steps": 2, "lr": 1e-2})
    out = sequential_edits(llama, editor, demo_cases()[:2], every=2, downstream=tasks, progress=False)
    agg, first, last = out["aggregates"], out["checkpoints"][0], out["checkpoints"][-1]
    assert agg["unedited_sst2_auc"] == first["downstream"]["sst2"]["auc"]
    assert agg["final_sst2_auc"] == last["downstream"]["sst2"]["auc"]
    assert agg["final_downstream_f1"] == last["downstream"]["sst2"]["f1"]
    # where the time went, by phase: the edits, their scores, the checkpoints' retention and downstream
    phases = out["phase_seconds"]
    assert set(phases) == {"edits", "immediate_scores", "drift", "retention", "downstream"}
    assert sum(phases.values()) <= out["seconds"] and all(v > 0 for v in phases.values())
    assert last["phase_seconds"] == phases  # the last checkpoint is the run's end
    assert phases["retention"] == last["seconds"]["retention"] and phases["edits"] == pytest.approx(
        sum(r["edit_seconds"] for r in out["records"])
    )


# --------------------------------------------------------------------------- drift
def test_drift_is_normalised_by_output_neurons(llama):
    editor = create_editor("ft", {"steps": 2, "lr": 1e-2})
    handle = editor.apply(llama, [demo_cases()[0].request])
    tracker = DriftTracker()
    tracker.track(handle)
    (name, value), *_ = tracker.measure(llama.model).items()
    ch = handle.changes[name]
    out_features = llama.model.get_submodule(name.rsplit(".", 1)[0]).out_features
    assert value == pytest.approx(float((ch.edited.double() - ch.original.double()).norm()) / out_features)
    assert value > 0


def test_drift_jump_is_flagged():
    results = {"records": [], "disabling_edits": []}
    for i, d in enumerate([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 5.0], start=1):  # records without their own drift
        results["records"].append({"n_edits": i, "case_id": str(i), "drift": d})
        flag_drift_jump(results, 10.0)
    assert [d["n_edits"] for d in results["disabling_edits"]] == [7]
    # with each step's own drift: the total's increments shrink as the total grows (random directions add up
    # as a square root), and only an edit that is itself large is flagged
    results = {"records": [], "disabling_edits": []}
    own = [1.0] * 60 + [5.0] + [1.0] * 3 + [12.0]
    for i, d in enumerate(own, start=1):
        total = sum(x**2 for x in own[:i]) ** 0.5
        results["records"].append({"n_edits": i, "case_id": str(i), "drift": total, "edit_drift": d})
        flag_drift_jump(results, 10.0)
    assert [d["n_edits"] for d in results["disabling_edits"]] == [65]  # increments alone would flag 61 too
    assert "own drift was 12.0x" in results["disabling_edits"][0]["reason"]
    for r in results["records"]:
        del r["edit_drift"]
    flagged = {"records": [], "disabling_edits": []}
    for r in results["records"]:
        flagged["records"].append(r)
        flag_drift_jump(flagged, 10.0)
    assert [d["n_edits"] for d in flagged["disabling_edits"]] == [61, 65]


# --------------------------------------------------------------------------- protocols
def test_batch_protocol_scores_and_rolls_back(llama):
    before = _snapshot(llama)
    cases = demo_cases()[:4]
    results = batch_edits(llama, create_editor("ft", {"steps": 3, "lr": 1e-2}), cases, ks=[1, 2], progress=False)
    assert set(results["aggregates_by_k"]) == {"1", "2"}
    assert results["aggregates_by_k"]["2"]["n_cases"] == 4
    assert len(results["records"]) == 8
    assert {"efficacy", "es", "dd", "kl_drawdown", "seconds_per_edit"} <= set(results["aggregates"])
    assert all(torch.equal(before[n], p) for n, p in llama.model.named_parameters())
    with pytest.raises(ValidationError, match="between 1 and"):
        batch_edits(llama, create_editor("ft"), cases, ks=[5], progress=False)


def test_a_large_group_shows_the_progress_of_its_scoring(llama, monkeypatch, capsys):
    from editkit import progress
    from editkit.evaluation import batch

    monkeypatch.setattr(progress, "LINE_EVERY_SECONDS", 0.0)
    monkeypatch.setattr(batch, "SCORING_PROGRESS_FROM", 2)
    batch_edits(llama, create_editor("ft", {"steps": 1}), demo_cases()[:4], ks=[1, 2], max_groups=1)
    err = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in err if line.startswith("scoring 2 cases")] == [
        f"scoring 2 cases on {llama.name}: 2/2"
    ]
    assert not [line for line in err if line.startswith("scoring 1 cases")]  # k = 1's groups are below the mark


def _case(subject: str, n: int) -> EditCase:
    request = EditRequest(prompt=f"{{}} fact {n} is", subject=subject, target_new=" x", case_id=f"{subject}{n}")
    return EditCase(request, [Probe(request.text, " x", ProbeKind.EDIT)])


def test_edit_groups_keep_subjects_apart_in_file_order():
    cases = [_case(s, i) for i, s in enumerate("AABCBAD")]
    assert edit_groups(cases, 3) == [[0, 1, 2], [3, 4, 5]]
    groups = edit_groups(cases, 3, distinct_subjects=True)
    assert groups == [[0, 2, 3], [1, 4, 6]]  # the second A waits for the next group; the third A finds none
    for g in groups:
        assert len({cases[i].request.subject for i in g}) == 3


def test_batch_protocol_with_distinct_subjects(llama):
    cases = [_case(s, i) for i, s in enumerate("AABC")]
    ft = create_editor("ft", {"steps": 1})
    results = batch_edits(llama, ft, cases, ks=[2], distinct_subjects=True, progress=False)
    groups = {}
    for r in results["records"]:
        groups.setdefault(r["group"], []).append(r["case_id"])
    assert groups == {0: ["A0", "B2"], 1: ["A1", "C3"]} and results["distinct_subjects"] is True
    with pytest.raises(ValidationError, match="distinct subjects"):
        batch_edits(llama, create_editor("ft"), cases[:2], ks=[2], distinct_subjects=True, progress=False)


def test_batch_protocol_applies_one_by_one_when_the_editor_cannot_batch(llama):
    rome = create_editor("rome", {"v_steps": 2, "n_context": 1, "context_length": 3})
    results = batch_edits(llama, rome, demo_cases()[:2], ks=[2], progress=False)
    assert results["aggregates_by_k"]["2"]["n_cases"] == 2


def test_a_batch_groups_info_is_kept_once_per_group_not_in_each_record(llama, tiny_corpus):
    memit = create_editor(
        "memit", {"v_steps": 2, "n_context": 1, "context_length": 3, "corpus": str(tiny_corpus), "mom2_n_tokens": 500}
    )
    results = batch_edits(llama, memit, demo_cases()[:4], ks=[1, 2], progress=False)
    assert all("info" not in r for r in results["records"]) and len(results["records"]) == 8
    assert [(g["k"], g["group"]) for g in results["groups"]] == [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1)]
    assert [len(g["info"]["steps"]) for g in results["groups"]] == [1, 1, 1, 1, 2, 2]  # one per edit of the group
    k2 = [r for r in results["records"] if r["k"] == 2]
    for g in results["groups"][4:]:
        shares = [r["edit_seconds"] for r in k2 if r["group"] == g["group"]]
        assert sum(shares) == pytest.approx(g["edit_seconds"])


def test_sequential_protocol_resumes_after_interruption(tmp_path, monkeypatch):
    from editkit.models.tiny import tiny_model

    cases = demo_cases()[:4]
    settings = {"steps": 3, "lr": 1e-2}
    full = sequential_edits(tiny_model("llama"), create_editor("ft", settings), cases, every=2, progress=False)
    assert [c["n_edits"] for c in full["checkpoints"]] == [0, 2, 4]
    assert full["checkpoints"][-1]["drift"]
    first = full["records"][0]  # after one edit, its own drift is the whole drift
    assert first["edit_drift"] == pytest.approx(first["drift"]) and all(r["edit_drift"] > 0 for r in full["records"])

    lm = tiny_model("llama")
    editor = create_editor("ft", settings)
    real_apply, calls = editor.apply, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_apply(*args, **kwargs)

    editor.apply = flaky  # type: ignore[method-assign]
    state = tmp_path / "state"
    with pytest.raises(KeyboardInterrupt):
        sequential_edits(lm, editor, cases, every=2, state_dir=state, progress=False)
    saved = json.loads((state / "results.json").read_text())
    assert saved["n_edits"] == 2 and saved["total_seconds"] >= saved["seconds"] > 0

    fresh = tiny_model("llama")  # a new process: the base model again
    built = []
    real_extend = Reference.extend
    monkeypatch.setattr(Reference, "extend", lambda self, *a, **k: built.append(real_extend(self, *a, **k)) or 0)
    resumed = sequential_edits(fresh, create_editor("ft", settings), cases, every=2, state_dir=state, progress=False)
    assert built == [0]  # the unedited model's answers came from the state folder
    # the results say where the run went on, from its saved weights
    assert resumed["resumes"] == [{"n_edits": 2, "from": "weights", "environment": full["environment"]}]
    # the run's wall time counts both invocations, not only the one that finished it
    assert resumed["total_seconds"] >= saved["total_seconds"] + resumed["seconds"] - saved["seconds"]
    assert resumed["peak_memory_mb"] >= saved["peak_memory_mb"] > 0
    assert len(resumed["records"]) == len(full["records"])
    for a, b in zip(resumed["records"], full["records"], strict=True):
        assert a["post"] == pytest.approx(b["post"], abs=1e-5)
    assert resumed["checkpoints"][-1]["drift"] == pytest.approx(full["checkpoints"][-1]["drift"])
    with pytest.raises(ValidationError, match="other settings"):
        sequential_edits(tiny_model("llama"), create_editor("ft", {"steps": 4}), cases, state_dir=state, progress=False)


def test_a_setting_added_to_the_code_since_a_run_began_resumes_it_at_its_default(tmp_path):
    """A state saved by code whose method lacked a setting (here: stop_loss taken out of the saved key) resumes
    when the setting is at its default, and is another run when it is set."""
    from editkit.models.tiny import tiny_model

    cases = demo_cases()[:4]
    settings = {"steps": 2, "lr": 1e-2}
    state = tmp_path / "state"
    sequential_edits(tiny_model("llama"), create_editor("ft", settings), cases[:2], state_dir=state, progress=False)
    path = state / "results.json"
    saved = json.loads(path.read_text())
    del saved["run_key"]["config"]["stop_loss"]
    path.write_text(json.dumps(saved))
    with pytest.raises(ValidationError, match="other settings"):
        sequential_edits(
            tiny_model("llama"), create_editor("ft", {**settings, "stop_loss": 0.5}), cases, state_dir=state
        )
    resumed = sequential_edits(
        tiny_model("llama"), create_editor("ft", settings), cases, state_dir=state, progress=False
    )
    assert resumed["n_edits"] == 4 and len(resumed["records"]) == 4


def test_a_run_killed_while_saving_resumes_from_the_last_complete_state(tmp_path, monkeypatch):
    from editkit.evaluation import runstate
    from editkit.models.tiny import tiny_model

    cases = demo_cases()[:4]
    settings = {"steps": 3, "lr": 1e-2}
    full = sequential_edits(tiny_model("llama"), create_editor("ft", settings), cases, every=2, progress=False)
    real_write, results_writes = runstate.atomic_write, []

    def killed(path, text):  # killed after edit 3's weights were written, before its results
        if path.name == "results.json":
            results_writes.append(1)
            if len(results_writes) == 3:
                raise KeyboardInterrupt
        real_write(path, text)

    monkeypatch.setattr(runstate, "atomic_write", killed)
    state = tmp_path / "state"
    with pytest.raises(KeyboardInterrupt):
        sequential_edits(
            tiny_model("llama"), create_editor("ft", settings), cases, every=2, state_dir=state, progress=False
        )
    monkeypatch.setattr(runstate, "atomic_write", real_write)
    assert json.loads((state / "results.json").read_text())["n_edits"] == 2 and (state / "weights-3.json").exists()
    resumed = sequential_edits(
        tiny_model("llama"), create_editor("ft", settings), cases, every=2, state_dir=state, progress=False
    )
    for a, b in zip(resumed["records"], full["records"], strict=True):
        assert a["post"] == pytest.approx(b["post"], abs=1e-5)
    assert sorted(f.name for f in state.glob("weights*")) == ["weights-4.json", "weights-4.safetensors"]


def test_a_state_folder_in_use_is_refused(tmp_path):
    from editkit.evaluation.runstate import RunState
    from editkit.models.tiny import tiny_model

    state = tmp_path / "state"
    with RunState(state).locked(), pytest.raises(ValidationError, match="in use"):  # as by another process
        sequential_edits(tiny_model("llama"), create_editor("ft", {"steps": 1}), demo_cases()[:1], state_dir=state)
    run = sequential_edits(tiny_model("llama"), create_editor("ft", {"steps": 1}), demo_cases()[:1], state_dir=state)
    assert run["n_edits"] == 1  # the lock went with the first holder


def test_a_folder_with_the_older_file_names_resumes(tmp_path):
    from editkit.models.tiny import tiny_model

    cases = demo_cases()[:4]
    settings = {"steps": 3, "lr": 1e-2}
    full = sequential_edits(tiny_model("llama"), create_editor("ft", settings), cases, every=2, progress=False)
    state = tmp_path / "state"
    sequential_edits(
        tiny_model("llama"), create_editor("ft", settings), cases[:2], every=2, state_dir=state, progress=False
    )
    (state / "weights-2.json").rename(state / "weights.json")  # as editkit wrote them before
    (state / "weights-2.safetensors").rename(state / "weights.safetensors")
    resumed = sequential_edits(
        tiny_model("llama"), create_editor("ft", settings), cases, every=2, state_dir=state, progress=False
    )
    assert resumed["records"][-1]["post"] == pytest.approx(full["records"][-1]["post"], abs=1e-5)
    assert not (state / "weights.json").exists()


def test_a_run_stopped_before_its_first_edit_keeps_its_reference(tmp_path, monkeypatch):
    from editkit.models.tiny import tiny_model

    cases = demo_cases()[:3]
    editor = create_editor("ft", {"steps": 2})

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    editor.apply = stop  # type: ignore[method-assign]
    state = tmp_path / "state"
    with pytest.raises(KeyboardInterrupt):
        sequential_edits(tiny_model("llama"), editor, cases, state_dir=state, progress=False)
    assert (state / "reference.json").exists() and not (state / "results.json").exists()
    saved = json.loads((state / "unedited.json").read_text())
    assert saved["model"] == tiny_model("llama").fingerprint() and len(saved["scores"]) == 3
    saved["scores"][0]["efficacy"] = 0.123  # a mark: the rerun must take these scores, not recompute them
    (state / "unedited.json").write_text(json.dumps(saved))
    built = []
    real_extend = Reference.extend
    monkeypatch.setattr(Reference, "extend", lambda self, *a, **k: built.append(real_extend(self, *a, **k)) or 0)
    run = sequential_edits(
        tiny_model("llama"), create_editor("ft", {"steps": 2}), cases, state_dir=state, progress=False
    )
    assert built == [0] and run["unedited"][0]["efficacy"] == 0.123
    other = tmp_path / "other"  # other cases: the saved scores are not theirs
    other.mkdir()
    (other / "unedited.json").write_text(json.dumps(saved))
    run = sequential_edits(
        tiny_model("llama"), create_editor("ft", {"steps": 2}), cases[:2], state_dir=other, progress=False
    )
    assert run["unedited"][0]["efficacy"] != 0.123


def test_a_resumed_alphaedit_run_still_protects_the_edits_made_before_the_stop(tmp_path, tiny_corpus):
    from editkit.models.tiny import tiny_model

    cases = demo_cases()[:4]
    settings = {
        "layers": [1, 2],
        "corpus": str(tiny_corpus),
        "mom2_n_tokens": 2000,
        "nullspace_threshold": 0.05,
        "l2": 1e-3,  # small beside the earlier edits' keys, so that forgetting them would show
        "v_steps": 4,
        "n_context": 2,
        "context_length": 4,
    }
    full_lm = tiny_model("llama")
    sequential_edits(full_lm, create_editor("alphaedit", settings), cases, every=2, progress=False)

    state = tmp_path / "state"
    sequential_edits(
        tiny_model("llama"), create_editor("alphaedit", settings), cases[:2], every=2, state_dir=state, progress=False
    )
    assert json.loads((state / "weights-2.json").read_text())["editor_state"] == ["counts", "keys.1", "keys.2"]
    assert sorted(f.name for f in state.glob("*-*")) == [
        "editor-2.safetensors",
        "weights-2.json",
        "weights-2.safetensors",
    ]
    resumed_lm = tiny_model("llama")  # a new process: the base model and a new editor
    sequential_edits(resumed_lm, create_editor("alphaedit", settings), cases, every=2, state_dir=state, progress=False)
    full, resumed = dict(full_lm.model.named_parameters()), dict(resumed_lm.model.named_parameters())
    for name in (full_lm.adapter.weight_name(layer, "mlp_out") for layer in (1, 2)):
        torch.testing.assert_close(resumed[name], full[name], rtol=0, atol=1e-6)

    meta = json.loads((state / "weights-4.json").read_text())
    del meta["editor_state"]  # a folder saved before the editor's state was kept
    (state / "weights-4.json").write_text(json.dumps(meta))
    with pytest.raises(ValidationError, match="start afresh"):
        sequential_edits(
            tiny_model("llama"), create_editor("alphaedit", settings), cases, every=2, state_dir=state, progress=False
        )


@pytest.mark.parametrize(("method", "per_step"), [("alphaedit", 1), ("rome", 2), ("memit", 2)])
def test_a_run_resumes_from_its_results_alone_by_replaying_the_records(
    tmp_path, tiny_corpus, monkeypatch, method, per_step
):
    from editkit.evaluation import runstate
    from editkit.models.tiny import tiny_model

    cases = demo_cases()[:4]
    settings = {"v_steps": 4, "n_context": 2, "context_length": 4, "corpus": str(tiny_corpus), "mom2_n_tokens": 2000}
    if method == "alphaedit":  # as above: a small alpha, so that forgetting the earlier edits would show
        settings |= {"layers": [1, 2], "nullspace_threshold": 0.05, "l2": 1e-3}

    def run(lm, state, editor=None):
        editor = editor or create_editor(method, settings)
        return sequential_edits(lm, editor, cases, edits_per_step=per_step, every=2, state_dir=state, progress=False)

    full_lm = tiny_model("llama")
    full = run(full_lm, None)
    if method == "memit":  # a call's info lists its edits' optimisation steps, and the records keep the list
        steps = full["records"][0]["info"]["steps"]
        assert len(steps) == per_step and all(isinstance(s, int) and 1 <= s <= 4 for s in steps)
    editor = create_editor(method, settings)
    real_apply, calls = editor.apply, []

    def flaky(lm, requests):  # stopped before the third edit
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.extend(requests)
        return real_apply(lm, requests)

    editor.apply = flaky  # type: ignore[method-assign]
    state = tmp_path / "state"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model("llama"), state, editor)
    # another machine: the partial results (as committed), no weights, no reference, no editor state
    moved = tmp_path / "moved"
    moved.mkdir()
    saved = json.loads((state / "results.json").read_text())
    assert saved["n_edits"] == 2 and all(
        "replay" in r for r in saved["records"][:: 1 if method == "rome" else per_step]
    )
    # records name their cases by id: committed results carry none of the data set's text
    text = json.dumps(saved)
    assert not any(c.request.subject in text or c.request.target_new in text for c in cases[:2])
    (moved / "results.json").write_text(json.dumps(saved))
    replay, kept_before_replay = runstate.replay_records, []

    def watched_replay(*args, **kwargs):
        kept_before_replay.append((moved / "unedited.json").exists())
        return replay(*args, **kwargs)

    monkeypatch.setattr(runstate, "replay_records", watched_replay)
    resumed_lm = tiny_model("llama")
    resumed = run(resumed_lm, moved)
    full_params = dict(full_lm.model.named_parameters())
    for name, p in resumed_lm.model.named_parameters():
        torch.testing.assert_close(p, full_params[name], rtol=0, atol=1e-6)
    for a, b in zip(resumed["records"], full["records"], strict=True):
        assert a["post"] == pytest.approx(b["post"], abs=1e-5)
    assert resumed["checkpoints"][-1]["drift"] == pytest.approx(full["checkpoints"][-1]["drift"])
    # the rebuilt state keeps the unedited scores too, for another method's run on the same cases to copy, and
    # writes them before the replay, so that such a run need not wait for it
    assert kept_before_replay == [True]
    # the results say where the weights were rebuilt and how near the replay came to the recorded drift
    assert "resumes" not in full and full["environment"]["cpu_capability"]
    (replayed,) = resumed["resumes"]
    assert replayed["n_edits"] == 2 and replayed["from"] == "records"
    assert replayed["environment"] == full["environment"]
    assert 0 <= replayed["largest_relative_deviation"] < 1e-4
    kept = json.loads((moved / "unedited.json").read_text())
    assert kept["scores"] == full["unedited"] and kept["model"] == tiny_model("llama").fingerprint()

    def resume_with(change):
        folder = tmp_path / f"changed{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        bad = json.loads(json.dumps(saved))
        change(bad["records"])
        (folder / "results.json").write_text(json.dumps(bad))
        return run(tiny_model("llama"), folder)

    def nudge(records):  # every recorded drift 5e-5 off: within the check's tolerance, and measured
        for r in records:
            r["edit_drift"] *= 1 + 5e-5

    assert resume_with(nudge)["resumes"][0]["largest_relative_deviation"] == pytest.approx(5e-5, rel=0.05)
    with pytest.raises(ValidationError, match="moved the weights by"):
        # a step's records all carry its drift; the check reads its last
        resume_with(lambda records: records[per_step - 1].update(edit_drift=2 * records[0]["edit_drift"]))
    with pytest.raises(ValidationError, match="not the run's cases"):  # the replay takes each request by position
        resume_with(lambda records: records[0].update(case_id="another"))
    with pytest.raises(ValidationError, match="holds nothing to replay"):
        resume_with(lambda records: records[0].pop("replay"))


def test_a_run_of_an_editor_that_cannot_replay_needs_its_weights(tmp_path):
    from editkit.models.tiny import tiny_model

    state = tmp_path / "state"
    ft = {"steps": 1}
    sequential_edits(tiny_model("llama"), create_editor("ft", ft), demo_cases()[:1], state_dir=state, progress=False)
    for f in state.glob("weights*"):
        f.unlink()
    with pytest.raises(ValidationError, match="cannot rebuild its edits"):
        sequential_edits(
            tiny_model("llama"), create_editor("ft", ft), demo_cases()[:2], state_dir=state, progress=False
        )


def test_checkpoints_name_the_forgotten_edits(llama):
    def case(subject: str, new: str, true: str) -> EditCase:
        req = EditRequest(prompt="{} is located in the city of", subject=subject, target_new=new, target_true=true)
        return EditCase(req, (Probe(req.text, new, ProbeKind.EDIT, true),))

    # the third edit takes back the first; the second is about another subject
    cases = [case("The Eiffel Tower", " Rome", " Paris"), case("Big Ben", " Oslo", " London")]
    cases.append(case("The Eiffel Tower", " Paris", " Rome"))
    out = sequential_edits(llama, create_editor("ft", {"steps": 10, "lr": 5e-2}), cases, every=3, progress=False)
    assert [r["post"]["efficacy"] for r in out["records"]] == [1.0, 1.0, 1.0]  # each edit took when made
    last = out["checkpoints"][-1]
    assert (last["succeeded"], last["forgotten"], last["forgotten_edits"]) == (3, 1, [1])


def test_sequential_run_extends_to_more_cases(tmp_path):
    from editkit.models.tiny import tiny_model

    cases = demo_cases()[:4]
    settings = {"steps": 3, "lr": 1e-2}
    full = sequential_edits(tiny_model("llama"), create_editor("ft", settings), cases, every=2, progress=False)
    state = tmp_path / "state"
    short = sequential_edits(
        tiny_model("llama"), create_editor("ft", settings), cases[:2], every=2, state_dir=state, progress=False
    )
    assert short["n_cases"] == 2 and "extended" not in short
    longer = sequential_edits(
        tiny_model("llama"), create_editor("ft", settings), cases, every=2, state_dir=state, progress=False
    )
    assert longer["n_cases"] == 4 and [e["to_cases"] for e in longer["extended"]] == [4]
    for a, b in zip(longer["unedited"], full["unedited"], strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    for a, b in zip(longer["records"], full["records"], strict=True):
        assert a["post"] == pytest.approx(b["post"], abs=1e-5)
    assert [c["n_edits"] for c in longer["checkpoints"]] == [0, 2, 4]
    assert longer["checkpoints"][-1]["forgotten"] == full["checkpoints"][-1]["forgotten"]
    with pytest.raises(ValidationError, match="other settings"):  # other cases, not an extension
        sequential_edits(
            tiny_model("llama"), create_editor("ft", settings), cases[1:], every=2, state_dir=state, progress=False
        )


# --------------------------------------------------------------------------- report
def test_report_writes_tables_and_plots(llama, tmp_path):
    cases = demo_cases()[:4]
    editor = create_editor("ft", {"steps": 2})
    batch = batch_edits(llama, editor, cases, ks=[1, 2], progress=False)
    seq = sequential_edits(llama, editor, cases, every=2, progress=False)
    seq["run"] = {"label": "ft-2-steps"}  # as the runner records RunConfig.label
    seq["rejected_edits"] = [{"n_edits": 3, "case_id": "c3", "reasons": ["too far", "too forgetful"]}]  # as a guard
    seq["disabling_edits"] = [{"n_edits": 2, "case_id": "c2", "reason": "downstream F1 fell"}]  # as the F1 rule
    own = [r["edit_drift"] for r in seq["records"]]
    assert len(own) == 4
    flagged_size = own[1] / ((sorted(own)[1] + sorted(own)[2]) / 2)  # against the median of four
    paths = []
    for name, res in (("b.json", batch), ("s.json", seq)):
        (tmp_path / name).write_text(json.dumps(res))
        paths.append(tmp_path / name)
    md = write_report(paths, tmp_path / "report")
    text = md.read_text()
    assert "| ft (tiny-llama-s0) | batch | 4 |" in text and "sequential_editing.png" in text
    assert "| ft-2-steps (tiny-llama-s0) | sequential | 4 |" in text
    assert "| ft-2-steps (tiny-llama-s0) | 3 | c3 | too far; too forgetful |" in text
    assert f"| ft-2-steps (tiny-llama-s0) | 2 | c2 | {flagged_size:.1f}x | downstream F1 fell |" in text
    assert (tmp_path / "report" / "batch_es_dd.png").stat().st_size > 1000
    assert (tmp_path / "report" / "sequential_editing.png").stat().st_size > 1000
    assert (tmp_path / "report" / "sequential_layers.png").stat().st_size > 1000
    assert "drift of each edited layer" in text
    assert (tmp_path / "report" / "sequential_forgotten.png").stat().st_size > 1000
    few = batch_edits(llama, editor, cases, ks=[2], max_groups=1, progress=False)
    (tmp_path / "few.json").write_text(json.dumps(few))
    assert "| ft (tiny-llama-s0) | batch | 2 |" in write_report([tmp_path / "few.json"], tmp_path / "r3").read_text()
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ValidationError, match="not an editkit results file"):
        write_report([tmp_path / "junk.json"], tmp_path / "r2")
    assert "edits before catastrophic forgetting" in text
    assert "over the last 20 edits" in text  # the running-mean window of a short run
    assert "each edit alone moved the weights" in text  # FT's steps record their own drift


def test_layer_names_keep_what_tells_the_weights_apart():
    from editkit.evaluation.report import _layer_names

    names = [f"model.layers.{i}.mlp.down_proj.weight" for i in (2, 10)]
    assert _layer_names(names) == ["2", "10"]
    assert _layer_names(["h.3.mlp.c_proj.weight", "h.3.attn.c_proj.weight"]) == ["mlp", "attn"]
    assert _layer_names(["a.b.weight", "a.b.bias"]) == ["weight", "bias"]  # a name is never cut to nothing
    assert _layer_names(["model.layers.6.mlp.down_proj.weight"]) == ["model.layers.6.mlp.down_proj"]


def test_the_forgotten_edits_figure_draws_only_runs_that_name_them(tmp_path):
    from editkit.evaluation.report import _plot_forgotten

    older = _synthetic_run([0.9, 0.9, 0.9], [0, 1, 2], [1] * 20)
    assert _plot_forgotten([older], tmp_path) == [] and not (tmp_path / "sequential_forgotten.png").exists()
    newer = _synthetic_run([0.9, 0.9, 0.9], [0, 1, 2], [1] * 20) | {"method": "rome", "model": "m"}
    for c, named in zip(newer["checkpoints"], ([], [3], [3, 12]), strict=True):
        c["forgotten_edits"] = named
    assert "which edits are forgotten" in _plot_forgotten([older, newer], tmp_path)[0]
    assert (tmp_path / "sequential_forgotten.png").stat().st_size > 1000


def _synthetic_run(aucs, forgotten, successes):
    """A sequential run of len(successes) edits with checkpoints every 10: the sst2 (best) and rte AUCs and the
    forgotten counts at each checkpoint, whether each new edit succeeded."""
    records = [
        {"n_edits": i + 1, "post": {"efficacy": float(ok), "neighborhood": 0.7}} for i, ok in enumerate(successes)
    ]
    checkpoints = [
        {
            "n_edits": 10 * j,
            "downstream": {"sst2": {"auc": auc, "f1": auc - 0.2}, "rte": {"auc": 0.5, "f1": 0.6}},
            "forgotten": f,
            "succeeded": 10 * j,
            "forgotten_fraction": f / (10 * j) if j else 0.0,
        }
        for j, (auc, f) in enumerate(zip(aucs, forgotten, strict=True))
    ]
    agg = {"efficacy": sum(successes) / len(successes), "neighborhood": 0.7, "unedited_neighborhood": 0.75}
    return {"n_edits": len(successes), "records": records, "checkpoints": checkpoints, "aggregates": agg}


def test_forgetting_summary_places_catastrophic_forgetting():
    from editkit.evaluation.report import forgetting_summary

    # SST-2 AUC 0.9 -> 0.7 (= 0.5 + 0.4 / 2: half the margin lost) at edit 20
    s = forgetting_summary(_synthetic_run([0.9, 0.85, 0.7, 0.6], [0, 0, 1, 2], [1] * 30))
    assert (s["cf_at"], s["task"], s["task_auc"]) == (20, "sst2", (0.9, 0.6))
    assert s["task_f1"] == pytest.approx((0.7, 0.4))  # the best task's F1, not rte's higher one
    assert s["forgotten"] == (2, 30)
    # no collapse of the task, but 6 of 10 forgotten at edit 10
    assert forgetting_summary(_synthetic_run([0.9, 0.88, 0.88], [0, 6, 6], [1] * 20))["cf_at"] == 10
    # new edits stop taking: 10 of 10, then 4 of 10
    late = forgetting_summary(_synthetic_run([0.9, 0.88, 0.88], [0, 0, 0], [1] * 10 + [1, 0] * 2 + [0] * 6))
    assert late["cf_at"] == 20 and late["efficacy_before_cf"] == pytest.approx(12 / 20)
    calm = _synthetic_run([0.9, 0.88, 0.86], [0, 0, 1], [1] * 20)
    assert forgetting_summary(calm)["cf_at"] is None and forgetting_summary(calm)["own_drift"] is None
    for i, r in enumerate(calm["records"]):
        r["edit_drift"] = 30.0 if i == 7 else 1.0 + (i % 2)  # median 1.5 (1s and 2s), one edit at 20x
    assert forgetting_summary(calm)["own_drift"] == (20.0, 1, 20)


def test_the_forgetting_table_counts_the_guards_rejections_when_a_run_has_the_guard():
    from editkit.evaluation.report import _forgetting_table, forgetting_summary

    plain = _synthetic_run([0.9, 0.88], [0, 0], [1] * 10) | {"method": "rome", "model": "m"}
    guarded = plain | {"method": "rome+guard", "guard": {}, "rejected_edits": [{"n_edits": 3}, {"n_edits": 7}]}
    assert forgetting_summary(plain)["rejected"] is None and forgetting_summary(guarded)["rejected"] == 2
    assert not any("guard rejected" in line for line in _forgetting_table([plain]))
    (row,) = [line for line in _forgetting_table([plain, guarded]) if "guard rejected" in line]
    assert row.endswith("| no guard | 2 |")


def test_report_reads_a_running_sequential_runs_state(tmp_path):
    from editkit.evaluation.report import load_runs
    from editkit.models.tiny import tiny_model

    cases = demo_cases()[:4]
    editor = create_editor("ft", {"steps": 2})
    state = tmp_path / "state"
    sequential_edits(tiny_model("llama"), editor, cases[:2], every=2, state_dir=state, progress=False)
    partial = json.loads((state / "results.json").read_text())
    assert "aggregates" not in partial  # what a run still going on has written
    (run,) = load_runs([state / "results.json"])
    assert run["aggregates"]["efficacy"] == pytest.approx(sum(r["post"]["efficacy"] for r in partial["records"]) / 2)
    assert "ft, 2 of 2 edits so far" in write_report([state / "results.json"], tmp_path / "r").read_text()
    # the run's config, label included, is in its state from the first step on
    labelled = tmp_path / "labelled"
    sequential_edits(
        tiny_model("llama"),
        editor,
        cases[:2],
        every=2,
        state_dir=labelled,
        progress=False,
        run={"label": "ft-2-steps", "limit": 2},
    )
    assert json.loads((labelled / "results.json").read_text())["run"]["label"] == "ft-2-steps"
    (named,) = load_runs([labelled / "results.json"])
    assert named["run"]["label"] == "ft-2-steps, 2 of 2 edits so far"
    del partial["records"]
    (tmp_path / "broken.json").write_text(json.dumps(partial))
    with pytest.raises(ValidationError, match="without records"):
        load_runs([tmp_path / "broken.json"])


def test_a_sequential_run_names_the_parts_its_editor_loaded_at_the_first_edit(enn_parts):  # noqa: F811
    editor = create_editor("enn", {"artifacts": str(enn_parts("llama")), "steps": 1})
    assert editor.provenance() == {}  # ENN loads its parts at its first edit
    out = sequential_edits(tiny_model("llama"), editor, demo_cases()[:2], every=2, progress=False)
    assert list(out["provenance"]) == ["enn:tiny-llama-s0"] and out["provenance"] == editor.provenance()
