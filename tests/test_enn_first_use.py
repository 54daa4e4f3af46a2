"""Training on first use (editkit.trained.find, editkit.training.registry.first_use_training), with ENN, the
method that opts in: a tiny recipe for tiny-llama trains once into a temporary cache and is loaded, verified,
the second time; the opt-out, missing data, a crash before the parts are installed, two users at once, a
corrupted cached part and another model's cached parts; the packaged SmolLM2 recipe is train_enn.yaml's."""

import logging
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
import yaml

import editkit.trained
from conftest import REPO
from editkit.editors import create_editor
from editkit.edits import EditRequest
from editkit.errors import ValidationError
from editkit.models.tiny import tiny_model
from editkit.trained import FIRST_USE_ENV, user_folder
from editkit.training.enn import RECIPES, ENNTrainConfig, ENNTrainer
from learned_parts import first_use_recipe

REQUESTS = [EditRequest(prompt="Michael Jordan plays the sport of", target_new=" tennis")]
LLAMA = "tiny-llama-s0"


@pytest.fixture
def first_use(tmp_path, monkeypatch):
    """First-use training on, with a tiny recipe for tiny-llama over data under $EDITKIT_DATA; counts trainings."""
    settings = {"base_model": "tiny-llama", "steps": 4, "batch": 2, "lr": 1e-3, "inner_lr": 0.1, "checkpoint_every": 2}
    return first_use_recipe(tmp_path, monkeypatch, ENNTrainer, LLAMA, settings)


def _state(lm):
    return {n: p.detach().clone() for n, p in lm.model.named_parameters()}


def _unchanged(lm, before):
    return all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())


def test_first_use_trains_once_into_the_cache_and_the_second_use_loads_it(first_use, caplog):
    folder = user_folder("enn", LLAMA)
    lm = tiny_model("llama")
    before = _state(lm)
    with caplog.at_level(logging.WARNING):
        handle = create_editor("enn").apply(lm, REQUESTS)
    assert len(first_use) == 1 and first_use[0] != folder  # trained in a staging folder, then installed
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "training them once (4 steps, about 2 s at 0.5 s a step (a test)" in said and FIRST_USE_ENV in said
    assert (folder / "manifest.json").is_file() and not (folder / ".checkpoints").exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == [LLAMA, f"{LLAMA}.lock"]  # staging removed
    assert handle.info["start"] == "meta-trained" and handle.info["target_nll_after"] < handle.info["target_nll_before"]
    handle.rollback()
    assert _unchanged(lm, before)

    again = create_editor("enn")  # a new editor (a new process would be the same): loads, does not train
    second = again.apply(lm, REQUESTS)
    assert len(first_use) == 1
    assert all(torch.equal(ch.edited, handle.changes[n].edited) for n, ch in second.changes.items())
    assert again.provenance() == {f"enn:{LLAMA}": editkit.trained.part_fingerprint(folder / "enn")}


def test_the_opt_out_gives_the_old_error_and_trains_nothing(first_use, monkeypatch):
    monkeypatch.setenv(FIRST_USE_ENV, "0")
    lm = tiny_model("llama")
    before = _state(lm)
    with pytest.raises(ValidationError, match=r"no trained ENN parts in .*editkit train enn --config FILE") as err:
        create_editor("enn").apply(lm, REQUESTS)
    assert "\n" not in str(err.value) and first_use == [] and not user_folder("enn", LLAMA).exists()
    assert _unchanged(lm, before)


