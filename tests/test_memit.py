"""MEMIT's maths against an independent least-squares solution, its layer schedule, and batch edits on tiny
models (fast path against full passes, the residual at the last layer, the preserved statistics)."""

import dataclasses

import numpy as np
import pytest
import torch

from editkit.editors import create_editor, memit
from editkit.editors.handle import pack_tensor
from editkit.editors.memit import memit_update, output_change_for, preserved_factor
from editkit.edits import EditRequest
from editkit.errors import ConfigError
from editkit.models.tiny import tiny_model

FAST = {"v_steps": 8, "n_context": 2, "context_length": 4, "v_weight_decay": 0.0, "clamp_norm_factor": 1e4}
NO_CORPUS = {"mom2_update_weight": 1.0}  # C = I needs a lambda of its own (the default is refused)
TOWER = EditRequest(prompt="The city of {}", subject="the Eiffel Tower", target_new=" Rome")
JORDAN = EditRequest(prompt="The sport of {}", subject="Michael Jordan", target_new=" soccer")
THIRD = EditRequest(prompt="{} was born in", subject="Ada Lovelace", target_new=" Paris")


def test_update_is_the_regularised_least_squares_solution():
    """Delta = argmin ||Delta K - R||^2 + lambda tr(Delta C Delta^T), solved as a stacked least-squares problem."""
    rng = np.random.default_rng(0)
    d_in, d_out, n, lam = 10, 6, 4, 3.0
    corpus = rng.normal(size=(200, d_in)) @ rng.normal(size=(d_in, d_in))
    cov = corpus.T @ corpus / 200
    keys, resid = rng.normal(size=(d_in, n)), rng.normal(size=(d_out, n))
    chol = np.linalg.cholesky(cov)
    a = np.vstack([keys.T, np.sqrt(lam) * chol.T])  # rows: the edits' keys, then the preserved directions
    b = np.vstack([resid.T, np.zeros((d_in, d_out))])
    expected = np.linalg.lstsq(a, b, rcond=None)[0].T
    got = memit_update(torch.tensor(resid), torch.tensor(keys), torch.tensor(cov), lam).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # the same through the kept Cholesky factor of lambda C (Woodbury: fewer keys than dimensions)
    factor = preserved_factor(torch.tensor(cov), lam, d_in)
    assert factor is not None
    kept = memit_update(torch.tensor(resid), torch.tensor(keys), torch.tensor(cov), lam, factor).double().numpy()
    np.testing.assert_allclose(kept, expected, rtol=1e-4, atol=1e-6)
    # Without a corpus C = I: ridge regression; a tiny lambda solves the edits exactly, either way.
    for f in (None, preserved_factor(None, 1e-8, d_in)):
        exact = memit_update(torch.tensor(resid), torch.tensor(keys), None, 1e-8, f).double().numpy()
        np.testing.assert_allclose(exact @ keys, resid, atol=1e-4)
    # a covariance that is not positive definite has no factor: the whole system is solved
    assert preserved_factor(torch.zeros((d_in, d_in), dtype=torch.float64), lam, d_in) is None


def test_default_layers_end_at_the_edit_layer_and_bad_layers_are_refused():
    lm = tiny_model("llama")
    editor = create_editor("memit", NO_CORPUS)
    assert editor.layers(lm)[-1] == lm.default_edit_layer and len(editor.layers(lm)) <= 5
    assert create_editor("memit", {**NO_CORPUS, "layers": [0, 2]}).target_parameters(lm, [TOWER]) == [
        lm.adapter.weight_name(0, "mlp_out"),
        lm.adapter.weight_name(2, "mlp_out"),
    ]
    with pytest.raises(ConfigError, match="ascending"):
        create_editor("memit", {**NO_CORPUS, "layers": [2, 1]})


def test_the_default_lambda_without_a_corpus_is_refused(tiny_corpus):
    """C = I with MEMIT's corpus-statistics lambda writes (almost) nothing: refused, naming both ways out."""
    with pytest.raises(ConfigError, match="corpus=FILE") as err:
        create_editor("memit")
    assert "mom2_update_weight" in str(err.value)
    assert create_editor("memit", {"corpus": str(tiny_corpus)}).config.mom2_update_weight == 15_000.0
    with pytest.raises(ConfigError, match="AlphaEditConfig: a corpus is needed"):
        create_editor("alphaedit")


