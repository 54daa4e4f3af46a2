"""ROME's maths against independent computations, and its speed-ups against the plain computation."""

import numpy as np
import pytest
import torch

from editkit.editors import create_editor
from editkit.editors.rome import rank_one_update
from editkit.edits import EditRequest
from editkit.errors import ValidationError
from editkit.models.lm import LanguageModel
from editkit.models.tiny import tiny_model


def _kkt_row(cov: np.ndarray, k: np.ndarray, a: np.ndarray, target: float) -> np.ndarray:
    """min_x x^T C x subject to x . a = target, with direction fixed by k: solved as a KKT system.

    For anchor a = k this is the row of ROME's update; the solution must be parallel to C^{-1} k.
    """
    n = cov.shape[0]
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n] = 2 * cov
    kkt[:n, n] = k
    kkt[n, :n] = k
    rhs = np.zeros(n + 1)
    rhs[n] = target
    x = np.linalg.solve(kkt, rhs)[:n]
    return x * target / (x @ a) if target else x


def test_rank_one_update_is_the_constrained_least_squares_solution():
    rng = np.random.default_rng(0)
    d_in, d_out, n = 12, 5, 200
    keys = rng.normal(size=(n, d_in)) @ rng.normal(size=(d_in, d_in))  # correlated keys
    cov = keys.T @ keys / n
    k_star = rng.normal(size=d_in)
    delta = rng.normal(size=d_out)
    update = rank_one_update(torch.tensor(k_star), torch.tensor(delta), torch.tensor(cov)).double().numpy()
    expected = np.stack([_kkt_row(cov, k_star, k_star, d) for d in delta])
    np.testing.assert_allclose(update, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(update @ k_star, delta, rtol=1e-4, atol=1e-6)
    # Any other rank-one change meeting the constraint moves the corpus keys more (in the C norm).
    other = update + np.outer(rng.normal(size=d_out), rng.normal(size=d_in) - 0)
    other -= np.outer(other @ k_star - delta, k_star) / (k_star @ k_star)
    assert np.trace(update @ cov @ update.T) < np.trace(other @ cov @ other.T)


def test_anchor_moves_the_constraint_and_identity_covariance_is_plain_projection():
    k = torch.tensor([1.0, 2.0, 0.0])
    a = torch.tensor([1.0, 1.0, 1.0])
    delta = torch.tensor([3.0, -1.0])
    upd = rank_one_update(k, delta, None, anchor=a)
    torch.testing.assert_close(upd @ a, delta)
    torch.testing.assert_close(upd, torch.outer(delta, k) / (k @ a))


REQ = EditRequest(prompt="The city of {} is", subject="the Eiffel Tower", target_new=" Rome")
FAST = {"v_steps": 5, "n_context": 3, "context_length": 4, "v_weight_decay": 0.0, "clamp_norm_factor": 1e4}


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2", "gptj", "gpt_neox"])
@pytest.mark.parametrize("layer", [0, 2])
def test_fast_path_gives_the_same_edit_as_full_forward_passes(arch, layer):
    """Caching the layers below the edit and the tokens before the subject is a pure speed-up."""
    results = []
    for fast in (True, False):
        lm = tiny_model(arch)
        handle = create_editor("rome", {**FAST, "layer": layer, "fast_path": fast}).apply(lm, [REQ])
        assert handle.info["fast_path"] is fast
        ((_, change),) = handle.changes.items()
        results.append(change.edited - change.original)
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=1e-4)


def test_update_is_rank_one_in_the_declared_layout():
    for arch in ("llama", "gpt2"):  # out_in and in_out (Conv1D) storage
        lm = tiny_model(arch)
        handle = create_editor("rome", FAST).apply(lm, [REQ])
        ((name, change),) = handle.changes.items()
        assert name == lm.adapter.weight_name(lm.default_edit_layer, "mlp_out")
        s = torch.linalg.svdvals((change.edited - change.original).double())
        assert s[1] < 1e-5 * s[0]


def test_edit_raises_the_target_probability():
    # In a tiny random model attention carries little from the subject to later tokens, so the subject ends
    # the prompt here; the real-model tests cover prompts that go on after the subject.
    req = EditRequest(prompt="The city of {}", subject="the Eiffel Tower", target_new=" Rome")
    lm = tiny_model("llama")
    before = lm.score([req.text], [req.target_new])[0].sum()
    create_editor("rome", {**FAST, "v_steps": 25}).apply(lm, [req])
    assert lm.score([req.text], [req.target_new])[0].sum() > before + 0.3


def test_context_templates_are_seeded_and_reused():
    lm = tiny_model("llama")
    a = create_editor("rome", {"n_context": 4, "context_length": 5, "seed": 3})
    b = create_editor("rome", {"n_context": 4, "context_length": 5, "seed": 3})
    c = create_editor("rome", {"n_context": 4, "context_length": 5, "seed": 4})
    ta = a.context_templates(lm)
    assert ta == b.context_templates(lm) != c.context_templates(lm)
    assert ta[0] == "{}" and all(t.endswith(". {}") for t in ta[1:]) and len(ta) == 5


def test_rome_needs_a_subject():
    lm = tiny_model("llama")
    with pytest.raises(ValidationError, match="rome needs the subject"):
        create_editor("rome").apply(lm, [EditRequest(prompt="The capital is", target_new=" Rome")])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fast_path_with_a_one_token_subject_at_position_zero(arch):
    """The bare prompt's row then has nothing before its subject: an all-padding prefix row."""
    req = EditRequest(prompt="{} is the capital of", subject="The", target_new=" Italy")
    deltas = []
    for fast in (True, False):
        lm = tiny_model(arch)
        handle = create_editor("rome", {**FAST, "fast_path": fast}).apply(lm, [req])
        ((_, change),) = handle.changes.items()
        deltas.append(change.edited - change.original)
    assert torch.isfinite(deltas[0]).all()
    # Left padding reorders float sums; the division by u.k0 amplifies that noise a little.
    torch.testing.assert_close(deltas[0], deltas[1], atol=1e-4, rtol=1e-3)


def test_rome_defaults_to_the_models_rome_layer_and_the_others_keep_the_edit_layer():
    tiny = tiny_model("llama")
    lm = LanguageModel(tiny.model, tiny.tokenizer, name=tiny.name, edit_layer=1, rome_layer=2)
    handle = create_editor("rome", FAST).apply(lm, [REQ])
    assert list(handle.changes) == [lm.adapter.weight_name(2, "mlp_out")]
    handle.rollback()
    assert create_editor("ft").target_parameters(lm, [REQ]) == [lm.adapter.weight_name(1, "mlp_out")]
    assert create_editor("memit", {"mom2_update_weight": 15}).layers(lm) == [0, 1]
    assert create_editor("rome", {**FAST, "layer": 0}).layer(lm) == 0
    plain = LanguageModel(tiny.model, tiny.tokenizer, name=tiny.name, edit_layer=1)
    assert plain.default_rome_layer == 1
