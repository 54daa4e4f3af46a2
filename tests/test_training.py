"""Training on tiny models: the shared loop (editkit.training.loop) through the test-only toy trainer (seeded,
resumed to the same result), the trainer registry and `editkit train`, and SERAC's parts (editkit.training.serac
and its data, editkit.training.serac_data): data construction, eq. 2 / eq. 3 losses, artifacts, manifest,
resumption, and a trained SERAC that routes and answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_TRAINING, write_tiny_cases
from editkit.cli import main
from editkit.editors import create_editor
from editkit.editors.memory import descriptor_of
from editkit.edits import EditRequest
from editkit.errors import ConfigError, UnknownNameError, ValidationError
from editkit.models.encoder import SentenceEncoder
from editkit.models.lm import LanguageModel
from editkit.models.tiny import tiny_model, tiny_tokenizer
from editkit.trained import read_manifest, verify
from editkit.training.registry import available_trainers, create_trainer
from editkit.training.serac import SERACTrainConfig, _balanced_bce, train
from editkit.training.serac_data import counterfactual_examples, mine_hard_negatives, scope_examples


# --------------------------------------------------------------------------- the shared loop, the registry, the CLI
def _toy(tmp_path: Path, out: str, **settings):
    data = write_tiny_cases(tmp_path / "cases.jsonl")
    return create_trainer("toy", {"data": [str(data)], "out": str(tmp_path / out), **settings})


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    whole = _toy(tmp_path, "whole", steps=5).train(progress=False)
    first = _toy(tmp_path, "parts", steps=3).train(progress=False)  # checkpoints at 2 and 3
    ckpt = torch.load(tmp_path / "parts" / ".checkpoints" / "steer.pt", weights_only=False)
    assert ckpt["step"] == 3 and len(ckpt["losses"]) == 3
    resumed = _toy(tmp_path, "parts", steps=5).train(progress=False)
    assert first["parts"]["steer"]["steps"] == 3 and resumed["parts"]["steer"]["steps"] == 5
    assert resumed["parts"]["steer"]["loss_first"] == whole["parts"]["steer"]["loss_first"]
    assert resumed["parts"]["steer"]["loss_last20_mean"] == whole["parts"]["steer"]["loss_last20_mean"]
    vectors = [load_file(str(tmp_path / f / "steer" / "weights.safetensors"))["vector"] for f in ("whole", "parts")]
    assert torch.equal(vectors[0], vectors[1])
    verify(tmp_path / "parts", ["steer"], base_model="tiny-llama-s0")
    with pytest.raises(ValidationError, match=r"steer\.pt was written with other settings or data"):
        _toy(tmp_path, "parts", steps=6, lr=0.5).train(progress=False)


def test_the_toy_is_seeded_and_its_seed_matters(tmp_path):
    runs = [_toy(tmp_path, f"s{i}", seed=seed).train(progress=False) for i, seed in enumerate((0, 0, 1))]
    losses = [r["parts"]["steer"]["loss_last20_mean"] for r in runs]
    assert losses[0] == losses[1] != losses[2]


def test_every_registered_trainer_takes_a_typed_config(tmp_path):
    assert {"serac", "toy"} <= set(available_trainers())
    with pytest.raises(ConfigError, match="Did you mean 'steps'"):
        create_trainer("toy", {"step": 3})
    with pytest.raises(ConfigError, match="expected int"):
        create_trainer("toy", {"steps": "many"})
    with pytest.raises(UnknownNameError, match=r"unknown trainer 'sera'\. Did you mean 'serac'"):
        create_trainer("sera", {})
    assert create_trainer("serac", {"scope_steps": "7"}).config.scope_steps == 7  # command-line strings coerced


def test_cli_train_help_lists_the_registered_trainers(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "NAME" in out and "--config" in out
    trainers = out.split("trainers:")[1]
    assert "  serac " in trainers and "  toy " in trainers


def test_cli_train_refuses_an_unknown_trainer_in_one_line(capsys):
    assert main(["train", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown trainer 'nope'" in err and "serac" in err
    assert main(["train", "toi"]) == 2
    assert "Did you mean 'toy'?" in capsys.readouterr().err


def test_cli_train_trains_any_registered_trainer(tmp_path, capsys):
    data = write_tiny_cases(tmp_path / "cases.jsonl")
    config = tmp_path / "toy.yaml"
    config.write_text(f"data: [{data}]\nsteps: 2\n")
    assert main(["train", "toy", "--config", str(config), "--set", "seed=1", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "steer: 2 steps" in out and str(tmp_path / "out") in out
    assert read_manifest(tmp_path / "out")["config"]["seed"] == 1


# --------------------------------------------------------------------------- SERAC
def _cases(tmp_path):
    from editkit.data import load_cases

    return load_cases(write_tiny_cases(tmp_path / "cases.jsonl")).cases


def test_scope_examples_take_in_scope_probes_as_positives_and_out_of_scope_as_negatives(tmp_path):
    cases = _cases(tmp_path)
    examples = scope_examples(cases)
    assert len(examples) == len(cases)
    first = examples[0]
    assert first.descriptor == descriptor_of(cases[0].request) == "The Eiffel Tower is located in the city of Rome"
    assert first.positives == ("The Eiffel Tower is located in the city of", "The Eiffel Tower stands in the city of")
    assert first.negatives == ("Michael Jordan plays the sport of",)


def test_hard_negatives_are_the_nearest_inputs_of_other_cases(tmp_path):
    examples = scope_examples(_cases(tmp_path))
    encoder = SentenceEncoder.load("tiny-bert")
    mined = mine_hard_negatives(examples, encoder, 2, progress=False)
    texts = [t for e in examples for t in e.positives]
    inputs, descs = encoder.embed(texts), encoder.embed([e.descriptor for e in examples])
    for i, e in enumerate(mined):
        assert len(e.hard) == 2 and not set(e.hard) & set(e.positives)
        others = [j for j, t in enumerate(texts) if t not in examples[i].positives]
        best = max(others, key=lambda j: float(descs[i] @ inputs[j]))
        assert e.hard[0] == texts[best]


def test_counterfactual_examples_put_the_edit_before_the_input(tmp_path):
    cases = _cases(tmp_path)
    ex = counterfactual_examples(cases, "{edit}\n{input}")
    assert len(ex) == 2 * len(cases)
    assert ex[1].prompt == "The Eiffel Tower is located in the city of Rome\nThe Eiffel Tower stands in the city of"
    assert ex[1].target == " Rome"


def test_balanced_bce_weighs_both_classes_equally():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0])
    pos = -torch.log(torch.sigmoid(logits[0]))
    neg = -torch.log(1 - torch.sigmoid(logits[1:])).mean()
    assert float(_balanced_bce(logits, labels)) == pytest.approx(float(0.5 * (pos + neg)), rel=1e-6)
    # A weight on the hard negative (index 2) moves that share of the negative term onto it alone.
    hard = torch.tensor([False, False, True, False])
    hard_term = -torch.log(1 - torch.sigmoid(logits[2]))
    want = 0.5 * (pos + 0.75 * neg + 0.25 * hard_term)
    assert float(_balanced_bce(logits, labels, hard, 0.25)) == pytest.approx(float(want), rel=1e-6)
    assert float(_balanced_bce(logits, labels, hard, 0.0)) == pytest.approx(float(0.5 * (pos + neg)), rel=1e-6)


def test_training_writes_parts_and_manifest_and_resumes(tmp_path):
    data = write_tiny_cases(tmp_path / "cases.jsonl")
    settings = {**TINY_TRAINING, "data": [str(data)], "out": str(tmp_path / "parts"), "parts": ["scope-embed"]}
    first = train(SERACTrainConfig.from_dict({**settings, "scope_steps": 2}), progress=False)
    assert first["parts"]["scope-embed"]["steps"] == 2
    ckpt = torch.load(tmp_path / "parts" / ".checkpoints" / "scope-embed.pt", weights_only=False)
    longer = train(SERACTrainConfig.from_dict({**settings, "scope_steps": 4}), progress=False)
    part = longer["parts"]["scope-embed"]
    assert part["steps"] == 4 and part["loss_first"] == pytest.approx(ckpt["losses"][0])  # continued, not restarted
    manifest = json.loads((tmp_path / "parts" / "manifest.json").read_text())
    assert manifest["data"][0]["sha256"] and manifest["config"]["scope_steps"] == 4
    assert verify(tmp_path / "parts", ["scope-embed"]) == manifest  # each file's hash recorded
    assert (tmp_path / "parts" / "scope-embed" / "adapter" / "adapter_model.safetensors").is_file()
    adapter = json.loads((tmp_path / "parts" / "scope-embed" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "tiny-bert"  # a zoo name: no machine path in shipped parts
    with pytest.raises(ValidationError, match="other settings"):
        train(SERACTrainConfig.from_dict({**settings, "scope_lr": 0.5, "scope_steps": 6}), progress=False)
    # Another part trained later into the same folder: each part keeps the settings it was trained with.
    later = train(SERACTrainConfig.from_dict({**settings, "parts": ["scope-cross"], "scope_steps": 3}), progress=False)
    assert later["config"]["parts"] == ["scope-cross"]
    assert later["parts"]["scope-embed"]["config"]["scope_steps"] == 4
    assert later["parts"]["scope-cross"]["config"]["scope_steps"] == 3 and later["parts"]["scope-cross"]["steps"] == 3


def test_saving_the_parts_asks_nothing_of_the_hub(tmp_path, monkeypatch):
    import peft.utils.save_and_load as peft_save

    lookups: list[str] = []
    monkeypatch.setattr(peft_save, "check_file_exists_on_hf_hub", lambda repo, *a, **k: lookups.append(repo))
    data = write_tiny_cases(tmp_path / "cases.jsonl")
    settings = {**TINY_TRAINING, "scope_steps": 1, "cf_steps": 1, "data": [str(data)], "out": str(tmp_path / "p")}
    train(SERACTrainConfig.from_dict({**settings, "parts": ["scope-embed", "counterfactual"]}), progress=False)
    assert (tmp_path / "p" / "counterfactual" / "adapter" / "adapter_model.safetensors").is_file()
    assert lookups == []


def test_an_interrupted_run_keeps_the_parts_it_finished(tmp_path, monkeypatch):
    import editkit.training.serac as serac_training

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(serac_training, "train_counterfactual", killed)
    data = write_tiny_cases(tmp_path / "cases.jsonl")
    settings = {**TINY_TRAINING, "data": [str(data)], "out": str(tmp_path / "parts"), "scope_steps": 2}
    with pytest.raises(KeyboardInterrupt):
        train(SERACTrainConfig.from_dict({**settings, "parts": ["scope-embed", "counterfactual"]}), progress=False)
    manifest = json.loads((tmp_path / "parts" / "manifest.json").read_text())
    assert list(manifest["parts"]) == ["scope-embed"] and manifest["parts"]["scope-embed"]["steps"] == 2


def test_mined_hard_negatives_are_reused_by_a_rerun(tmp_path, monkeypatch):
    import editkit.training.serac as serac_training

    data = write_tiny_cases(tmp_path / "cases.jsonl")
    settings = {**TINY_TRAINING, "data": [str(data)], "out": str(tmp_path / "parts"), "parts": ["scope-embed"]}
    first = train(SERACTrainConfig.from_dict({**settings, "scope_steps": 1}), progress=False)

    def no_mining(*args, **kwargs):
        raise AssertionError("mined again")

    monkeypatch.setattr(serac_training, "mine_hard_negatives", no_mining)
    again = train(SERACTrainConfig.from_dict({**settings, "scope_steps": 2}), progress=False)
    assert again["parts"]["scope-embed"]["steps"] == 2 and first["parts"]["scope-embed"]["steps"] == 1
    with pytest.raises(AssertionError, match="mined again"):  # other settings: mined afresh
        train(SERACTrainConfig.from_dict({**settings, "hard_negatives": 1}), progress=False)


def test_training_is_seeded(tmp_path):
    data = write_tiny_cases(tmp_path / "cases.jsonl")
    runs = []
    for name in ("a", "b"):
        cfg = {**TINY_TRAINING, "data": [str(data)], "out": str(tmp_path / name), "parts": ["scope-cross"]}
        runs.append(train(SERACTrainConfig.from_dict(cfg), progress=False)["parts"]["scope-cross"]["loss_last20_mean"])
    assert runs[0] == runs[1]


def test_bad_training_settings():
    with pytest.raises(ConfigError, match="unknown SERAC parts"):
        SERACTrainConfig.from_dict({"parts": ["scope-embed", "mend"]})
    with pytest.raises(ConfigError, match="no training data"):
        train(SERACTrainConfig.from_dict({"out": "x"}), progress=False)
    with pytest.raises(ConfigError, match="Did you mean 'scope_steps'"):
        SERACTrainConfig.from_dict({"scope_step": 3})


def test_trained_serac_routes_and_answers_with_its_counterfactual_model(serac_parts):
    lm = tiny_model("llama")
    editor = create_editor("serac", {"artifacts": str(serac_parts), "encoder": "tiny-bert", "threshold": 0.0})
    routed = editor.apply(lm, [EditRequest(prompt="The capital of Germany is", target_new=" Bonn")]).model
    route = routed.route(["Germany's capital city is"])[0]
    assert route.record is not None
    h = routed.answerer.lm  # the counterfactual model: tiny llama with the trained adapter merged in
    trained = {n: p for n, p in h.model.named_parameters()}
    changed = [n for n, p in lm.model.named_parameters() if not torch.equal(p, trained[n])]
    assert changed and all("proj" in n for n in changed)  # LoRA touched only attention projections
    prompt = f"{route.record.descriptor}\nGermany's capital city is"
    want = h.score_tokens([prompt], [" Bonn"])[0].logprobs
    assert torch.allclose(routed.score_tokens(["Germany's capital city is"], [" Bonn"])[0].logprobs, want)


def test_cross_scope_scores_the_embedding_candidates_with_the_trained_cross_encoder(serac_parts):
    from editkit.editors.scope import CrossScope

    lm = tiny_model("llama")
    settings = {"artifacts": str(serac_parts), "encoder": "tiny-bert", "threshold": 0.0, "candidates": 2}
    editor = create_editor("serac", {**settings, "scope": "cross"})
    requests = [
        EditRequest(prompt="The capital of Germany is", target_new=" Bonn"),
        EditRequest(prompt="The Eiffel Tower is located in", target_new=" Rome"),
        EditRequest(prompt="Michael Jordan plays", target_new=" tennis"),
    ]
    routed = editor.apply(lm, requests).model
    scope = routed.memory.scope
    assert isinstance(scope, CrossScope)
    text = "Germany's capital city is"
    route = routed.route([text])[0]
    # independently: the embedding index's two nearest edits, each scored by sigmoid(cross logit)
    query = torch.tensor(scope.retrieval.query_vectors([text]))[0]
    keys = torch.tensor(scope.retrieval.edit_vectors(requests))
    nearest = ((keys - query) ** 2).sum(-1).argsort()[:2].tolist()
    with torch.no_grad():
        logits = scope.classifier.logits([descriptor_of(requests[i]) for i in nearest], [text] * 2)
    probs = torch.sigmoid(logits)
    best = int(probs.argmax())
    assert route.record is not None and route.record.request == requests[nearest[best]]
    assert route.score == pytest.approx(float(probs[best]), abs=1e-5)
    # with a floor, only candidates the embedding classifier gives at least that probability are read
    embed = scope.retrieval.probabilities(((keys[nearest] - query) ** 2).sum(-1).numpy())
    floor = float(embed.max()) + 1e-3
    floored = create_editor("serac", {**settings, "scope": "cross", "cross_floor": floor}).apply(lm, requests).model
    assert floored.memory.lookup([text])[0].score == 0.0
    below = float(embed.min()) - 1e-3
    kept = create_editor("serac", {**settings, "scope": "cross", "cross_floor": below}).apply(lm, requests).model
    assert kept.memory.lookup([text])[0].score == pytest.approx(route.score, abs=1e-5)


def test_trained_serac_serves_a_base_model_of_another_family_without_retraining(serac_parts):
    """SERAC reused on a base model with another tokenizer (Gemma in place of SmolLM2): routing and answers are
    unchanged; only ids and distributions pass through a token bridge."""
    other = LanguageModel(tiny_model("llama", seed=1).model, tiny_tokenizer(vocab=300), name="tiny-other")
    editor = create_editor("serac", {"artifacts": str(serac_parts), "encoder": "tiny-bert", "threshold": 0.0})
    bonn = EditRequest(prompt="The capital of Germany is", target_new=" Bonn")
    routed = editor.apply(other, [bonn]).model
    h = routed.answerer.lm
    assert routed.answerer.bridge is not None and h.tokenizer.get_vocab() != other.tokenizer.get_vocab()
    prompt = f"{descriptor_of(bonn)}\nGermany's capital is"
    want = h.score_tokens([prompt], [" Bonn"])[0].logprobs
    got = routed.score_tokens(["Germany's capital is"], [" Bonn"])[0].logprobs
    assert torch.allclose(got, want)
    (ids,) = routed.generate_ids(["Germany's capital is"], 3)
    assert other.tokenizer.decode(ids) == h.tokenizer.decode(h.generate_ids([prompt], 3)[0])


# --------------------------------------------------------------------------- same-subject negatives
TEMPLATES = [
    {"template": "{} is located in", "relation_id": "P131"},
    {"template": "{} is in the city of", "relation_id": "P131"},
    {"template": "{} was founded by", "relation_id": "P112"},
    {"template": "{} is owned by", "relation_id": "P127"},
    {"template": "{} belongs to", "relation_id": "P127"},
    {"template": "{} belongs to", "relation_id": "P361"},  # two relations: left out
    {"template": "no slot", "relation_id": "P1"},  # no subject slot: left out
]


def _subject_cases(path: Path) -> Path:
    rows = []
    for i, (subject, target) in enumerate([("The Louvre", " Rome"), ("Big Ben", " Oslo"), ("Notre-Dame", " Lima")]):
        text = f"{subject} is located in"
        rows.append(
            {
                "request": {"prompt": "{} is located in", "subject": subject, "target_new": target, "case_id": str(i)},
                "probes": [
                    {"prompt": text, "expected": target, "kind": "edit"},
                    {"prompt": f"Where is {subject}? In", "expected": target, "kind": "rephrase"},
                ],
            }
        )
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_relation_templates_keep_templates_of_one_relation(tmp_path):
    from editkit.training.serac_data import relation_templates

    (tmp_path / "t.json").write_text(json.dumps(TEMPLATES))
    assert relation_templates(tmp_path / "t.json") == {
        "{} is located in": "P131",
        "{} is in the city of": "P131",
        "{} was founded by": "P112",
        "{} is owned by": "P127",
    }
    (tmp_path / "bad.json").write_text(json.dumps([{"template": "{} x"}]))
    with pytest.raises(ValidationError, match="relation_id"):
        relation_templates(tmp_path / "bad.json")


def test_same_subject_prompts_ask_other_relations_of_the_subject():
    import random

    from editkit.training.serac_data import same_subject_prompts

    templates = {"{} is located in": "P131", "{} is in the city of": "P131", "{} was founded by": "P112"}
    request = EditRequest(prompt="{} is located in", subject="The Louvre", target_new=" Rome")
    assert same_subject_prompts(request, templates, 5, random.Random(0)) == ("The Louvre was founded by",)
    unknown = EditRequest(prompt="{} sells", subject="The Louvre", target_new=" art")
    assert same_subject_prompts(unknown, templates, 5, random.Random(0)) == ()
    no_subject = EditRequest(prompt="The Louvre is located in", target_new=" Rome")
    assert same_subject_prompts(no_subject, templates, 5, random.Random(0)) == ()
    # A question whose relation is unknown: with any_relation, the templates sharing no word stem with it.
    question = EditRequest(prompt="Where is {} located?", subject="The Louvre", target_new=" Rome")
    assert same_subject_prompts(question, templates, 5, random.Random(0)) == ()
    made = same_subject_prompts(question, templates, 5, random.Random(0), any_relation=True)
    assert sorted(made) == ["The Louvre is in the city of", "The Louvre was founded by"]


def test_training_with_same_subject_negatives_samples_them(tmp_path):
    data = _subject_cases(tmp_path / "cases.jsonl")
    (tmp_path / "t.json").write_text(json.dumps(TEMPLATES))
    base = {**TINY_TRAINING, "data": [str(data)], "parts": ["scope-embed"], "scope_batch": 3, "hard_negatives": 1}
    runs = {}
    for share in (0.0, 1.0):
        cfg = {**base, "out": str(tmp_path / f"s{share}"), "relation_templates": str(tmp_path / "t.json")}
        runs[share] = train(SERACTrainConfig.from_dict({**cfg, "same_subject_share": share}), progress=False)
    recorded = runs[1.0]["relation_templates"]
    assert recorded["templates"] == 4 and len(recorded["sha256"]) == 64
    assert runs[1.0]["same_subject_negatives"] == {"edits": 3}
    losses = [r["parts"]["scope-embed"]["loss_first"] for r in runs.values()]
    assert losses[0] != losses[1]  # the negatives sampled differ
    with pytest.raises(ConfigError, match="same_subject_share"):
        SERACTrainConfig.from_dict({"same_subject_share": 1.5})


def _louvre_case(tmp_path):
    from editkit.data import load_cases

    row = {
        "request": {"prompt": "{} is located in", "subject": "The Louvre", "target_new": " Rome"},
        "probes": [
            {"prompt": "The Louvre is located in", "expected": " Rome", "kind": "edit"},
            {"prompt": "The founder of the Louvre was", "expected": " Philip II", "kind": "neighborhood"},
            {"prompt": "Big Ben is located in", "expected": " London", "kind": "neighborhood"},
        ],
    }
    (tmp_path / "c.jsonl").write_text(json.dumps(row))
    return load_cases(tmp_path / "c.jsonl").cases


def test_own_out_of_scope_inputs_naming_the_subject_are_same_subject_negatives(tmp_path):
    from editkit.training.serac_data import with_same_subject

    cases = _louvre_case(tmp_path)
    [example] = with_same_subject(scope_examples(cases), cases, {}, 4, 0)
    assert example.same_subject == ("The founder of the Louvre was",)


def test_holdout_leaves_out_training_cases_sharing_a_subject_or_prompt(tmp_path):
    from editkit.data import load_cases
    from editkit.training.serac_data import held_out

    data = _subject_cases(tmp_path / "cases.jsonl")  # The Louvre, Big Ben, Notre-Dame
    evaluated = {"request": {"prompt": "Who built {}?", "subject": "big ben", "target_new": " x"}, "probes": []}
    (tmp_path / "eval.jsonl").write_text(json.dumps(evaluated))
    cases = load_cases(data).cases
    kept, records = held_out(cases, [str(tmp_path / "eval.jsonl")], None)
    assert [c.request.subject for c in kept] == ["The Louvre", "Notre-Dame"]
    assert records[0]["left_out"] == 1 and records[0]["cases"] == 1
    kept, _ = held_out(cases, [str(data)], 1)  # a file's first case held out of its own training
    assert [c.request.subject for c in kept] == ["Big Ben", "Notre-Dame"]


def test_keep_inputs_are_the_out_of_scope_inputs_after_their_edit(tmp_path):
    from editkit.training.serac_data import KeepInput, draw_keep, keep_inputs

    cases = _louvre_case(tmp_path)
    templates = {"{} is located in": "P131", "{} was founded by": "P112", "{} is owned by": "P127"}
    inputs = keep_inputs(cases, templates, 1, seed=0)
    desc = "The Louvre is located in Rome"
    assert inputs[:2] == [
        KeepInput(desc, "The founder of the Louvre was", " Philip II", True),
        KeepInput(desc, "Big Ben is located in", " London", False),
    ]
    [made] = inputs[2:]  # one template of another relation, no expected answer
    assert made.same_subject and made.expected is None
    assert made.input in ("The Louvre was founded by", "The Louvre is owned by")
    # The share of same-subject ones is kept where there are enough; a short side is filled from the other.
    assert sum(x.same_subject for x in draw_keep(inputs, 2, 0.5, 0)) == 1
    assert sum(x.same_subject for x in draw_keep(inputs, 2, 0.0, 0)) == 1  # one other input only
    assert sorted(draw_keep(inputs, 9, 0.5, 0), key=str) == sorted(inputs, key=str)
    # The data's own same-subject probe comes before the template-made one, whatever the seed.
    for seed in range(8):
        drawn = draw_keep(inputs, 2, 0.5, seed, data_first=True)
        assert [x for x in drawn if x.same_subject] == [inputs[0]]


def test_base_answers_are_the_base_models_greedy_tokens(tmp_path):
    from editkit.training.serac_data import KeepInput, base_answers

    lm = tiny_model("llama", seed=0)
    inputs = [
        KeepInput("e", "The founder of the Louvre was", " Philip II", True),
        KeepInput("e", "Big Ben", None, True),
    ]
    answers = base_answers(lm, inputs, 3, progress=False)
    n_expected = len(lm.encode(" Philip II", special=False))
    want = [lm.generate_ids([x.input], n)[0][:n] for x, n in zip(inputs, (n_expected, 3), strict=True)]
    assert [len(a) for a in answers] == [n_expected, 3] and answers == want


def test_keep_examples_take_their_share_of_each_counterfactual_batch():
    import random

    from editkit.training.serac import nll_batches
    from editkit.training.serac_data import CounterfactualExample

    seen: list[list[str | list[int]]] = []

    class Recorder:
        def teacher_forced(self, prompts, targets):
            seen.append(list(targets))
            raise StopIteration

    examples = [CounterfactualExample(f"p{i}", " x") for i in range(10)]
    keep = [CounterfactualExample(f"k{i}", [5, 6]) for i in range(10)]
    for share, n_keep in ((0.0, 0), (0.5, 2), (0.75, 3)):
        with pytest.raises(StopIteration):
            nll_batches(examples, 4, keep, share)(Recorder(), random.Random(0))  # type: ignore[arg-type]
        assert len(seen[-1]) == 4 and sum(t == [5, 6] for t in seen[-1]) == n_keep
    assert SERACTrainConfig.from_dict({"cf_keep_share": 0.5}).cf_keep_share == 0.5
    with pytest.raises(ConfigError, match="cf_keep_share"):
        SERACTrainConfig.from_dict({"cf_keep_share": 1.0})
    with pytest.raises(ConfigError, match="needs cf_loss: nll"):
        SERACTrainConfig.from_dict({"cf_keep_share": 0.5, "cf_loss": "unlikelihood"})


def test_training_with_keep_examples_caches_the_base_answers(tmp_path):
    data = _subject_cases(tmp_path / "cases.jsonl")
    (tmp_path / "t.json").write_text(json.dumps(TEMPLATES))
    settings = {
        **TINY_TRAINING,
        "data": [str(data)],
        "out": str(tmp_path / "parts"),
        "parts": ["counterfactual"],
        "relation_templates": str(tmp_path / "t.json"),
        "cf_keep_share": 0.5,
        "cf_keep_examples": 4,
    }
    first = train(SERACTrainConfig.from_dict({**settings, "cf_steps": 2}), progress=False)
    cached = json.loads((tmp_path / "parts" / ".checkpoints" / "keep_answers.json").read_text())
    assert len(cached["answers"]) == 4 and all(isinstance(t, int) for a in cached["answers"] for t in a)
    plain = train(
        SERACTrainConfig.from_dict({**settings, "out": str(tmp_path / "plain"), "cf_keep_share": 0.0, "cf_steps": 2}),
        progress=False,
    )
    assert first["parts"]["counterfactual"]["loss_first"] != plain["parts"]["counterfactual"]["loss_first"]
    longer = train(SERACTrainConfig.from_dict({**settings, "cf_steps": 3}), progress=False)  # resumes, reuses them
    assert longer["parts"]["counterfactual"]["steps"] == 3


def test_statement_share_says_that_share_of_the_training_edits_as_statements(tmp_path):
    data = _subject_cases(tmp_path / "cases.jsonl")
    settings = {**TINY_TRAINING, "data": [str(data)], "out": str(tmp_path / "p"), "parts": ["scope-embed"]}
    settings |= {"scope_batch": 3, "hard_negatives": 1, "scope_steps": 1}
    pairs = train(SERACTrainConfig.from_dict(settings), progress=False)
    mined = json.loads((tmp_path / "p" / ".checkpoints" / "hard_negatives.json").read_text())
    with pytest.raises(ValidationError, match="other settings"):  # a part trained on pairs is not continued
        train(SERACTrainConfig.from_dict({**settings, "statement_share": 1.0}), progress=False)
    (tmp_path / "p" / ".checkpoints" / "scope-embed.pt").unlink()
    said = train(SERACTrainConfig.from_dict({**settings, "statement_share": 1.0}), progress=False)
    remined = json.loads((tmp_path / "p" / ".checkpoints" / "hard_negatives.json").read_text())
    assert "statements" not in pairs and said["statements"] == {"cases": 3, "of": 3}
    assert mined["key"] != remined["key"]  # the mined examples of the pairs are not reused for statements
    assert remined["examples"][0][0] == "The Louvre is located in Rome."
    with pytest.raises(ConfigError, match="statement_share"):
        SERACTrainConfig.from_dict({"statement_share": 1.5})
