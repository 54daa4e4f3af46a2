"""WeightEditor's seams: compute returns a WeightUpdate, and committed sees it once the edit is applied."""

import pytest
import torch

from editkit.editors import create_editor
from editkit.editors.base import Capabilities, WeightEditor, WeightUpdate
from editkit.edits import EditRequest
from editkit.errors import ValidationError
from editkit.models.tiny import tiny_model

REQUEST = EditRequest(prompt="The city of {}", subject="the Eiffel Tower", target_new=" Rome")


class _AddOne(WeightEditor):
    """Adds ``step`` to one weight and remembers a tensor; records what ``committed`` saw."""

    name = "add-one"
    capabilities = Capabilities(storage="weights")

    def __init__(self, step: float = 1.0) -> None:
        super().__init__()
        self.step = step
        self.seen: list[tuple[bool, torch.Tensor, WeightUpdate]] = []

    def target_parameters(self, lm, requests):
        return [lm.adapter.weight_name(0, "mlp_out")]

    def compute(self, lm, requests, params):
        ((name, p),) = params.items()
        return WeightUpdate({name: p.detach() + self.step}, {"step": self.step}, remember={name: torch.ones(2)})

    def committed(self, lm, handle, update):
        name = next(iter(update.values))
        weight = dict(lm.model.named_parameters())[name]
        self.seen.append((handle.applied, weight.detach().clone(), update))


def test_committed_sees_the_applied_edit_and_its_update():
    lm = tiny_model("llama")
    editor = _AddOne()
    handle = editor.apply(lm, [REQUEST])
    ((applied, weight, update),) = editor.seen
    (name,) = handle.changes
    assert applied and torch.equal(weight, handle.changes[name].edited)
    assert torch.equal(update.remember[name], torch.ones(2))
    assert handle.info["step"] == 1.0 and "seconds" in handle.info


def test_committed_is_not_called_when_the_edit_is_refused():
    lm = tiny_model("llama")
    editor = _AddOne(step=float("nan"))
    with pytest.raises(ValidationError, match="non-finite"):
        editor.apply(lm, [REQUEST])
    assert editor.seen == []


def test_memit_remembers_the_keys_each_layer_was_solved_for():
    lm = tiny_model("llama")
    settings = {"v_steps": 2, "n_context": 1, "context_length": 3, "layers": [1, 2], "mom2_update_weight": 1.0}
    seen = []
    editor = create_editor("memit", settings)
    editor.committed = lambda lm, handle, update: seen.append(update)
    other = EditRequest(prompt="The sport of {}", subject="Michael Jordan", target_new=" soccer")
    handle = editor.apply(lm, [REQUEST, other])
    (update,) = seen
    assert set(update.remember) == set(handle.changes)
    for keys in update.remember.values():
        assert keys.shape == (lm.adapter.module(lm.model, 1, "mlp_out").in_features, 2)


def _preferred(lm, prompt):
    """An answer the tiny model prefers to " Rome" for ``prompt``: the old answer an edit has to beat."""
    candidates = [" Paris", " Berlin", " London", " the", " of", " and", " city"]
    rome, *others = (float(s.mean()) for s in lm.score([prompt] * 8, [" Rome", *candidates]))
    return next(c for c, score in zip(candidates, others, strict=True) if score > rome)


def test_an_edit_that_did_not_take_is_flagged_and_warned(caplog):
    """An apply whose new target is still less likely than the old one says so (info and a logged warning)
    instead of returning as if the edit had worked."""
    lm = tiny_model("llama")
    request = EditRequest(prompt=REQUEST.prompt, subject=REQUEST.subject, target_new=" Rome")
    request = EditRequest(
        prompt=request.prompt, subject=request.subject, target_new=" Rome", target_true=_preferred(lm, request.text)
    )
    with caplog.at_level("WARNING", logger="editkit.editors.base"):
        handle = _AddOne(step=0.0).apply(lm, [REQUEST, request])
    assert handle.info["not_taken"] == [1]  # the request without an old target is not judged
    assert "1 of 2 edit(s) did not take" in caplog.text


def test_an_edit_that_took_is_not_flagged(caplog):
    lm = tiny_model("llama")
    request = EditRequest(
        prompt=REQUEST.prompt, subject=REQUEST.subject, target_new=" Rome", target_true=_preferred(lm, REQUEST.text)
    )
    with caplog.at_level("WARNING", logger="editkit.editors.base"):
        handle = create_editor("ft", {"steps": 40, "lr": 5e-2}).apply(lm, [request])
    assert "not_taken" not in handle.info and "did not take" not in caplog.text
