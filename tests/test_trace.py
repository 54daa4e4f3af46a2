"""Causal tracing on tiny models of every architecture: the grid's shape, restoring everything gives back the clean
run, the noise is seeded, and one batched cell against a plain unbatched computation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from editkit.cli import main
from editkit.errors import ValidationError
from editkit.locating.average import average_effects, load_known, state_path, traced_facts
from editkit.locating.trace import TraceConfig, Tracer, embedding_std, window_layers
from editkit.models.adapters import get_module
from editkit.models.tiny import tiny_model

PROMPT = "The Eiffel Tower is located in the city of"
SUBJECT = "Eiffel Tower"
FAST = TraceConfig(samples=3, window=3, rows=7)


def test_the_grid_has_a_cell_per_kind_token_and_layer(any_arch):
    result = Tracer(any_arch, PROMPT, SUBJECT, FAST).trace()
    n_layers = any_arch.adapter.n_layers(any_arch.model)
    assert set(result.scores) == {"hidden", "mlp", "attn"}
    for grid in result.scores.values():
        assert len(grid) == len(result.tokens) and all(len(row) == n_layers for row in grid)
    s0, s1 = result.subject_range
    assert SUBJECT.startswith("".join(result.tokens[s0:s1]).strip()[:6])
    assert 0 < result.p_clean < 1 and 0 < result.p_corrupted < 1
    assert result.p_clean != pytest.approx(result.p_corrupted, rel=1e-6)


def test_restoring_every_token_at_any_layer_gives_back_the_clean_run(any_arch):
    tracer = Tracer(any_arch, PROMPT, SUBJECT, FAST)
    n = len(tracer.ids)
    rows = [[("hidden", layer, t) for t in range(n)] for layer in range(tracer.n_layers)]
    rows.append([])  # nothing restored: the corrupted run
    got = tracer.restored(rows)
    assert got[:-1] == pytest.approx([tracer.p_clean] * tracer.n_layers, rel=1e-4)
    assert got[-1] == pytest.approx(tracer.p_corrupted, rel=1e-5)


def test_tokens_before_the_subject_have_no_effect_in_a_causal_model(llama):
    result = Tracer(llama, PROMPT, SUBJECT, FAST).trace()
    assert result.subject_range[0] > 0
    for grid in result.scores.values():
        assert grid[0] == [result.p_corrupted] * len(grid[0])


def test_the_noise_is_seeded_and_scaled(llama):
    a = Tracer(llama, PROMPT, SUBJECT, FAST)
    b = Tracer(llama, PROMPT, SUBJECT, FAST)
    c = Tracer(llama, PROMPT, SUBJECT, TraceConfig(samples=3, seed=1))
    assert torch.equal(a.noise, b.noise) and a.p_corrupted == b.p_corrupted
    assert not torch.equal(a.noise, c.noise)
    assert a.noise.shape == (3, a.s1 - a.s0, a.embeds.shape[-1])
    emb = get_module(llama.model, llama.adapter.embeddings).weight
    assert embedding_std(llama) == pytest.approx(float(emb.detach().double().std(unbiased=False)), rel=1e-6)


def test_windows_are_romes():
    assert window_layers("mlp", 12, 30, 10) == list(range(7, 17))
    assert window_layers("attn", 2, 30, 10) == list(range(0, 7))
    assert window_layers("mlp", 28, 30, 10) == list(range(23, 30))
    assert window_layers("hidden", 5, 30, 10) == [5]


def _plain_cell(lm, tracer, kind, token, layer):
    """P(answer) with the clean output of ``kind`` at ``token`` restored over the window, one noise draw at a time,
    full passes without the tracer's batching, replay or clean-state cache."""
    adapter = lm.adapter
    part = {"hidden": None, "mlp": "mlp_out", "attn": "attn_out"}[kind]
    layers = window_layers(kind, layer, tracer.n_layers, tracer.config.window)
    modules = [adapter.layer_list(lm.model)[w] if part is None else adapter.module(lm.model, w, part) for w in layers]
    embeds = get_module(lm.model, adapter.embeddings)(torch.tensor([tracer.ids]))

    def run(inputs, hook_fns):
        handles = [m.register_forward_hook(f) for m, f in zip(modules, hook_fns, strict=True)] if hook_fns else []
        try:
            if lm.is_encoder_decoder:
                start = torch.full((1, 1), int(lm.config.decoder_start_token_id))
                logits = lm.model(inputs_embeds=inputs, decoder_input_ids=start).logits[0, 0]
            else:
                logits = lm.model(inputs_embeds=inputs).logits[0, -1]
        finally:
            for h in handles:
                h.remove()
        return F.softmax(logits, -1)[tracer.answer_id]

    clean = {}

    def grabber(i):
        def grab(_m, _a, out):
            clean[i] = (out if isinstance(out, torch.Tensor) else out[0])[0, token].clone()

        return grab

    def restorer(i):
        def restore(_m, _a, out):
            h = (out if isinstance(out, torch.Tensor) else out[0]).clone()
            h[0, token] = clean[i]
            return h if isinstance(out, torch.Tensor) else (h, *out[1:])

        return restore

    with torch.no_grad():
        run(embeds, [grabber(i) for i in range(len(modules))])
        total = 0.0
        for k in range(tracer.config.samples):
            noisy = embeds.clone()
            noisy[0, tracer.s0 : tracer.s1] += tracer.noise[k]
            total += float(run(noisy, [restorer(i) for i in range(len(modules))]))
    return total / tracer.config.samples


