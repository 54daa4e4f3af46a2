"""Weight editors on bfloat16 and float16 models: the optimisation, statistics and update in float32, the weight
rounded once when the edit is applied. On a tiny model cast to each dtype, every weight editor's change is
finite, close to its change on the float32 model, and rolled back bit for bit."""

import pytest
import torch

from editkit.editors import create_editor
from editkit.edits import EditRequest
from editkit.models.lm import LanguageModel
from editkit.models.tiny import tiny_model

REQUESTS = [
    EditRequest(prompt="The city of {} is", subject="the Eiffel Tower", target_new=" Rome", target_true=" Paris"),
    EditRequest(prompt="{} plays the sport of", subject="Michael Jordan", target_new=" soccer"),
]
LOCATE = {"v_steps": 10, "n_context": 2, "context_length": 4}
METHODS = {
    "rome": LOCATE,
    "memit": {**LOCATE, "layers": [1, 2], "mom2_update_weight": 1e-3},
    "alphaedit": {**LOCATE, "layers": [1, 2], "mom2_n_tokens": 2000, "nullspace_threshold": 0.5, "l2": 1e-3},
    "ft": {"steps": 10, "lr": 1e-2},
    "ft-c": {"steps": 10, "lr": 1e-2, "radius": 2e-3},
}


def _edit(method: str, dtype: torch.dtype, corpus: str) -> tuple[dict[str, torch.Tensor], bool]:
    base = tiny_model("llama")
    lm = LanguageModel(base.model.to(dtype), base.tokenizer, name=base.name)
    settings = {**METHODS[method], **({"corpus": corpus} if method == "alphaedit" else {})}
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    handle = create_editor(method, settings).apply(lm, REQUESTS[:1] if method == "rome" else REQUESTS)
    change = {n: c.edited.float() - c.original.float() for n, c in handle.changes.items()}
    assert all(c.edited.dtype == dtype for c in handle.changes.values())
    handle.rollback()
    exact = all(torch.equal(before[n], p) for n, p in lm.model.named_parameters())
    return change, exact


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_low_precision_edit_is_the_float32_edit_rounded(method, dtype, tiny_corpus):
    reference, _ = _edit(method, torch.float32, str(tiny_corpus))
    change, exact = _edit(method, dtype, str(tiny_corpus))
    assert exact
    for name, ref in reference.items():
        got = change[name]
        assert torch.isfinite(got).all()
        cosine = float((got * ref).sum() / (got.norm() * ref.norm()))
        assert cosine > 0.98, f"{method} {dtype}: cosine {cosine:.4f} to the float32 change of {name}"
        assert abs(float(got.norm() / ref.norm()) - 1) < 0.05


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bfloat16_steps_find_nearly_the_float32_residual(arch):
    """``step_dtype=bfloat16`` runs the optimisation's passes under autocast; keys and the site's output are read
    in float32, and the residual found is close to the float32 one."""
    found = {}
    for step_dtype in ("float32", "bfloat16"):
        lm = tiny_model(arch)
        editor = create_editor("rome", {**LOCATE, "step_dtype": step_dtype, "v_weight_decay": 0.0})
        found[step_dtype] = editor.target_residual(lm, REQUESTS[0], 1)
    a, b = found["float32"], found["bfloat16"]
    assert b.info["step_dtype"] == "bfloat16"
    torch.testing.assert_close(a.k_star, b.k_star)  # read without autocast: identical
    cosine = float(a.delta @ b.delta / (a.delta.norm() * b.delta.norm()))
    assert cosine > 0.97 and not torch.equal(a.delta, b.delta)


def test_the_bfloat16_copy_follows_the_model_it_copies():
    lm = tiny_model("llama")
    editor = create_editor("rome", {**LOCATE, "step_dtype": "bfloat16"})
    low = editor.bfloat16_model(lm)
    assert low.dtype == torch.bfloat16 and low.prefix == lm.prefix and low.default_rome_layer == lm.default_rome_layer
    name = lm.adapter.weight_name(1, "mlp_out")
    with torch.no_grad():
        dict(lm.model.named_parameters())[name].add_(1.0)  # as an edit (or a rollback) would
    again = editor.bfloat16_model(lm)
    assert again is low  # kept, and brought up to date
    torch.testing.assert_close(
        dict(again.model.named_parameters())[name], dict(lm.model.named_parameters())[name].to(torch.bfloat16)
    )
