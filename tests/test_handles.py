"""Saved edits: EditHandle.load reads handle.json and hands the folder to the loader registered for its type."""

import json

import pytest
import torch

from editkit.editors import create_editor, handle
from editkit.editors.handle import EditHandle, handle_types, register_handle_loader
from editkit.edits import EditRequest
from editkit.errors import ValidationError
from editkit.models.tiny import tiny_model

REQUEST = EditRequest(prompt="The city of {}", subject="the Eiffel Tower", target_new=" Rome")
FT = {"steps": 3, "lr": 1e-2}


def _saved(tmp_path):
    """A weight edit saved on a tiny model, and the parameters it left."""
    lm = tiny_model("llama")
    h = create_editor("ft", FT).apply(lm, [REQUEST])
    h.save(tmp_path / "edit")
    return tmp_path / "edit", {n: p.detach().clone() for n, p in lm.model.named_parameters()}


def _rewrite(folder, **changes):
    """Rewrite handle.json as a file written without a digest (by an older editkit, or by hand)."""
    path = folder / "handle.json"
    meta = json.loads(path.read_text())
    meta.pop("sha256", None)
    for k, v in changes.items():
        if v is None:
            del meta[k]
        else:
            meta[k] = v
    path.write_text(json.dumps(meta))


def _assert_holds(lm, params):
    for n, p in lm.model.named_parameters():
        assert torch.equal(p, params[n]), n


def test_built_in_handle_types_are_registered():
    assert handle_types() == ["memory", "weights"]


def test_a_weight_edit_says_its_type_and_one_saved_without_a_type_loads_as_weights(tmp_path):
    folder, edited = _saved(tmp_path)
    assert json.loads((folder / "handle.json").read_text())["kind"] == "weights"
    _assert_holds(EditHandle.load(folder, tiny_model("llama")).model, edited)
    _rewrite(folder, kind=None)  # what editkit wrote before handle types had loaders
    loaded = EditHandle.load(folder, tiny_model("llama"))
    _assert_holds(loaded.model, edited)
    loaded.rollback()
    _assert_holds(loaded.model, {n: p.detach() for n, p in tiny_model("llama").model.named_parameters()})


def test_an_unknown_handle_type_or_format_is_a_one_line_error(tmp_path):
    folder, _ = _saved(tmp_path)
    _rewrite(folder, kind="hologram")
    with pytest.raises(ValidationError, match="unknown handle type 'hologram'; known: memory, weights") as err:
        EditHandle.load(folder, tiny_model("llama"))
    assert "\n" not in str(err.value)
    _rewrite(folder, kind="weights", format=2)
    with pytest.raises(ValidationError, match="unsupported handle format 2"):
        EditHandle.load(folder, tiny_model("llama"))
    with pytest.raises(ValidationError, match=r"no handle\.json"):
        EditHandle.load(tmp_path / "nothing", tiny_model("llama"))


def test_load_dispatches_to_the_loader_registered_for_the_type(tmp_path, monkeypatch):
    monkeypatch.setattr(handle, "_LOADERS", handle._LOADERS.copy())
    folder, _ = _saved(tmp_path)
    _rewrite(folder, kind="notes")
    seen = []
    lm = tiny_model("llama")

    def load_notes(where, meta, model):
        seen.append((where, meta["method"], model))
        return EditHandle(meta["method"], meta["config"], [], model, applied=False)

    register_handle_loader("notes", load_notes)
    loaded = EditHandle.load(folder, lm)
    assert seen == [(folder, "ft", lm)] and loaded.method == "ft" and not loaded.applied
    assert "notes" in handle_types()
    register_handle_loader("notes", load_notes)  # the same loader again is harmless
    with pytest.raises(ValueError, match="registered twice"):
        register_handle_loader("notes", lambda where, meta, model: loaded)


def _flip_64_bytes(path, at):
    data = bytearray(path.read_bytes())
    for i in range(at, at + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage(folder, how):
    changes, meta = folder / "changes.safetensors", folder / "handle.json"
    if how == "flipped tensor bytes":
        _flip_64_bytes(changes, changes.stat().st_size - 200)  # inside the values, past the header
    elif how == "truncated tensors":
        changes.write_bytes(changes.read_bytes()[: changes.stat().st_size // 2])
    elif how == "missing tensors":
        changes.unlink()
    elif how == "truncated json":
        meta.write_text(meta.read_text()[:100])
    elif how == "json not utf-8":
        meta.write_bytes(b"\xff\xfe" + meta.read_bytes())
    elif how == "json nested deep":
        meta.write_text("[" * 100_000 + "]" * 100_000)
    elif how == "json a list":
        meta.write_text("[1, 2]")
    elif how == "json value changed":
        data = json.loads(meta.read_text())
        data["requests"][0]["target_new"] = " Berlin"
        meta.write_text(json.dumps(data))
    elif how == "json field missing":
        _rewrite(folder, original_sha256=None)


DAMAGE = [
    "flipped tensor bytes",
    "truncated tensors",
    "missing tensors",
    "truncated json",
    "json not utf-8",
    "json nested deep",
    "json a list",
    "json value changed",
    "json field missing",
]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_saved_edit_is_one_line_error_and_leaves_the_model_as_it_was(tmp_path, how):
    """Every byte saved is checked: damage to the tensors or to handle.json is a one-line ValidationError
    before anything is applied, never a SafetensorError, a JSONDecodeError or an edit with other values."""
    folder, _ = _saved(tmp_path)
    _damage(folder, how)
    lm = tiny_model("llama")
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    with pytest.raises(ValidationError, match="damaged") as err:
        EditHandle.load(folder, lm)
    assert "\n" not in str(err.value)
    _assert_holds(lm, before)


def test_saved_digests_cover_the_edited_values_and_the_json(tmp_path):
    folder, edited = _saved(tmp_path)
    meta = json.loads((folder / "handle.json").read_text())
    assert set(meta["edited_sha256"]) == set(meta["original_sha256"]) and len(meta["sha256"]) == 64
    _assert_holds(EditHandle.load(folder, tiny_model("llama")).model, edited)
