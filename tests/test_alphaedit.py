"""AlphaEdit's projection and update against direct computations, and its promise on tiny models: the update
vanishes on the preserved keys, and rolled-back edits stop counting as earlier edits."""

import numpy as np
import pytest
import torch

from editkit.editors import create_editor
from editkit.editors.alphaedit import alphaedit_update, null_space_basis
from editkit.edits import EditRequest
from editkit.errors import ConfigError, ValidationError
from editkit.models.tiny import tiny_model

FAST = {"v_steps": 6, "n_context": 2, "context_length": 4, "v_weight_decay": 0.0, "clamp_norm_factor": 1e4}
TOWER = EditRequest(prompt="The city of {}", subject="the Eiffel Tower", target_new=" Rome")
JORDAN = EditRequest(prompt="The sport of {}", subject="Michael Jordan", target_new=" soccer")


def _spectrum(rng, d, small):
    """A covariance with ``small`` eigenvalues far below the rest, and its eigenvectors."""
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    values = np.concatenate([np.full(small, 1e-6), rng.uniform(1.0, 2.0, size=d - small)])
    return (q * values) @ q.T, q[:, :small], q[:, small:]


def test_projection_spans_the_small_eigenvalues():
    rng = np.random.default_rng(0)
    cov, null, kept = _spectrum(rng, 8, 3)
    u = null_space_basis(torch.tensor(cov), 1e-2).numpy()
    assert u.shape == (8, 3)
    np.testing.assert_allclose(u.T @ u, np.eye(3), atol=1e-9)
    p = u @ u.T
    np.testing.assert_allclose(p, null @ null.T, atol=1e-6)
    np.testing.assert_allclose(p @ p, p, atol=1e-6)
    np.testing.assert_allclose(p @ kept, 0, atol=1e-6)


def test_update_matches_the_formula_and_vanishes_on_preserved_keys():
    rng = np.random.default_rng(1)
    d_in, d_out, n, alpha = 8, 5, 3, 0.5
    cov, _, kept = _spectrum(rng, d_in, 5)
    u = null_space_basis(torch.tensor(cov), 1e-2).numpy()
    p = u @ u.T
    keys, resid = rng.normal(size=(d_in, n)), rng.normal(size=(d_out, n))
    earlier = rng.normal(size=(d_in, 4))
    prev = earlier @ earlier.T
    args = torch.tensor(resid), torch.tensor(keys), torch.tensor(u), torch.tensor(u.T @ prev @ u)
    got = alphaedit_update(*args, alpha).double().numpy()
    expected = resid @ keys.T @ p @ np.linalg.inv(prev @ p + keys @ keys.T @ p + alpha * np.eye(d_in))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got @ kept, 0, atol=1e-5)  # preserved directions: outputs unchanged


def test_editing_a_model_changes_nothing_along_the_preserved_keys(tiny_corpus):
    lm = tiny_model("llama")
    settings = {
        **FAST,
        "layers": [1, 2],
        "corpus": str(tiny_corpus),
        "mom2_n_tokens": 2000,
        "nullspace_threshold": 0.05,
    }
    editor = create_editor("alphaedit", {**settings, "l2": 1e-4})
    handle = editor.apply(lm, [TOWER, JORDAN])
    for layer in (1, 2):
        name = lm.adapter.weight_name(layer, "mlp_out")
        change = handle.changes[name]
        update = lm.adapter.as_out_in(change.edited - change.original).double()
        u = editor.basis(lm, layer)
        p = u @ u.T
        assert 0 < handle.info["null_space_dims"][layer] == u.shape[1] < p.shape[0]
        assert update.norm() > 0
        assert (update @ (torch.eye(p.shape[0], dtype=torch.float64) - p)).norm() < 1e-4 * update.norm()


def test_rolled_back_edits_leave_the_earlier_keys(tiny_corpus):
    lm = tiny_model("llama")
    settings = {**FAST, "layers": [2], "corpus": str(tiny_corpus), "mom2_n_tokens": 2000, "nullspace_threshold": 0.05}
    editor = create_editor("alphaedit", settings)
    first = editor.apply(lm, [TOWER])
    assert editor.previous_keys(lm, 2).norm() > 0
    first.rollback()
    assert editor.previous_keys(lm, 2).norm() == 0
    editor.apply(lm, [JORDAN])
    assert editor.previous_keys(lm, 2).norm() > 0


def test_alphaedit_needs_a_corpus():
    with pytest.raises(ConfigError, match="corpus"):
        create_editor("alphaedit")


def _settings(corpus):
    return {**FAST, "layers": [1, 2], "corpus": str(corpus), "mom2_n_tokens": 2000, "nullspace_threshold": 0.05}


def test_earlier_keys_are_the_sum_of_each_edits_keys_and_forget_a_dropped_rollback(tiny_corpus):
    lm = tiny_model("llama")
    editor = create_editor("alphaedit", _settings(tiny_corpus))
    u = editor.basis(lm, 2)
    kept = editor.apply(lm, [TOWER, JORDAN])
    state = editor.export_state(lm)
    assert state["counts"].tolist() == [2] and state["keys.2"].shape == (u.shape[0], 2)
    uk = u.T @ state["keys.2"].double()
    torch.testing.assert_close(editor.previous_keys(lm, 2), uk @ uk.T, rtol=1e-12, atol=1e-18)
    dropped = editor.apply(lm, [EditRequest(prompt="The capital of {}", subject="France", target_new=" Lyon")])
    assert editor.export_state(lm)["counts"].tolist() == [2, 1]
    dropped.rollback()
    del dropped  # a rolled-back edit whose handle is gone is still not applied
    torch.testing.assert_close(editor.previous_keys(lm, 2), uk @ uk.T, rtol=1e-12, atol=1e-18)
    assert editor.export_state(lm)["counts"].tolist() == [2]
    kept.rollback()
    assert editor.export_state(lm) == {} and editor.previous_keys(lm, 2).norm() == 0


def test_a_new_editor_takes_over_the_exported_keys(tiny_corpus):
    lm = tiny_model("llama")
    first = create_editor("alphaedit", _settings(tiny_corpus))
    first.apply(lm, [TOWER])
    first.apply(lm, [JORDAN])
    second = create_editor("alphaedit", _settings(tiny_corpus))
    second.import_state(lm, first.export_state(lm))
    keys = first.export_state(lm)
    for layer in (1, 2):
        # both editors hold the exported keys, each in its own basis of the null space
        for editor in (first, second):
            uk = editor.basis(lm, layer).T @ keys[f"keys.{layer}"].double()
            assert uk.norm() > 0
            torch.testing.assert_close(editor.previous_keys(lm, layer), uk @ uk.T, rtol=1e-10, atol=1e-18)
    with pytest.raises(ValidationError, match="layers"):
        create_editor("alphaedit", {**_settings(tiny_corpus), "layers": [2]}).import_state(lm, first.export_state(lm))
    with pytest.raises(ValidationError, match="keeps nothing"):
        create_editor("memit", {**FAST, "layers": [1, 2], "mom2_update_weight": 1.0}).import_state(
            lm, first.export_state(lm)
        )
