"""benchmarks/gpu_check.py on the CPU with a tiny model: every weight editor runs, rolls back bit for bit, and
the JSON says so; a model's shape is saved without its weights."""

import json

from conftest import benchmark_script


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
