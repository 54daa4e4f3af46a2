"""MEND (editkit.editors.mend, editkit.training.mend): the gradient's rank-one factors against autograd, the
untrained editor as one gradient step, batch edits as sums, a tiny training run (seeded, resumed bit for bit),
and bad inputs refused in one line with the model untouched."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_tiny_cases
from editkit.editors import create_editor
from editkit.editors.mend import MENDParts, gradient_factors, site_names
from editkit.edits import EditRequest
from editkit.errors import ConfigError, ValidationError
from editkit.models.tiny import tiny_model
from editkit.trained import verify
from editkit.training.mend import MENDTrainConfig, sites_of, spec_of
from editkit.training.registry import create_trainer
from learned_parts import MEND_TINY, mend_parts  # noqa: F401

REQUESTS = [
    EditRequest(prompt="The city of {}", subject="the Eiffel Tower", target_new=" Rome"),
    EditRequest(prompt="Michael Jordan plays the sport of", target_new=" tennis and cricket"),
]
SITES = [(2, "mlp_in"), (2, "mlp_out"), (3, "mlp_out")]


def _snapshot(lm):
    return {n: p.detach().clone() for n, p in lm.model.named_parameters()}


def _unchanged(lm, before) -> bool:
    return all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())


def _autograd_gradients(lm, names, batch):
    """The plain way: the same loss, backward, the weights' .grad (in their storage layout)."""
    weights = {n: lm.model.get_parameter(n) for n in names}
    for w in weights.values():
        w.grad = None
    index, valid = batch.positions()
    with torch.enable_grad():
        loss = -(batch.token_logprobs(lm.logits_at(batch.inputs, index)).sum(1) / valid.sum(1)).sum()
        loss.backward()
    grads = {n: w.grad.clone() for n, w in weights.items()}
    for w in weights.values():
        w.grad = None
    return grads


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
def test_rank_one_factors_sum_to_the_weight_gradient_and_an_untrained_editor_is_one_gradient_step(arch):
    lm = tiny_model(arch)
    names = site_names(lm, SITES)
    batch = lm.teacher_forced([r.text for r in REQUESTS], [r.target_new for r in REQUESTS])  # padded rows
    before = _snapshot(lm)
    factors, _ = gradient_factors(lm, SITES, batch)
    assert _unchanged(lm, before) and all(p.grad is None for p in lm.model.parameters())
    grads = _autograd_gradients(lm, names, batch)
    for n in names:
        u, delta = factors[n]
        rank_one_sum = sum(torch.outer(delta[t], u[t]) for t in range(len(u)))
        expected = lm.adapter.as_out_in(grads[n])
        assert expected.abs().max() > 0
        torch.testing.assert_close(rank_one_sum, expected, rtol=1e-4, atol=1e-6)
    spec = spec_of(lm, MENDTrainConfig(rank=4, blocks=2, alpha_init=0.03), SITES)
    parts = MENDParts(spec)
    parts.set_normalisation([factors], names)  # a real normalisation: the identity must survive it
    assert any(net.std.ne(1).any() for net in parts.nets.values())
    changes = parts.updates(factors, names)
    for n in names:
        torch.testing.assert_close(changes[n], -0.03 * lm.adapter.as_out_in(grads[n]), rtol=1e-4, atol=1e-7)


def test_a_batch_edit_is_the_sum_of_its_single_edits(mend_parts):  # noqa: F811
    editor = create_editor("mend", {"artifacts": mend_parts})
    single = []
    for r in REQUESTS:
        lm = tiny_model("llama")
        handle = editor.apply(lm, [r])
        single.append({n: c.edited - c.original for n, c in handle.changes.items()})
        assert handle.info["nll_after"] < handle.info["nll_before"]
    lm = tiny_model("llama")
    assert editor.provenance().keys() == {"editor:tiny-llama-s0"}  # the parts each result will name
    handle = editor.apply(lm, REQUESTS)
    assert len(handle.changes) == 4  # mlp_in and mlp_out of the top two layers
    for n, c in handle.changes.items():
        torch.testing.assert_close(c.edited - c.original, single[0][n] + single[1][n], rtol=1e-4, atol=1e-6)


def _train(tmp_path: Path, out: str, **settings):
    data = write_tiny_cases(tmp_path / "cases.jsonl")
    config = {**MEND_TINY, "data": [str(data)], "out": str(tmp_path / out), "base_model": "tiny-gpt2"}
    return create_trainer("mend", {**config, "checkpoint_every": 2, **settings}).train(progress=False)