def test_a_batch_edit_raises_every_target_and_changes_only_the_layer_range():
    lm = tiny_model("llama")
    before = [lm.score([r.text], [r.target_new])[0].sum() for r in (TOWER, JORDAN)]
    # keys of the tiny random model are small (norm ~0.1), so lambda is small too
    editor = create_editor("memit", {**FAST, "layers": [1, 2], "v_steps": 25, "mom2_update_weight": 1e-3})
    handle = editor.apply(lm, [TOWER, JORDAN])
    assert sorted(handle.changes) == sorted(lm.adapter.weight_name(i, "mlp_out") for i in (1, 2))
    after = [lm.score([r.text], [r.target_new])[0].sum() for r in (TOWER, JORDAN)]
    assert all(a > b + 0.3 for a, b in zip(after, before, strict=True))
    assert len(handle.info["per_layer"]) == 2 and len(handle.info["steps"]) == 2


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fast_path_gives_the_same_edit_as_full_forward_passes(arch):
    """The residual-stream target comes from the same cached passes as ROME's v*."""
    results = []
    for fast in (True, False):
        lm = tiny_model(arch)
        editor = create_editor("memit", {**FAST, **NO_CORPUS, "layers": [1, 2], "fast_path": fast})
        handle = editor.apply(lm, [TOWER, JORDAN])
        results.append({n: c.edited - c.original for n, c in handle.changes.items()})
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], atol=1e-4, rtol=1e-3)


def test_one_layer_with_a_small_lambda_reaches_the_target_hidden_state():
    """With one layer, lambda -> 0 and C = I, the update maps the edit's averaged key to exactly the residual
    the optimisation asked for, so the layer's output at the subject moves by (nearly) that residual."""
    lm = tiny_model("llama")
    editor = create_editor("memit", {**FAST, "layers": [2], "n_context": 0, "mom2_update_weight": 1e-6})
    residual = editor.target_residual(lm, TOWER, 2, site="block")
    _, before = editor.subject_states(lm, [TOWER], 2, 2)
    editor.apply(lm, [TOWER])
    _, after = editor.subject_states(lm, [TOWER], 2, 2)
    torch.testing.assert_close(after[0] - before[0], residual.delta, atol=1e-3, rtol=1e-3)


def test_a_change_carried_back_through_a_norm_gives_the_wanted_image(monkeypatch):
    """``output_change_for`` solves J dm = wanted through the norm's Jacobian J: for a ``wanted`` that is J v
    (a forward-mode product, computed independently), the norm's image of outputs + dm moves by ``wanted`` up to
    the linearisation's second-order error."""
    lm = tiny_model("gemma3")
    norm = lm.adapter.module(lm.model, 0, "mlp_out_norm")
    with torch.no_grad():
        norm.weight.normal_()  # a weight of its own (the tiny model's is zero: the scale 1 + 0)
    g = torch.Generator().manual_seed(0)
    outputs = 0.01 * torch.randn(3, norm.weight.shape[0], generator=g)
    direction = 1e-4 * torch.randn(outputs.shape, generator=g)
    wanted = torch.stack(
        [torch.func.jvp(lambda x: norm(x[None])[0], (o,), (v,))[1] for o, v in zip(outputs, direction, strict=True)]
    )
    change = output_change_for(norm, outputs, wanted)
    moved = (norm(outputs + change) - norm(outputs)).detach()
    assert ((moved - wanted).norm(dim=1) / wanted.norm(dim=1)).max() < 0.02
    d = outputs.shape[1]
    monkeypatch.setattr(memit, "NORM_JACOBIAN_ELEMENTS", 2 * d * d)  # two edits' Jacobians at a time
    torch.testing.assert_close(output_change_for(norm, outputs, wanted), change)