@pytest.mark.parametrize("kind", ["hidden", "mlp", "attn"])
def test_a_batched_cell_equals_a_plain_computation(any_arch, kind):
    tracer = Tracer(any_arch, PROMPT, SUBJECT, FAST)
    result = tracer.trace()
    token, layer = tracer.s1 - 1, 2
    plain = _plain_cell(any_arch, tracer, kind, token, layer)
    assert result.scores[kind][token][layer] == pytest.approx(plain, rel=2e-6)
    last = len(tracer.ids) - 1
    assert result.scores[kind][last][1] == pytest.approx(_plain_cell(any_arch, tracer, kind, last, 1), rel=2e-6)


def test_the_prefix_cache_is_a_pure_speed_up(any_arch):
    """Running only the tokens from the first restored one on, over the corrupted runs' cached keys and values,
    gives the grid of full passes; and it runs fewer token positions."""
    from dataclasses import replace

    positions: list[list[int]] = []
    hook = any_arch.adapter.layer_list(any_arch.model)[-1].register_forward_pre_hook(
        lambda _m, args, kwargs: positions[-1].append((args[0] if args else kwargs["hidden_states"]).shape[:2].numel()),
        with_kwargs=True,
    )
    try:
        grids = []
        for cached in (True, False):
            positions.append([])
            grids.append(Tracer(any_arch, PROMPT, SUBJECT, replace(FAST, prefix_cache=cached)).trace().scores)
    finally:
        hook.remove()
    for kind in grids[0]:
        torch.testing.assert_close(torch.tensor(grids[0][kind]), torch.tensor(grids[1][kind]), atol=1e-6, rtol=1e-5)
    if any_arch.adapter.sequential_layers and not any_arch.is_encoder_decoder:
        assert sum(positions[0]) < 0.8 * sum(positions[1])


def test_a_subject_not_in_the_prompt_is_a_user_error(llama):
    with pytest.raises(ValidationError, match="not in the prompt"):
        Tracer(llama, PROMPT, "Colosseum", FAST)


def test_the_average_resumes_from_its_state(llama, tmp_path):
    facts_file = tmp_path / "known.json"
    records = [
        {"known_id": i, "prompt": PROMPT, "subject": SUBJECT, "attribute": a} for i, a in enumerate(["x", "y", "z"])
    ]
    facts_file.write_text(json.dumps(records))
    facts = load_known(facts_file)
    greedy = llama.tokenizer.decode([int(llama.next_token_logprobs([PROMPT])[0].argmax())])
    facts[1] = type(facts[1])(1, PROMPT, SUBJECT, greedy)  # one fact the tiny model "knows"

    class Count:
        n = 0

        def advance(self):
            self.n += 1

    state = state_path(llama, FAST, "sha", tmp_path)
    first = list(traced_facts(llama, facts, FAST, state, 2, Count()))
    assert [r["known"] for r in first] == [False, True]
    again = list(traced_facts(llama, facts, FAST, state, 3, Count()))
    assert again[:2] == first and len(state.read_text().splitlines()) == 3
    summary = average_effects(again, FAST.kinds)
    assert summary["known"] == 1 and len(summary["kinds"]["mlp"]["mean_effect"]) == 4


def test_trace_cli_writes_json_and_png(monkeypatch, tmp_path, capsys):
    from editkit.models import zoo

    monkeypatch.setattr(zoo, "load", lambda name, device=None: tiny_model("gpt2"))
    out = tmp_path / "t.json"
    argv = ["trace", "--prompt", PROMPT, "--subject", SUBJECT, "--out", str(out), "--set", "samples=2"]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["config"]["samples"] == 2 and set(data["scores"]) == {"hidden", "mlp", "attn"}
    assert out.with_suffix(".png").stat().st_size > 1000
    assert main(["trace", "--prompt", PROMPT, "--subject", "nope", "--out", str(out)]) == 2
    assert "editkit: error:" in capsys.readouterr().err


def test_trace_neurons_cli_lists_the_top_neurons(monkeypatch, tmp_path, capsys):
    from editkit.models import zoo

    monkeypatch.setattr(zoo, "load", lambda name, device=None: tiny_model("llama"))
    out = tmp_path / "n.json"
    assert main(["trace", "--neurons", "--prompt", PROMPT, "--steps", "3", "--top", "4", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    values = [row["attribution"] for row in data["top"]]
    assert len(values) == 4 and values == sorted(values, reverse=True)
    assert "layer" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_the_zoos_traced_layer_is_the_committed_measurement(name):
    from pathlib import Path

    from editkit.models.zoo import MODELS

    spec = MODELS[name]
    if spec.traced_layer is None:
        assert spec.rome_layer is None and not spec.traced_by
        return
    out = spec.traced_by.split("--out ")[1]
    data = json.loads((Path(__file__).parents[1] / out).read_text())
    assert data["kinds"]["mlp"]["peak_layer"] == spec.traced_layer
    assert data["model"] == spec.name and data["data"]["limit"] == int(spec.traced_by.split("--limit ")[1].split()[0])
    # ROME's default moves only to the traced layer (where it scored better; docs/benchmarks.md).
    assert spec.rome_layer in (None, spec.traced_layer)