def test_a_resumed_training_run_ends_where_an_uninterrupted_one_does(tmp_path):
    whole = _train(tmp_path, "whole", steps=5)
    _train(tmp_path, "parts", steps=3)
    resumed = _train(tmp_path, "parts", steps=5)
    assert resumed["parts"]["editor"]["steps"] == 5
    assert resumed["parts"]["editor"]["loss_last20_mean"] == whole["parts"]["editor"]["loss_last20_mean"]
    tensors = [load_file(str(tmp_path / f / "editor" / "weights.safetensors")) for f in ("whole", "parts")]
    assert tensors[0].keys() == tensors[1].keys()
    assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])
    trained = MENDParts(whole["parts"]["editor"]["spec"])
    trained.load_state_dict(tensors[0])
    assert any(up.weight.abs().max() > 0 for net in trained.nets.values() for up in net.up)  # it learned
    assert not torch.allclose(trained.log_alpha.exp(), torch.full_like(trained.log_alpha, MEND_TINY["alpha_init"]))
    verify(tmp_path / "parts", ["editor"], base_model="tiny-gpt2-s0")
    other_seed = _train(tmp_path, "seed1", steps=5, seed=1)
    assert other_seed["parts"]["editor"]["loss_last20_mean"] != whole["parts"]["editor"]["loss_last20_mean"]
    with pytest.raises(ValidationError, match=r"editor\.pt was written with other settings or data"):
        _train(tmp_path, "parts", steps=6, c_loc=0.5)


def test_parts_trained_for_chosen_layers_edit_only_those_layers(tmp_path):
    manifest = _train(tmp_path, "mid", steps=2, layers=[1, 0], parts=["mlp_out"])
    assert manifest["parts"]["editor"]["spec"]["sites"] == [[0, "mlp_out"], [1, "mlp_out"]]
    lm = tiny_model("gpt2")
    before = _snapshot(lm)
    create_editor("mend", {"artifacts": str(tmp_path / "mid")}).apply(lm, REQUESTS[:1])
    changed = {n for n, p in lm.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(site_names(lm, [(0, "mlp_out"), (1, "mlp_out")]))


def test_training_settings_and_data_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="parts must be among"):
        MENDTrainConfig.from_dict({"parts": ["attn_out"]})
    with pytest.raises(ConfigError, match="has 4 layers"):
        sites_of(tiny_model("llama"), MENDTrainConfig(top_layers=5))
    for layers in ([4], [], [1, 1]):
        with pytest.raises(ConfigError, match="layers must be distinct layers of tiny-llama-s0"):
            sites_of(tiny_model("llama"), MENDTrainConfig(layers=layers))
    only_edits = tmp_path / "edits.jsonl"
    only_edits.write_text('{"request": {"prompt": "The capital of Germany is", "target_new": " Bonn"}}\n')
    with pytest.raises(ValidationError, match="no training case has a locality probe"):
        create_trainer("mend", {"data": [str(only_edits)], "out": str(tmp_path / "x")}).train(progress=False)


def test_parts_for_another_model_or_corrupted_or_missing_are_refused_in_one_line(mend_parts, tmp_path):  # noqa: F811
    lm = tiny_model("gpt2")
    before = _snapshot(lm)
    llama_parts = mend_parts.replace("{model}", "tiny-llama-s0")
    with pytest.raises(ValidationError, match="trained for tiny-llama-s0, not tiny-gpt2-s0") as err:
        create_editor("mend", {"artifacts": llama_parts}).apply(lm, REQUESTS[:1])
    assert "\n" not in str(err.value)
    with pytest.raises(ValidationError, match=r"editkit train mend --config FILE") as err:
        create_editor("mend", {"artifacts": str(tmp_path / "nothing")}).apply(lm, REQUESTS[:1])
    assert "\n" not in str(err.value)
    corrupted = tmp_path / "corrupted"
    shutil.copytree(mend_parts.replace("{model}", "tiny-gpt2-s0"), corrupted)
    weights = corrupted / "editor" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValidationError, match="does not match its recorded hash") as err:
        create_editor("mend", {"artifacts": str(corrupted)}).apply(lm, REQUESTS[:1])
    assert "\n" not in str(err.value)
    assert _unchanged(lm, before)
    create_editor("mend", {"artifacts": mend_parts}).apply(lm, REQUESTS[:1])  # the right parts edit it
    assert not _unchanged(lm, before)


def test_benchmark_training_config_parses():
    import yaml

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "train_mend.yaml"
    config = MENDTrainConfig.from_dict(yaml.safe_load(path.read_text()))
    assert config.base_model == "smollm2-135m" and len(config.data) == 2
    assert all("train" in Path(p).name for p in config.data)
