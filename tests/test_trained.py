"""Trained artifacts (editkit.trained): the manifest records each part's files, verification refuses a missing,
corrupted, truncated or added file naming it, and a part trained for another base model naming both; the
packaged SERAC parts verify and keep the fingerprints committed results record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import write_tiny_cases
from editkit.data import load_cases
from editkit.errors import ValidationError
from editkit.files import file_sha256
from editkit.trained import (
    PACKAGED,
    find,
    load_tensors,
    pack,
    part_fingerprint,
    read_manifest,
    record_part,
    save_part,
    start_manifest,
    verify,
)


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    """An artifact with one part of two files, written with the helpers."""
    folder = tmp_path / "art"
    datasets = [load_cases(write_tiny_cases(tmp_path / "cases.jsonl"))]
    manifest = start_manifest(folder, {"seed": 3, "out": str(folder)}, datasets, "tiny-llama-s0")
    save_part(folder / "part", {"part": "part", "steps": 2}, tensors={"w": torch.arange(6.0).reshape(2, 3)})
    record_part(folder, manifest, "part", {"part": "part", "steps": 2})
    return folder


def test_the_manifest_records_config_data_code_version_base_model_and_each_files_hash(artifact: Path):
    manifest = read_manifest(artifact)
    assert manifest["config"]["seed"] == 3 and manifest["base_model"] == "tiny-llama-s0"
    assert manifest["data"][0]["sha256"] == file_sha256(artifact.parent / "cases.jsonl")
    assert manifest["code_version"]
    part = manifest["parts"]["part"]
    assert part["files"] == {
        "part.json": file_sha256(artifact / "part" / "part.json"),
        "weights.safetensors": file_sha256(artifact / "part" / "weights.safetensors"),
    }
    assert part["fingerprint"] == part_fingerprint(artifact / "part")
    assert verify(artifact, ["part"], base_model="tiny-llama-s0") == manifest
    assert torch.equal(load_tensors(artifact / "part")["w"], torch.arange(6.0).reshape(2, 3))
    # a second run into the folder keeps the parts recorded before
    again = start_manifest(artifact, {"seed": 4}, [], "tiny-llama-s0")
    assert again["parts"] == manifest["parts"] and again["config"] == {"seed": 4}


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "add"])
def test_a_damaged_part_is_refused_with_one_line_naming_the_file(artifact: Path, damage: str):
    weights = artifact / "part" / "weights.safetensors"
    data = weights.read_bytes()
    if damage == "flip":
        weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        weights.unlink()
    else:
        weights = artifact / "part" / "stray.bin"
        weights.write_bytes(b"x")
    with pytest.raises(ValidationError) as err:
        verify(artifact, ["part"])
    message = str(err.value)
    assert str(weights) in message and "\n" not in message


def test_a_part_trained_for_another_base_model_is_refused_naming_both(artifact: Path):
    with pytest.raises(ValidationError, match="trained for tiny-llama-s0, not tiny-gpt2-s0") as err:
        verify(artifact, ["part"], base_model="tiny-gpt2-s0")
    assert "\n" not in str(err.value)


def test_an_unrecorded_part_or_a_folder_without_manifest_is_refused(artifact: Path, tmp_path: Path):
    with pytest.raises(ValidationError, match="records no trained part 'other'"):
        verify(artifact, ["other"])
    with pytest.raises(ValidationError, match=r"no trained TOY parts in .*manifest\.json missing.*editkit train toy"):
        find("toy", str(tmp_path / "empty"))
    assert find("toy", str(artifact)) == artifact


def test_the_packaged_serac_parts_verify_and_keep_the_fingerprints_results_record():
    folder = find("serac", None)
    assert folder == PACKAGED / "serac"
    manifest = verify(folder, ["scope-embed", "scope-cross", "counterfactual"])
    # committed results (benchmarks/results) name the parts they used by these
    assert part_fingerprint(folder / "scope-embed") == "52b43ea3ec238690"
    assert part_fingerprint(folder / "counterfactual") == "d586e7d5a34cd410"
    assert {p: m["fingerprint"] for p, m in manifest["parts"].items()} == {
        p: part_fingerprint(folder / p) for p in manifest["parts"]
    }


def test_the_packaged_deferral_judge_is_a_counterfactual_model_alone():
    folder = find("serac", "serac-keep")
    assert folder == PACKAGED / "serac-keep"
    manifest = verify(folder, ["counterfactual"])
    assert set(manifest["parts"]) == {"counterfactual"}  # a judge only: the classifiers stay the default ones
    assert manifest["config"]["cf_keep_share"] == 0.5 and manifest["config"]["keep_data_first"] is True
    assert part_fingerprint(folder / "counterfactual") == "afafb6d534d651f0"  # what results/scale31 name (v3)
    cut = manifest["parts"]["counterfactual"]["defer"]  # packed with its calibration on unseen rephrasings
    assert cut["defer_contrast"] is True and cut["keep_kind"] == "rephrase" and 2.9 < cut["defer_kl"] < 3.0


def test_serac_refuses_a_corrupted_part_before_loading_it(tmp_path: Path):
    from editkit.editors import create_editor
    from editkit.models.tiny import tiny_model

    copy = tmp_path / "parts"
    shutil.copytree(PACKAGED / "serac", copy)
    adapter = copy / "counterfactual" / "adapter" / "adapter_config.json"
    adapter.write_text(json.dumps({**json.loads(adapter.read_text()), "r": 4}))
    editor = create_editor("serac", {"artifacts": str(copy), "scope": "embed-untrained"})
    with pytest.raises(ValidationError, match=r"adapter_config\.json does not match its recorded hash"):
        editor.routed(tiny_model("llama"))


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"parts": [1]}',
        b'{"parts": {"part": {"files": ["part.json"]}}}',
        b'{"parts": {"part": 3}}',
    ],
)
def test_an_unreadable_manifest_is_one_line_naming_it(artifact: Path, content: bytes):
    (artifact / "manifest.json").write_bytes(content)
    with pytest.raises(ValidationError, match="manifest") as err:
        verify(artifact, [])
    assert str(artifact / "manifest.json") in str(err.value) and "\n" not in str(err.value)


def test_pack_copies_verified_parts_without_checkpoints_and_records_them_anew(artifact: Path, tmp_path: Path):
    (artifact / ".checkpoints").mkdir()
    (artifact / ".checkpoints" / "part.pt").write_bytes(b"resume state")
    full = pack(artifact, tmp_path / "full")
    assert not (tmp_path / "full" / ".checkpoints").exists()
    assert full["parts"]["part"]["fingerprint"] == read_manifest(artifact)["parts"]["part"]["fingerprint"]
    half = pack(artifact, tmp_path / "half", half=True)
    meta = half["parts"]["part"]
    assert meta["dtype"] == "float16" and meta["packed_from"] == part_fingerprint(artifact / "part")
    assert meta["fingerprint"] != meta["packed_from"]
    verify(tmp_path / "half", ["part"], base_model="tiny-llama-s0")
    w = load_tensors(tmp_path / "half" / "part")["w"]
    assert w.dtype == torch.float16 and torch.equal(w.float(), torch.arange(6.0).reshape(2, 3))
    with pytest.raises(ValidationError, match="already holds a trained artifact"):
        pack(artifact, tmp_path / "half")
    (artifact / "part" / "weights.safetensors").write_bytes(b"damaged")
    with pytest.raises(ValidationError, match="does not match its recorded hash"):
        pack(artifact, tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_pack_takes_a_part_from_another_artifact(artifact: Path, tmp_path: Path):
    combined = pack(artifact, tmp_path / "combined", parts_from={"counterfactual": PACKAGED / "serac"})
    assert set(combined["parts"]) == {"part", "counterfactual"}
    shipped = read_manifest(PACKAGED / "serac")["parts"]["counterfactual"]
    assert combined["parts"]["counterfactual"]["fingerprint"] == shipped["fingerprint"]
    assert combined["parts"]["counterfactual"]["base_model"] == "smollm2-135m"
    verify(tmp_path / "combined", ["part", "counterfactual"])
    with pytest.raises(ValidationError, match="records no trained part 'scope-x'"):
        pack(artifact, tmp_path / "other", parts_from={"scope-x": PACKAGED / "serac"})


def test_find_puts_the_base_models_name_in_place_of_the_model_placeholder(artifact: Path):
    pattern = str(artifact.parent / "{model}")
    (artifact.parent / "tiny-llama-s0").symlink_to(artifact)
    assert find("mend", pattern, model="tiny-llama-s0") == artifact.parent / "tiny-llama-s0"
    with pytest.raises(ValidationError, match=r"no trained MEND parts in .*tiny-gpt2-s0"):
        find("mend", pattern, model="tiny-gpt2-s0")


def test_a_bare_name_that_is_no_folder_here_names_a_packaged_set(artifact: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find("serac", "serac-hard") == PACKAGED / "serac-hard"
    verify(PACKAGED / "serac-hard", ["scope-embed", "counterfactual"])  # shipped whole
    with pytest.raises(ValidationError, match="no trained SERAC parts in nosuch"):
        find("serac", "nosuch")
    (tmp_path / "serac-hard").symlink_to(artifact)  # a folder of that name here wins
    assert find("serac", "serac-hard") == Path("serac-hard")


def test_int8_rows_are_within_half_a_step_and_small_tensors_stay_float16():
    from editkit.trained import INT8_SCALE, dequantize_int8, quantize_int8

    torch.manual_seed(0)
    big = torch.randn(64, 96) * torch.linspace(0.01, 3.0, 64)[:, None]  # rows of very different scales
    big[5] = 0.0
    small, ids = torch.randn(96), torch.arange(4)
    stored = quantize_int8({"w": big, "b": small, "ids": ids})
    assert stored["w"].dtype == torch.int8 and stored["b"].dtype == torch.float16 and stored["ids"].dtype == ids.dtype
    step = big.abs().amax(1) / 127
    torch.testing.assert_close(stored["w" + INT8_SCALE], step)
    back = dequantize_int8(stored)
    assert set(back) == {"w", "b", "ids"} and back["w"].dtype == torch.float32
    assert bool(((back["w"] - big).abs() <= step[:, None] / 2 + 1e-7).all())
    assert torch.equal(back["w"][5], torch.zeros(96)) and torch.equal(back["ids"], ids)
    # a row's largest value is exact up to float rounding: it is 127 steps
    torch.testing.assert_close(back["w"].abs().amax(1), big.abs().amax(1))
    with pytest.raises(ValidationError, match="reserves"):
        quantize_int8({"w" + INT8_SCALE: big})


def test_an_int8_pack_loads_back_as_float32_near_the_source(artifact: Path, tmp_path: Path):
    big = {"w": torch.randn(64, 128), "b": torch.randn(64)}
    save_part(artifact / "big", {"part": "big"}, tensors=big)
    record_part(artifact, read_manifest(artifact), "big", {"part": "big"})
    packed = pack(artifact, tmp_path / "int8", int8=True)
    assert (tmp_path / "int8" / "big" / "weights.safetensors").stat().st_size < 0.3 * (
        artifact / "big" / "weights.safetensors"
    ).stat().st_size
    assert packed["parts"]["big"]["dtype"] == "int8"
    verify(tmp_path / "int8", ["part", "big"])
    back = load_tensors(tmp_path / "int8" / "big")
    assert back.keys() == big.keys() and back["w"].dtype == torch.float32
    for k, v in big.items():
        assert back[k].shape == v.shape and torch.allclose(back[k].float(), v, atol=float(v.abs().max()) / 127)
    with pytest.raises(ValidationError, match="not both"):
        pack(artifact, tmp_path / "both", half=True, int8=True)
