import pytest
import torch

from editkit.editors import create_editor
from editkit.edits import EditRequest
from editkit.models.tiny import tiny_model

REQ = EditRequest(prompt="The Eiffel Tower is located in the city of", target_new=" Rome")


def test_ft_lowers_the_target_nll():
    lm = tiny_model("llama")
    before = lm.score([REQ.text], [REQ.target_new])[0].sum()
    handle = create_editor("ft", {"steps": 20, "lr": 1e-2}).apply(lm, [REQ])
    assert lm.score([REQ.text], [REQ.target_new])[0].sum() > before + 0.3
    assert handle.info["nll_last"] < handle.info["nll_first"]


@pytest.mark.parametrize(("norm", "radius"), [("linf", 1e-3), ("l2", 5e-2)])
def test_ftc_stays_inside_its_ball(norm, radius):
    lm = tiny_model("gpt2")
    handle = create_editor("ft-c", {"steps": 15, "lr": 1e-2, "norm": norm, "radius": radius}).apply(lm, [REQ])
    for ch in handle.changes.values():
        d = (ch.edited - ch.original).double()
        size = d.abs().max() if norm == "linf" else d.norm()
        assert size <= radius + 1e-6  # up to float32 rounding of w0 + radius - w0
        assert size >= radius * 0.5, "the constraint should bind with this learning rate"


def test_ft_edits_the_declared_layers_and_parts():
    lm = tiny_model("llama")
    handle = create_editor("ft", {"layers": [0, 2], "parts": ["mlp_in", "attn_out"], "steps": 2}).apply(lm, [REQ])
    assert set(handle.changes) == {
        lm.adapter.weight_name(layer, part) for layer in (0, 2) for part in ("mlp_in", "attn_out")
    }


def test_ft_batch_of_edits():
    lm = tiny_model("llama")
    reqs = [REQ, EditRequest(prompt="Michael Jordan plays the sport of", target_new=" tennis")]
    before = [s.sum() for s in lm.score([r.text for r in reqs], [r.target_new for r in reqs])]
    create_editor("ft", {"steps": 20, "lr": 1e-2}).apply(lm, reqs)
    after = [s.sum() for s in lm.score([r.text for r in reqs], [r.target_new for r in reqs])]
    assert all(a > b for a, b in zip(after, before, strict=True))
    assert torch.is_grad_enabled()
