import logging
import warnings

import pytest
import torch
from transformers.utils import logging as hf_logging

from editkit.editors import create_editor
from editkit.edits import EditRequest
from editkit.errors import ValidationError
from editkit.models.tiny import tiny_model

PROMPTS = ["The Eiffel Tower is located in", "Rome", "Michael Jordan plays the sport of basketball and"]
CONTS = [" Paris", " is the capital of Italy", " soccer"]


def test_batched_scoring_equals_one_at_a_time(any_arch):
    lm = any_arch
    batched = lm.score(PROMPTS, CONTS, batch_size=8)
    for p, c, b in zip(PROMPTS, CONTS, batched, strict=True):
        single = lm.score([p], [c])[0]
        assert single.shape == b.shape == (len(lm.encode(c, special=False)),)
        torch.testing.assert_close(b, single, atol=1e-5, rtol=1e-5)


def test_score_matches_an_independent_forward(llama):
    lm = llama
    p, c = PROMPTS[0], CONTS[0]
    ids = lm.encode(p) + lm.encode(c, special=False)
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0].float(), -1)
    n = len(lm.encode(p))
    expected = torch.stack([logp[n - 1 + j, t] for j, t in enumerate(ids[n:])])
    torch.testing.assert_close(lm.score([p], [c])[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_continuations_sharing_a_prompt_score_as_independent_forwards(any_arch, batch_size):
    """A prompt read once for all its continuations (decoder-only models) gives each continuation the
    log-probabilities, greedy hits and first distribution of its own plain forward; the results come back in the
    order asked, whatever the batches (a prompt with more continuations than ``batch_size`` included)."""
    lm = any_arch
    prompts = [PROMPTS[0], PROMPTS[2], PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[0], PROMPTS[2]]
    conts: list[str | list[int]] = [" Paris", " soccer", " Rome and then", " is", [5, 6], " a", " tennis"]
    scored = lm.score_tokens(prompts, conts, batch_size=batch_size, first_distribution=True)
    for p, c, s in zip(prompts, conts, scored, strict=True):
        c_ids = c if isinstance(c, list) else lm.encode(c, special=False)
        tf = lm.teacher_forced([p], [c_ids])
        with torch.no_grad():
            logits = lm.model(**tf.inputs).logits[0].float()
        at = tf.positions()[0][0]
        logp = torch.log_softmax(logits[at], -1)
        want = logp.gather(1, torch.tensor(c_ids)[:, None]).squeeze(1)
        torch.testing.assert_close(s.logprobs, want, atol=1e-4, rtol=1e-4)
        assert s.greedy.tolist() == (logp.argmax(-1) == torch.tensor(c_ids)).tolist()
        assert s.first_distribution is not None
        torch.testing.assert_close(s.first_distribution, logp[0], atol=1e-4, rtol=1e-4)


def test_next_token_distribution_agrees_with_scoring(any_arch):
    lm = any_arch
    dist = lm.next_token_logprobs(PROMPTS)
    for i, p in enumerate(PROMPTS):
        first = lm.encode(CONTS[i], special=False)[0]
        assert dist[i].exp().sum().item() == pytest.approx(1.0, abs=1e-4)
        assert dist[i, first].item() == pytest.approx(lm.score([p], [CONTS[i]])[0][0].item(), abs=1e-4)


def test_next_token_distribution_matches_an_independent_forward(llama):
    """Batched prompts of different lengths (padded), head at the last token only: equal to a plain forward of
    each prompt alone."""
    dist = llama.next_token_logprobs(PROMPTS)
    for i, p in enumerate(PROMPTS):
        with torch.no_grad():
            logits = llama.model(torch.tensor([llama.encode(p)])).logits[0, -1]
        torch.testing.assert_close(dist[i], torch.log_softmax(logits.float(), -1), atol=1e-5, rtol=1e-5)


def test_greedy_generation_batched_equals_single(any_arch):
    lm = any_arch
    batched = lm.generate(PROMPTS, 6)
    assert batched == [lm.generate([p], 6)[0] for p in PROMPTS]


def test_sampling_is_reproducible_with_a_seed_and_needs_one(llama):
    a = llama.generate(["The"] * 3, 5, sample=True, top_k=5, generator=torch.Generator().manual_seed(1))
    b = llama.generate(["The"] * 3, 5, sample=True, top_k=5, generator=torch.Generator().manual_seed(1))
    assert a == b
    with pytest.raises(ValueError, match="Generator"):
        llama.generate(["The"], 2, sample=True)


def test_too_long_prompt_is_rejected(llama):
    with pytest.raises(ValidationError, match="longer than"):
        llama.check_fits("word " * (llama.max_length + 10))


def test_device_and_dtype_come_from_the_model(llama):
    assert llama.device == torch.device("cpu")
    assert llama.dtype == torch.float32


def test_cached_forwards_use_the_installed_transformers_cache_name(llama):
    """The KV-cached paths (few-shot prefix, generation, ROME's subject prefix) pass the cache under the name the
    installed transformers expects: the old name still works in transformers 5 but warns on every run."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    root = hf_logging.get_logger("transformers")
    root.addHandler(handler)
    hf_logging.warning_once.cache_clear()  # type: ignore[attr-defined]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            llama.label_logprobs_after_prefix("Review : fine\nSentiment :", [" good", " bad film"], [5, 6])
            llama.generate(PROMPTS, 3)
            req = EditRequest(prompt="The city of {} is", subject="the Eiffel Tower", target_new=" Rome")
            create_editor("rome", {"v_steps": 2, "n_context": 2, "context_length": 3}).apply(llama, [req])
    finally:
        root.removeHandler(handler)
    assert not [r.getMessage() for r in records if "deprecated" in r.getMessage()]


def test_fingerprints_ignore_the_folder_the_model_was_loaded_from():
    from editkit.editors.stats import key_fingerprint

    here, there = tiny_model("llama"), tiny_model("llama")
    here.config._name_or_path = "/root/.cache/editkit/models/tiny"
    there.config._name_or_path = "/tmp/elsewhere/models/tiny"  # the same model in another cache
    assert here.fingerprint() == there.fingerprint()
    assert key_fingerprint(here, 1) == key_fingerprint(there, 1)
    other = tiny_model("llama")
    other.config.rms_norm_eps = 0.5  # a setting that changes what the model computes
    assert other.fingerprint() != here.fingerprint() and key_fingerprint(other, 1) != key_fingerprint(here, 1)