def test_missing_training_data_is_one_line_saying_what_to_pass(first_use, monkeypatch, tmp_path):
    monkeypatch.setenv("EDITKIT_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(ValidationError, match=r"needs cases\.jsonl under EDITKIT_DATA .*pass artifacts=FOLDER") as err:
        create_editor("enn").apply(tiny_model("llama"), REQUESTS)
    assert "\n" not in str(err.value) and first_use == []
    monkeypatch.delenv("EDITKIT_DATA")
    with pytest.raises(ValidationError, match="EDITKIT_DATA is not set"):
        create_editor("enn").apply(tiny_model("llama"), REQUESTS)


def test_a_crash_before_the_parts_are_installed_leaves_nothing_trusted_and_the_next_use_resumes(first_use, monkeypatch):
    folder = user_folder("enn", LLAMA)
    pack = editkit.trained.pack

    def crash(source, dest, **kwargs):
        pack(source, dest, **kwargs)
        raise KeyboardInterrupt  # killed between copying the parts and renaming them into place

    monkeypatch.setattr(editkit.trained, "pack", crash)
    with pytest.raises(KeyboardInterrupt):
        create_editor("enn").apply(tiny_model("llama"), REQUESTS)
    assert not folder.exists() and (folder.parent / f".{LLAMA}.training" / ".checkpoints").is_dir()
    monkeypatch.setattr(editkit.trained, "pack", pack)
    lm = tiny_model("llama")
    create_editor("enn").apply(lm, REQUESTS).rollback()
    assert len(first_use) == 2 and (folder / "manifest.json").is_file()
    assert not (folder.parent / f".{LLAMA}.training").exists() and not (folder.parent / f".{LLAMA}.new").exists()
    manifest = editkit.trained.read_manifest(folder)
    assert manifest["parts"]["enn"]["steps"] == 4  # the second run resumed the first's checkpoint at step 4


def test_two_users_at_once_train_once_and_both_get_the_parts(first_use):
    folders: list[Path] = []
    errors: list[BaseException] = []

    def use() -> None:
        try:
            folders.append(editkit.trained.find("enn", None, model=LLAMA))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and folders == [user_folder("enn", LLAMA)] * 2 and len(first_use) == 1


def test_a_corrupted_cached_part_is_refused_never_used(first_use):
    create_editor("enn").apply(tiny_model("llama"), REQUESTS).rollback()
    weights = user_folder("enn", LLAMA) / "enn" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    lm = tiny_model("llama")
    before = _state(lm)
    with pytest.raises(ValidationError, match=r"recorded hash.*remove .*next use trains them again") as err:
        create_editor("enn").apply(lm, REQUESTS)
    assert "\n" not in str(err.value) and len(first_use) == 1 and _unchanged(lm, before)
    shutil.rmtree(weights.parents[1])  # what the error says: the next use trains them again
    create_editor("enn").apply(lm, REQUESTS).rollback()
    assert len(first_use) == 2


def test_another_models_cached_parts_are_not_used(first_use):
    create_editor("enn").apply(tiny_model("llama"), REQUESTS).rollback()
    gpt2 = tiny_model("gpt2")
    before = _state(gpt2)
    with pytest.raises(ValidationError, match="no trained ENN parts"):  # no recipe for tiny-gpt2, llama's not taken
        create_editor("enn").apply(gpt2, REQUESTS)
    with pytest.raises(ValidationError, match="no trained NOSUCH parts"):  # no trainer of that name: nothing to train
        editkit.trained.find("nosuch", None, model=LLAMA)
    shutil.copytree(user_folder("enn", LLAMA), user_folder("enn", "tiny-gpt2-s0"))
    with pytest.raises(ValidationError, match="trained for tiny-llama-s0, not tiny-gpt2-s0") as err:
        create_editor("enn").apply(gpt2, REQUESTS)
    assert "\n" not in str(err.value) and len(first_use) == 1 and _unchanged(gpt2, before)


def test_the_packaged_smollm2_recipe_is_train_enn_yaml_on_training_splits():
    config = yaml.safe_load((REPO / "benchmarks" / "configs" / "train_enn.yaml").read_text())
    recipe = RECIPES["smollm2-135m"]
    assert [p.removeprefix("../shared/data/") for p in config.pop("data")] == list(recipe.data)
    assert all("train" in Path(p).name for p in recipe.data)
    config.pop("out")
    assert ENNTrainConfig.from_dict(dict(recipe.settings)) == ENNTrainConfig.from_dict(config)
    assert recipe.settings["steps"] <= 300


def test_the_cli_says_what_to_pass_when_the_data_is_missing_and_edits_after_first_use(
    first_use, monkeypatch, capsys, caplog
):
    from editkit.cli import main

    argv = ["edit", "--method", "enn", "--model", "tiny-llama", "--prompt", "The capital of Germany is"]
    argv += ["--target", " Bonn", "--max-new-tokens", "1"]
    data = Path(os.environ["EDITKIT_DATA"])
    monkeypatch.setenv("EDITKIT_DATA", str(data.parent / "nowhere"))
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("editkit: error:")
    assert "EDITKIT_DATA" in lines[0] and "artifacts=FOLDER" in lines[0] and first_use == []
    monkeypatch.setenv("EDITKIT_DATA", str(data))
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0 and len(first_use) == 1
    assert "training them once" in caplog.text and "training enn: 4/4" in capsys.readouterr().err