def test_a_large_change_through_a_norm_reaches_its_image_and_keeps_the_output_length():
    """Where the norm ignores its input's length (outputs far above its eps), a change as large as the norm's
    image is reached in Gauss-Newton steps with each output as long as before. One linear step both misses it and
    lengthens the output, and in a sequence of edits that compounds (AlphaEdit on Gemma-3: layer 4's weights ran
    away, drift 185,793 after 20 edits)."""
    lm = tiny_model("gemma3")
    norm = lm.adapter.module(lm.model, 0, "mlp_out_norm")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # gains 1 + w of 1 to 3, positive as Gemma's are (a gain at 0 makes images unreachable)
        norm.weight.copy_(2 * torch.rand(norm.weight.shape, generator=g))
    outputs = torch.randn(4, norm.weight.shape[0], generator=g)  # mean square ~1, against eps 1e-6
    elsewhere = 3 * torch.randn(outputs.shape, generator=g)  # reachable images far from the outputs' own
    with torch.no_grad():
        wanted = norm(elsewhere) - norm(outputs)
    change = output_change_for(norm, outputs, wanted)
    with torch.no_grad():
        miss = (norm(outputs + change) - norm(outputs) - wanted).norm(dim=1) / wanted.norm(dim=1)
    assert miss.max() < 1e-3
    torch.testing.assert_close((outputs + change).norm(dim=1), outputs.norm(dim=1), rtol=1e-5, atol=0)

    # one linear step (least squares through the Jacobian at each output, computed here) misses and lengthens
    jac = torch.stack([torch.func.jacrev(lambda x: norm(x[None])[0])(o) for o in outputs]).detach()
    linear = (torch.linalg.pinv(jac) @ wanted.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        linear_miss = (norm(outputs + linear) - norm(outputs) - wanted).norm(dim=1) / wanted.norm(dim=1)
    assert linear_miss.min() > 0.05 and bool(((outputs + linear).norm(dim=1) > 1.2 * outputs.norm(dim=1)).all())


@pytest.mark.parametrize("through_norm", [True, False])
def test_memit_moves_a_post_norm_models_hidden_state_by_the_residual_it_spreads(through_norm):
    """Gemma's MLP output passes through a norm before it joins the residual stream. MEMIT carries each layer's
    share of the residual back through it, so the layer's output at the subject moves by the residual asked
    for (2% of the hidden state's norm: to 2% of it); taken as the raw output's change, the same residual moves
    the state by many times itself."""
    lm = tiny_model("gemma3")
    if not through_norm:
        lm.adapter = dataclasses.replace(lm.adapter, mlp_out_norm="")
    editor = create_editor("memit", {"layers": [1], "n_context": 0, "mom2_update_weight": 1e-6})
    _, before = editor.subject_states(lm, [TOWER], 1, 1)
    delta = torch.randn(before.shape, generator=torch.Generator().manual_seed(0))
    delta = delta / delta.norm() * 0.02 * before.norm()
    editor.replay(lm, [TOWER], {"targets": pack_tensor(before + delta)})
    _, after = editor.subject_states(lm, [TOWER], 1, 1)
    error = float((after - before - delta).norm() / delta.norm())
    assert error < 0.05 if through_norm else error > 1.0


def test_preserved_statistics_are_those_of_the_model_first_seen(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The Eiffel Tower is in Paris. Michael Jordan plays basketball. " * 40)
    lm = tiny_model("llama")
    editor = create_editor("memit", {**FAST, "layers": [1, 2], "corpus": str(corpus), "mom2_n_tokens": 500})
    editor.prepare(lm)
    first = editor.preserved_covariance(lm, 2)
    editor.apply(lm, [TOWER])  # layer 1 changes, so the keys entering layer 2 change too
    assert editor.preserved_covariance(lm, 2) is first


def _states_one_prompt_at_a_time(lm, editor, requests, key_layer, out_layer):
    """Keys and outputs read the plain way: each context-prefixed prompt whole, with its target, in a pass of
    its own; the key averaged over a request's prompts, the output that of the bare prompt."""
    keys, outs, read = [], [], []
    mlp_out = lm.adapter.module(lm.model, key_layer, "mlp_out")
    hook = mlp_out.register_forward_pre_hook(lambda _m, args: read.append(args[0][0]))
    try:
        for req in requests:
            texts, idx = editor.rendered(lm, req)
            read.clear()
            for n, (text, j) in enumerate(zip(texts, idx, strict=True)):
                ids = torch.tensor([lm.encode(text) + lm.encode(req.target_new, special=False)])
                with torch.no_grad():
                    hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
                read[-1] = read[-1][j]
                if n == 0:  # the bare prompt
                    outs.append(hidden[out_layer + 1][0, j])
            keys.append(torch.stack(read).mean(0))
    finally:
        hook.remove()
    return torch.stack(keys), torch.stack(outs)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3", "gptj", "gpt_neox"])
def test_subject_states_match_each_prompt_read_whole_and_alone(monkeypatch, arch):
    """A mass edit cuts its prompts after the subject's last token, runs a context template's sampled text once
    and each prompt's rest over its cache, and reads them sorted by length, STATE_ROWS at a time, prompts of
    different requests in one pass: the keys and hidden states are those of each prompt read whole (with its
    target) and alone, put back in the requests' order."""
    lm = tiny_model(arch)
    editor = create_editor("memit", {**FAST, **NO_CORPUS, "layers": [0, 1]})
    requests = [TOWER, JORDAN, THIRD, TOWER]
    expected = _states_one_prompt_at_a_time(lm, editor, requests, 0, 1)
    real = memit.MEMIT._last_token_states
    prefixed: list[bool] = []

    def seen(self, lm, rows, key_layer, out_layer, prefix=None):
        prefixed.append(prefix is not None)
        return real(self, lm, rows, key_layer, out_layer, prefix)

    monkeypatch.setattr(memit.MEMIT, "_last_token_states", seen)
    for rows in (256, 3):
        monkeypatch.setattr(memit, "STATE_ROWS", rows)
        told: list[int] = []
        got = editor.subject_states(lm, requests, 0, 1, advance=told.append)
        for a, b in zip(got, expected, strict=True):
            assert a.shape == b.shape == (4, b.shape[1])
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        # a pass per template's 4 prompts (bare, and FAST's two contexts) or per 3 of them; progress adds up
        assert len(told) == 3 * -(-4 // rows) and sum(told) == 4
    assert any(prefixed)  # the context prompts went over their template's cache


def test_a_mass_edit_shows_the_progress_of_its_keys(monkeypatch, capsys):
    from editkit import progress

    monkeypatch.setattr(progress, "LINE_EVERY_SECONDS", 0.0)
    monkeypatch.setattr(memit, "PROGRESS_FROM", 2)
    create_editor("memit", {**FAST, **NO_CORPUS, "layers": [0, 1]}).apply(tiny_model("llama"), [TOWER, JORDAN])
    lines = [line for line in capsys.readouterr().err.splitlines() if "keys and update" in line]
    assert lines[-1].startswith("memit keys and update, layers [0, 1]: 4/4")


def test_every_optimisation_setting_keys_the_residual_cache():
    """A setting added to the optimisation's config must be named in RESIDUAL_SETTINGS (or be one that shapes
    only the update), or the cache would hand back residuals optimised under another value of it."""
    from editkit.editors.locate import RESIDUAL_SETTINGS, LocateEditConfig

    update_only = {"corpus", "mom2_n_tokens", "v_batch", "residual_cache"}
    assert {f.name for f in dataclasses.fields(LocateEditConfig)} == set(RESIDUAL_SETTINGS) | update_only


def test_the_residual_cache_resumes_a_stopped_batch_and_gives_the_same_update(tmp_path, monkeypatch):
    """A batch that stops part-way keeps the residuals it found; the rerun optimises only the others and makes
    the update of one uninterrupted run, bit for bit. A damaged file is computed again; other settings miss."""
    from editkit.editors.locate import LocateEditor

    settings = {**FAST, **NO_CORPUS, "layers": [1, 2], "v_batch": 1, "residual_cache": str(tmp_path / "z")}
    requests = [TOWER, JORDAN, THIRD]
    whole = create_editor("memit", {**settings, "residual_cache": None}).apply(tiny_model("llama"), requests)
    real = LocateEditor._optimise
    calls: list[int] = []

    def counted(self, lm, reqs, *args, **kwargs):
        calls.append(len(reqs))
        if len(calls) == 2 and fail_second:
            raise KeyboardInterrupt("stopped")
        return real(self, lm, reqs, *args, **kwargs)

    monkeypatch.setattr(LocateEditor, "_optimise", counted)
    fail_second = True
    with pytest.raises(KeyboardInterrupt):
        create_editor("memit", settings).apply(tiny_model("llama"), requests)
    assert len(list((tmp_path / "z").glob("*.safetensors"))) == 1
    fail_second, calls[:] = False, []
    resumed = create_editor("memit", settings).apply(tiny_model("llama"), requests)
    assert sum(calls) == 2  # the first request's residual came from the cache
    assert resumed.changes.keys() == whole.changes.keys()
    assert all(torch.equal(resumed.changes[k].edited, whole.changes[k].edited) for k in whole.changes)
    assert resumed.info["steps"] == whole.info["steps"]
    assert all(s > 0 for s in resumed.info["residual_seconds"])
    calls[:] = []
    cached = create_editor("memit", settings).apply(tiny_model("llama"), requests)
    assert calls == []  # every residual cached, with what its optimisation took
    assert cached.info["residual_seconds"] == resumed.info["residual_seconds"]
    damaged = sorted((tmp_path / "z").glob("*.safetensors"))[0]
    damaged.write_bytes(damaged.read_bytes()[:-8] + b"\x00" * 8)
    again = create_editor("memit", settings).apply(tiny_model("llama"), requests)
    assert calls == [1] and all(torch.equal(again.changes[k].edited, whole.changes[k].edited) for k in whole.changes)
    calls[:] = []
    create_editor("memit", {**settings, "v_steps": 9}).apply(tiny_model("llama"), requests)
    assert sum(calls) == 3  # other settings: nothing reused
    calls[:] = []
    create_editor("memit", {**settings, "v_batch": 3}).apply(tiny_model("llama"), requests)
    assert calls == []  # v_batch changes float rounding only: the residuals are reused
    create_editor("memit", {**settings, "layers": [0, 2], "mom2_update_weight": 50.0}).apply(
        tiny_model("llama"), requests
    )
    assert calls == []  # the update's settings (lambda, the layers below the top one) do not shape a residual
    create_editor("memit", {**settings, "layers": [1, 3]}).apply(tiny_model("llama"), requests)
    assert sum(calls) == 3  # another top layer: another residual


def test_a_residual_another_process_wrote_during_the_run_is_read_not_optimised(tmp_path, monkeypatch):
    """The folder is read again before each chunk: what a process sharing it wrote meanwhile is taken as it is."""
    from editkit.editors.locate import LocateEditor

    settings = {**FAST, **NO_CORPUS, "layers": [1, 2], "v_batch": 1, "residual_cache": str(tmp_path / "z")}
    requests = [TOWER, JORDAN, THIRD]
    whole = create_editor("memit", {**settings, "residual_cache": None}).apply(tiny_model("llama"), requests)
    other = create_editor("memit", settings)
    real = LocateEditor._optimise
    optimised: list[str | None] = []

    def counted(self, lm, reqs, *args, **kwargs):
        optimised.extend(r.subject for r in reqs)
        out = real(self, lm, reqs, *args, **kwargs)
        if self is not other and len(optimised) == 1:
            assert other.cache_residuals(tiny_model("llama"), [THIRD]) == 0  # "another process", meanwhile
        return out

    monkeypatch.setattr(LocateEditor, "_optimise", counted)
    edited = create_editor("memit", settings).apply(tiny_model("llama"), requests)
    assert optimised == [TOWER.subject, THIRD.subject, JORDAN.subject]  # the third by the other only
    assert all(torch.equal(edited.changes[k].edited, whole.changes[k].edited) for k in whole.changes)
    assert other.cache_residuals(tiny_model("llama"), requests) == 3
    with pytest.raises(ConfigError, match="residual_cache=FOLDER"):
        create_editor("memit", {**settings, "residual_cache": None}).cache_residuals(tiny_model("llama"), requests)
