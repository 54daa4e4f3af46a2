"""Target residuals of several requests optimised together (one set of passes) against each optimised alone:
the same residual, steps and keys, on the fast path and with plain full passes, with targets of different
lengths, subjects at different positions, requests that stop at different steps and a norm clamp that binds."""

import pytest
import torch

from editkit.editors import create_editor
from editkit.editors.locate import SORT_WINDOW, chunk_order
from editkit.edits import EditRequest
from editkit.errors import ConfigError
from editkit.models.tiny import tiny_model

REQUESTS = [
    EditRequest(prompt="The city of {} is", subject="the Eiffel Tower", target_new=" Rome"),
    EditRequest(prompt="{} plays the sport of", subject="Michael Jordan", target_new=" soccer and golf"),
    EditRequest(prompt="The mother tongue of {} is", subject="Danielle", target_new=" Dutch"),
]
SETTINGS = {"v_steps": 12, "n_context": 2, "context_length": 4, "v_lr": 0.5, "kl_factor": 0.5}


def _alone_and_together(arch: str, fast: bool, **extra: object) -> tuple[list, list]:
    lm = tiny_model(arch)
    cfg = {**SETTINGS, "fast_path": fast, **extra}
    editor = create_editor("memit", {**cfg, "mom2_update_weight": 1.0, "layers": [1, 2], "v_batch": 16})
    alone = [editor.target_residual(lm, req, 2, site="block") for req in REQUESTS]
    together = editor.target_residuals(lm, REQUESTS, 2, site="block")
    return alone, together


def _check_equal(alone: list, together: list) -> None:
    for a, t in zip(alone, together, strict=True):
        assert t.info["steps"] == a.info["steps"]
        torch.testing.assert_close(t.k_star, a.k_star, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(t.k_bare, a.k_bare, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(t.v_init, a.v_init, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(t.delta, a.delta, atol=1e-4, rtol=1e-3)
        assert t.info["batched_with"] == len(together) and a.info["batched_with"] == 1


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("fast", [True, False])
def test_a_batch_optimises_each_request_as_if_alone(arch, fast):
    alone, together = _alone_and_together(arch, fast)
    _check_equal(alone, together)
    assert len({tuple(t.delta.tolist()) for t in together}) == 3  # three different residuals


def test_requests_that_stop_early_stay_where_they_stopped():
    """A stopping loss just above the fastest request's NLL after 6 steps stops it there while the others go on;
    a request that has stopped must not be moved by Adam's momentum while the others take more steps."""
    alone, _ = _alone_and_together("llama", True, v_steps=6)
    stop = min(a.info["nll_last"] for a in alone) + 1e-4
    alone, together = _alone_and_together("llama", True, stop_loss=stop)
    steps = [a.info["steps"] for a in alone]
    assert min(steps) <= 6 and max(steps) >= min(steps) + 3
    _check_equal(alone, together)


def test_the_norm_clamp_binds_per_request():
    alone, together = _alone_and_together("llama", True, clamp_norm_factor=0.05, v_weight_decay=0.0)
    for t in together:
        assert t.delta.norm() <= 0.05 * t.v_init.norm() * (1 + 1e-4)
    _check_equal(alone, together)


def test_v_batch_chunks_give_the_same_edit_and_bad_values_are_refused():
    deltas = []
    for v_batch in (1, 2, 16):
        lm = tiny_model("llama")
        editor = create_editor("memit", {**SETTINGS, "v_batch": v_batch, "mom2_update_weight": 1.0, "layers": [1, 2]})
        handle = editor.apply(lm, REQUESTS)
        deltas.append({n: c.edited - c.original for n, c in handle.changes.items()})
    for other in deltas[1:]:
        for name, d in deltas[0].items():
            torch.testing.assert_close(other[name], d, atol=1e-4, rtol=1e-3)
    # by default one request at a time on the CPU (measured faster there; docs/benchmarks.md)
    handle = create_editor("memit", {**SETTINGS, "mom2_update_weight": 1.0, "layers": [1, 2]}).apply(
        tiny_model("llama"), REQUESTS
    )
    assert handle.info["batched_with"] == [1, 1, 1]
    with pytest.raises(ConfigError, match="v_batch"):
        create_editor("memit", {"v_batch": 0, "mom2_update_weight": 1.0})


def test_chunks_are_sorted_by_length_within_windows_taken_in_order():
    size = 2
    window = size * SORT_WINDOW
    lengths = [9] * (3 * window)
    lengths[-1] = 1  # the shortest request is the list's last
    lengths[3] = 5
    chunks = chunk_order(lengths, size)
    assert sorted(p for c in chunks for p in c) == list(range(len(lengths)))  # each position once
    assert all(len(c) == size for c in chunks)
    # a chunk never mixes windows, and the windows come in the list's order: the shortest request, the last,
    # leads the last window (a sort over the whole list would put it first); the shorter one in the first leads it
    assert all(c[0] // window == c[-1] // window for c in chunks)
    assert [c[0] // window for c in chunks] == sorted(c[0] // window for c in chunks)
    assert chunks[-SORT_WINDOW][0] == len(lengths) - 1 and chunks[0][0] == 3
    # one request per chunk: the list's order, unsorted
    assert chunk_order([3, 1, 2], 1) == [[0], [1], [2]]
