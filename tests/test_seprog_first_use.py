"""SEPROG trained on first use: with no parts for the model, the editor trains its recipe once into the user cache,
loads the cached parts the second time, and records their fingerprint per base model; the packaged SmolLM2 recipe is
train_seprog_reads.yaml's. (The machinery itself, crashes and locks included, is tested with ENN in
test_enn_first_use.py.)"""

from pathlib import Path

import pytest
import yaml

from conftest import REPO
from editkit.editors import create_editor
from editkit.edits import EditRequest
from editkit.models.tiny import tiny_model
from editkit.trained import part_fingerprint, user_folder
from editkit.training.seprog import PART, RECIPES, SEPROGTrainConfig, SEPROGTrainer
from learned_parts import SEPROG_TINY, first_use_recipe

EDITS = [EditRequest(prompt="{} plays the sport of", subject="Michael Jordan", target_new=" tennis")]
LLAMA = "tiny-llama-s0"


@pytest.fixture
def first_use(tmp_path, monkeypatch):
    """First-use training on, with a tiny SEPROG recipe for tiny-llama; counts trainings."""
    return first_use_recipe(tmp_path, monkeypatch, SEPROGTrainer, LLAMA, {**SEPROG_TINY, "base_model": "tiny-llama"})


def test_seprog_trains_its_recipe_once_and_names_the_parts_it_used(first_use):
    lm = tiny_model("llama")
    editor = create_editor("seprog", {"encoder": "tiny-bert", "threshold": 0.0})
    assert editor.provenance() == {}  # nothing loaded yet
    editor.apply(lm, EDITS)
    folder = user_folder("seprog", LLAMA)
    assert len(first_use) == 1 and (folder / "manifest.json").is_file()
    assert editor.provenance() == {f"{PART}:{LLAMA}": part_fingerprint(folder / PART)}
    again = create_editor("seprog", {"encoder": "tiny-bert", "threshold": 0.0})
    again.apply(tiny_model("llama"), EDITS)
    assert len(first_use) == 1 and again.provenance() == editor.provenance()


def test_the_packaged_smollm2_recipe_is_train_seprog_reads_yaml_on_training_splits():
    config = yaml.safe_load((REPO / "benchmarks" / "configs" / "train_seprog_reads.yaml").read_text())
    recipe = RECIPES["smollm2-135m"]
    assert [p.removeprefix("../shared/data/") for p in config.pop("data")] == list(recipe.data)
    assert all("train" in Path(p).name for p in recipe.data)
    for key in ("out", "threads"):  # where it goes and how many threads are the user's, not the recipe's
        config.pop(key)
    assert SEPROGTrainConfig.from_dict(dict(recipe.settings)) == SEPROGTrainConfig.from_dict(config)
