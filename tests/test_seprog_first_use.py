"""SEPROG trained on first use (for a model with a recipe and no packaged parts; SmolLM2-135M's parts ship): with
no parts for the model, the editor trains its recipe once into the user cache, loads the cached parts the second
time, and records their fingerprint per base model. (The machinery itself, crashes and locks included, is tested
with ENN in test_enn_first_use.py.)"""

import pytest

from editkit.editors import create_editor
from editkit.edits import EditRequest
from editkit.models.tiny import tiny_model
from editkit.trained import part_fingerprint, user_folder
from editkit.training.seprog import PART, SEPROGTrainer
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
