"""benchmarks/gpu_check.py on the CPU with a tiny model: every weight editor runs, rolls back bit for bit, and
the JSON says so; a model's shape is saved without its weights."""

import json

import pytest

from conftest import benchmark_script
from editkit.models.tiny import tiny_model


def test_every_weight_editor_runs_and_rolls_back_exactly(tmp_path):
    gpu_check = benchmark_script("gpu_check")
    out = tmp_path / "check.json"
    args = ["--shape", "tiny:llama", "--device", "cpu", "--steps", "2", "--edits", "2", "--batch", "3"]
    result = gpu_check.main([*args, "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert set(result["methods"]) == set(gpu_check.METHODS)
    for method, row in result["methods"].items():
        assert row["rollback_exact"] is True, method
        assert len(row["seconds_per_edit"]) == 2 and row["median_seconds_per_step"] > 0
        assert ("batch" in row) == (method in gpu_check.BATCH)
    assert result["methods"]["memit"]["batch"]["edits"] == 3


def test_bfloat16_run(tmp_path):
    gpu_check = benchmark_script("gpu_check")
    args = ["--shape", "tiny:gpt2", "--dtype", "bfloat16", "--methods", "rome,ft", "--steps", "2", "--edits", "1"]
    args += ["--step-dtype", "bfloat16"]
    result = gpu_check.main([*args, "--out", str(tmp_path / "c.json")])
    assert result["dtype"] == "bfloat16" and all(r["rollback_exact"] for r in result["methods"].values())


def test_a_shape_is_saved_without_weights(tmp_path, monkeypatch):
    gpu_check = benchmark_script("gpu_check")
    src = tmp_path / "cache" / "smollm2-135m"
    src.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (src / name).write_text("{}")
    monkeypatch.setattr(gpu_check.zoo, "model_dir", lambda name: tmp_path / "cache" / name)
    gpu_check.main(["--save-shape", "smollm2-135m", str(tmp_path / "shape")])
    assert sorted(p.name for p in (tmp_path / "shape").iterdir()) == ["config.json", "tokenizer.json"]


def test_step_overhead_on_a_narrowed_shape(tmp_path):
    """A tiny model's shape saved without weights, narrowed to 4 numbers per head: the script counts operators
    per step from the difference of two step counts, and splits a step into forward, backward and the rest."""
    step_overhead = benchmark_script("step_overhead")
    lm = tiny_model("llama")
    shape = tmp_path / "shape"
    lm.model.config.save_pretrained(shape)
    lm.tokenizer.save_pretrained(shape)
    out = tmp_path / "overhead.json"
    args = ["--shape", str(shape), "--head-dim", "4", "--steps", "3", "--steps-low", "1", "--edits", "1"]
    args += ["--methods", "rome"]
    result = step_overhead.main([*args, "--device", "cpu", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    narrow = result["head_dim_4"]
    heads = lm.model.config.num_attention_heads
    assert narrow["hidden_size"] == 4 * heads and result["full"]["hidden_size"] == lm.model.config.hidden_size
    assert list(narrow["methods"]) == ["rome"]
    for row in (narrow, result["full"]):
        for got in row["methods"].values():
            assert got["operators_per_step"] > 10
            parts = got["seconds_per_step_by_part"]
            assert parts["forward"] > 0 and parts["backward"] > 0 and parts["rest_of_loop"] > 0


def test_steps_low_must_be_below_steps(tmp_path):
    step_overhead = benchmark_script("step_overhead")
    with pytest.raises(SystemExit):
        step_overhead.main(["--shape", str(tmp_path), "--steps", "5", "--steps-low", "5", "--out", str(tmp_path / "o")])


def test_a_folder_without_a_shape_is_named(tmp_path):
    step_overhead = benchmark_script("step_overhead")
    with pytest.raises(SystemExit, match=r"holds no config\.json"):
        step_overhead.main(["--shape", str(tmp_path / "missing"), "--out", str(tmp_path / "o.json")])
