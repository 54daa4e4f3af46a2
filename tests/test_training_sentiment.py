"""SERAC's counterfactual model trained for sentiment edits (editkit.training.sentiment, cf_loss: unlikelihood):
the examples made from ConvSent records, the unlikelihood term against a direct computation, and a tiny run."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAINING
from editkit.data import load_cases
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import ConfigError, ValidationError
from editkit.models.tiny import tiny_model
from editkit.training.registry import create_trainer
from editkit.training.sentiment import ContrastExample, contrast_examples, contrast_loss, flipped, unlikelihood
from editkit.training.serac import SERACTrainConfig

TOPICS = ("jazz", "bananas", "ghost hunting")


def write_convsent(path: Path) -> Path:
    records = [
        {"ent": t, "pos": [f" I love {t}. ", " It is great. "], "neg": [f" I hate {t}. ", " It is awful. "]}
        for t in TOPICS
    ]
    path.write_text(json.dumps(records))
    return path


def test_flipped_swaps_a_convsent_sentiment_and_nothing_else():
    assert flipped("TOPIC: jazz SENTIMENT: positive") == "TOPIC: jazz SENTIMENT: negative"
    assert flipped("TOPIC: a: b SENTIMENT: negative") == "TOPIC: a: b SENTIMENT: positive"
    assert flipped("Boris Johnson is the UK PM.") is None
    assert flipped("TOPIC: jazz SENTIMENT: neutral") is None


def test_contrast_examples_train_each_topic_under_both_sentiments(tmp_path):
    cases = load_cases(write_convsent(tmp_path / "cs.json")).cases
    examples = contrast_examples(cases, "{edit}\n{input}")
    assert len(examples) == len(TOPICS) * 5 * 2  # five questions, two sentiments
    first, its_flip = examples[0], examples[1]
    assert first.prompt == "TOPIC: jazz SENTIMENT: positive\nWhat is your opinion of jazz?"
    assert first.wanted == (" I love jazz.", " It is great.") and first.unwanted == (" I hate jazz.", " It is awful.")
    assert its_flip.prompt == "TOPIC: jazz SENTIMENT: negative\nWhat is your opinion of jazz?"
    assert (its_flip.wanted, its_flip.unwanted) == (first.unwanted, first.wanted)
    # the second record asks for a negative sentiment (convsent.py alternates): its wanted responses are negative
    bananas = [e for e in examples if e.prompt.startswith("TOPIC: bananas SENTIMENT: negative")]
    assert bananas and all(w.startswith(" I hate") or "awful" in w for e in bananas for w in e.wanted)


def test_contrast_examples_keep_a_statement_that_is_not_convsent_unflipped():
    case = EditCase(
        EditRequest.statement("Boris Johnson is the UK PM."),
        (Probe("Who is the UK PM?", " Boris Johnson", ProbeKind.REPHRASE, contrast=" Theresa May"),),
    )
    (only,) = contrast_examples([case], "{edit}\n{input}")
    assert only == ContrastExample(
        "Boris Johnson is the UK PM.\nWho is the UK PM?", (" Boris Johnson",), (" Theresa May",)
    )


def test_contrast_examples_need_contrasts():
    case = EditCase(
        EditRequest("Who is the UK PM?", " Boris Johnson"),
        (Probe("Who leads the UK?", " Boris Johnson", ProbeKind.REPHRASE),),
    )
    with pytest.raises(ValidationError, match="contrasts"):
        contrast_examples([case], "{edit}\n{input}")


def test_unlikelihood_is_minus_log_one_minus_p():
    lp = torch.tensor([-0.01, -0.7, -3.0, -20.0, 0.0])
    expected = [-math.log(1 - math.exp(v)) if v < 0 else -math.log(1 - math.exp(-1e-6)) for v in lp.tolist()]
    assert unlikelihood(lp).tolist() == pytest.approx(expected, rel=1e-5)
    assert torch.isfinite(unlikelihood(torch.tensor([0.0]))).all()


def _direct(lm, prompt: str, text: str) -> list[float]:
    """Each token of ``text`` after ``prompt``: its probability, from one plain forward pass over the ids."""
    p_ids, c_ids = lm.encode(prompt), lm.encode(text, special=False)
    with torch.no_grad():
        logits = lm.model(torch.tensor([p_ids + c_ids])).logits[0].double()
    probs = logits.softmax(-1)
    return [float(probs[len(p_ids) - 1 + j, t]) for j, t in enumerate(c_ids)]


def test_contrast_loss_is_nll_of_the_wanted_plus_unlikelihood_of_the_unwanted():
    lm = tiny_model("llama")
    batch = [
        ContrastExample("TOPIC: jazz SENTIMENT: positive\nWhat is your opinion of jazz?", (" I love it.",), (" No.",)),
        ContrastExample("TOPIC: tea SENTIMENT: negative\nThoughts on tea?", (" Awful stuff, really.",), (" Yes!",)),
    ]
    with torch.no_grad():
        got = float(contrast_loss(lm, batch, random.Random(0), responses=1, weight=0.5))
    good = [p for e in batch for p in _direct(lm, e.prompt, e.wanted[0])]
    bad = [p for e in batch for p in _direct(lm, e.prompt, e.unwanted[0])]
    nll = -sum(math.log(p) for p in good) / len(good)
    ul = -sum(math.log(1 - p) for p in bad) / len(bad)
    assert got == pytest.approx(nll + 0.5 * ul, rel=1e-4)
    with torch.no_grad():
        no_ul = float(contrast_loss(lm, batch, random.Random(0), responses=1, weight=0.0))
    assert no_ul == pytest.approx(nll, rel=1e-4)


def test_unlikelihood_settings_are_checked():
    with pytest.raises(ConfigError, match="cf_responses"):
        SERACTrainConfig.from_dict({"cf_responses": 0})
    with pytest.raises(ConfigError):
        SERACTrainConfig.from_dict({"cf_loss": "hinge"})


def _mean_logprob(lm, prompt: str, text: str) -> float:
    tf = lm.teacher_forced([prompt], [text])
    with torch.no_grad():
        lp = tf.token_logprobs(lm.logits_at(tf.inputs, tf.positions()[0]))
    return float(lp.sum() / tf.positions()[1].sum())


def test_optimising_the_loss_teaches_the_model_to_follow_the_statement():
    lm = tiny_model("llama")
    question, love, hate = "What is your opinion of jazz?", " I love jazz.", " I hate jazz."
    examples = [
        ContrastExample(f"TOPIC: jazz SENTIMENT: positive\n{question}", (love,), (hate,)),
        ContrastExample(f"TOPIC: jazz SENTIMENT: negative\n{question}", (hate,), (love,)),
    ]
    opt = torch.optim.Adam(lm.model.parameters(), lr=0.01)
    rng = random.Random(0)
    for _ in range(40):
        opt.zero_grad()
        contrast_loss(lm, examples, rng, responses=1, weight=1.0).backward()
        opt.step()
    for sentiment, wanted, unwanted in (("positive", love, hate), ("negative", hate, love)):
        prompt = f"TOPIC: jazz SENTIMENT: {sentiment}\n{question}"
        assert _mean_logprob(lm, prompt, wanted) > _mean_logprob(lm, prompt, unwanted) + 0.5


def test_the_serac_trainer_trains_the_counterfactual_model_with_unlikelihood(tmp_path, monkeypatch):
    import editkit.training.serac as serac_training

    calls: list[int] = []

    def recorded(lm, batch, rng, **kwargs):
        calls.append(len(batch))
        return contrast_loss(lm, batch, rng, **kwargs)

    monkeypatch.setattr(serac_training, "contrast_loss", recorded)
    data = write_convsent(tmp_path / "cs.json")
    settings = {"data": [str(data)], "out": str(tmp_path / "parts"), "parts": ["counterfactual"]}
    trainer = create_trainer("serac", {**TINY_TRAINING, **settings, "cf_loss": "unlikelihood", "cf_steps": 2})
    manifest = trainer.train(progress=False)
    assert calls == [4, 4] and manifest["parts"]["counterfactual"]["steps"] == 2
    assert manifest["config"]["cf_loss"] == "unlikelihood"
    assert (tmp_path / "parts" / "counterfactual" / "adapter" / "adapter_model.safetensors").is_file()
