"""Key statistics: equal to an independent computation, computed without the layers above, cached on
everything that affects them."""

import pytest
import torch

from editkit.editors import stats
from editkit.editors.stats import StatsRequest, key_fingerprint, second_moment, second_moments
from editkit.errors import ValidationError
from editkit.models.tiny import tiny_model

TEXT = (
    "The Eiffel Tower is located in the city of Paris. Michael Jordan plays the sport of basketball. "
    "The capital of Germany is Berlin. Microsoft was founded by Bill Gates. "
) * 20


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    stats._MEMO.clear()
    return path


def _independent(lm, layer, chunks):
    seen = []
    mod = lm.adapter.module(lm.model, layer, "mlp_out")
    h = mod.register_forward_pre_hook(lambda _m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    try:
        with torch.no_grad():
            lm.model(input_ids=torch.tensor(chunks))
    finally:
        h.remove()
    k = torch.cat(seen).double()
    return (k.T @ k / k.shape[0]).float()


def test_second_moment_matches_independent_computation(corpus):
    lm = tiny_model("llama")
    req = StatsRequest(layer=1, corpus=corpus, n_tokens=128, seq_len=16, batch_size=3)
    got = second_moment(lm, req)
    chunks = stats._corpus_chunks(lm, corpus, 128, 16)
    assert len(chunks) == 8
    torch.testing.assert_close(got, _independent(lm, 1, chunks), rtol=1e-5, atol=1e-7)


def _forward_calls(lm, fn):
    calls = []
    h = lm.adapter.layer_list(lm.model)[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        return fn(), len(calls)
    finally:
        h.remove()


def test_several_layers_in_one_pass_equal_each_computed_alone(corpus):
    lm = tiny_model("llama")
    reqs = [StatsRequest(layer=layer, corpus=corpus, n_tokens=128, seq_len=16, batch_size=3) for layer in (1, 0)]
    chunks = stats._corpus_chunks(lm, corpus, 128, 16)
    got, passes = _forward_calls(lm, lambda: second_moments(lm, reqs))
    assert passes == 3  # both layers from one pass over the 8 windows, in batches of 3
    for req, mom2 in zip(reqs, got, strict=True):
        torch.testing.assert_close(mom2, _independent(lm, req.layer, chunks), rtol=1e-5, atol=1e-7)
    # The top layer's cache file lost: that layer is computed again (a pass through layer 0 to layer 1), the
    # other read back. (Which file is which comes from the cache key, not from the order of the file names.)
    stats._MEMO.clear()
    assert len(list((stats.cache_dir() / "stats").glob("*.safetensors"))) == 2
    stats._cache_entry(lm, reqs[0])[1].unlink()
    kept = stats._cache_entry(lm, reqs[1])[1]
    written = kept.stat().st_mtime_ns
    again, passes = _forward_calls(lm, lambda: second_moments(lm, reqs))
    assert passes == 3 and kept.stat().st_mtime_ns == written  # layer 0 read back, not written again
    for a, b in zip(again, got, strict=True):
        torch.testing.assert_close(a, b)
    _, passes = _forward_calls(lm, lambda: second_moments(lm, reqs))
    assert passes == 0
    with pytest.raises(ValidationError, match="one corpus"):
        second_moments(lm, [reqs[0], StatsRequest(layer=0, corpus=corpus, n_tokens=64, seq_len=16)])


def test_layers_above_are_not_run(corpus):
    lm = tiny_model("llama")
    calls = []
    above = lm.adapter.layer_list(lm.model)[2]
    h = above.register_forward_hook(lambda *a: calls.append(1))
    try:
        second_moment(lm, StatsRequest(layer=1, corpus=corpus, n_tokens=64, seq_len=16))
    finally:
        h.remove()
    assert calls == []


def test_cache_is_reused_from_disk_and_keyed_on_what_matters(corpus, monkeypatch):
    lm = tiny_model("llama")
    req = StatsRequest(layer=1, corpus=corpus, n_tokens=64, seq_len=16)
    first = second_moment(lm, req)
    stats._MEMO.clear()
    monkeypatch.setattr(stats, "_compute", lambda *a, **k: pytest.fail("recomputed despite the disk cache"))
    assert torch.equal(second_moment(lm, req), first)
    monkeypatch.undo()
    # Editing the measured projection itself does not change its inputs: same statistics.
    fp = key_fingerprint(lm, 1)
    with torch.no_grad():
        lm.adapter.module(lm.model, 1, "mlp_out").weight.add_(1.0)
    assert key_fingerprint(lm, 1) == fp
    # Changing a layer below does, and so do the token count and the corpus.
    with torch.no_grad():
        lm.adapter.module(lm.model, 0, "mlp_out").weight.add_(0.1)
    assert key_fingerprint(lm, 1) != fp
    assert not torch.equal(second_moment(lm, req), first)
    other = StatsRequest(layer=1, corpus=corpus, n_tokens=32, seq_len=16)
    assert not torch.equal(second_moment(lm, other), second_moment(lm, req))


def test_corrupted_cache_file_is_recomputed(corpus):
    lm = tiny_model("llama")
    req = StatsRequest(layer=1, corpus=corpus, n_tokens=64, seq_len=16)
    first = second_moment(lm, req)
    (path,) = list((stats.cache_dir() / "stats").glob("*.safetensors"))
    path.write_bytes(b"garbage")
    stats._MEMO.clear()
    torch.testing.assert_close(second_moment(lm, req), first)


def _flip_tensor_bytes(path, value=None):
    """Overwrite 64 bytes in the middle of the stored statistics (or set some entries to ``value``), keeping the
    file a valid safetensors file with its metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta, mom2 = f.metadata(), f.get_tensor("mom2")
    if value is None:
        raw = mom2.view(torch.uint8).flatten()
        mid = raw.numel() // 2
        raw[mid : mid + 64] ^= 0xFF
    else:
        mom2[0, :3] = value
    save_file({"mom2": mom2}, str(path), metadata=meta)


@pytest.mark.parametrize("damage", ["flipped bytes", "nan", "inf", "no digest"])
def test_damaged_statistics_that_still_load_are_recomputed(corpus, damage):
    """A statistics file that parses but whose values differ from what was computed (64 flipped bytes, NaN or
    inf written in, or no recorded digest) is recomputed, never used."""
    lm = tiny_model("llama")
    req = StatsRequest(layer=1, corpus=corpus, n_tokens=64, seq_len=16)
    first = second_moment(lm, req).clone()
    (path,) = list((stats.cache_dir() / "stats").glob("*.safetensors"))
    if damage == "no digest":
        from safetensors.torch import load_file, save_file

        save_file({"mom2": load_file(str(path))["mom2"] * 2}, str(path), metadata={"count": "64"})
    else:
        _flip_tensor_bytes(path, {"flipped bytes": None, "nan": float("nan"), "inf": float("inf")}[damage])
    stats._MEMO.clear()
    again = second_moment(lm, req)
    assert torch.isfinite(again).all()
    torch.testing.assert_close(again, first)
    stats._MEMO.clear()
    torch.testing.assert_close(second_moment(lm, req), first)  # and the recomputed file is sound again


def test_non_finite_statistics_are_refused(corpus, monkeypatch):
    """Statistics that come out non-finite (an overflowing model) are an error, not a matrix to invert."""
    lm = tiny_model("llama")
    with torch.no_grad():
        lm.adapter.module(lm.model, 0, "mlp_out").weight.fill_(float("inf"))
    with pytest.raises(ValidationError, match="not finite"):
        second_moment(lm, StatsRequest(layer=1, corpus=corpus, n_tokens=64, seq_len=16))
    assert not list((stats.cache_dir() / "stats").glob("*.safetensors"))


def test_rome_uses_the_corpus_statistics(corpus):
    from editkit.editors import create_editor
    from editkit.edits import EditRequest

    req = EditRequest(prompt="The city of {} is", subject="the Eiffel Tower", target_new=" Rome")
    fast = {"v_steps": 3, "n_context": 1, "context_length": 3, "mom2_n_tokens": 128}
    deltas = []
    for corpus_setting in (None, str(corpus)):
        lm = tiny_model("llama")
        h = create_editor("rome", {**fast, "corpus": corpus_setting}).apply(lm, [req])
        ((_, ch),) = h.changes.items()
        deltas.append(ch.edited - ch.original)
    assert not torch.allclose(deltas[0], deltas[1])
