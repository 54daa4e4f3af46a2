"""benchmarks/pin_rome_layer.py: ROME runs made at the old default get their layer written in, nothing else."""

import json
import sys

import pytest

from conftest import benchmark_script

pin_rome_layer = benchmark_script("pin_rome_layer")


def _run(model, method="rome", layer=None):
    config = {"n_context": 10, "layer": layer, "v_lr": 0.5}
    settings = {"corpus": "c.txt"} if layer is None else {"corpus": "c.txt", "layer": layer}
    return {
        "model": model,
        "method": method,
        "config": dict(config),
        "run_key": {"model": model, "method": method, "config": dict(config)},
        "records": [{"post": {"efficacy": 0.5}, "info": {"layer": 6}}],
        "run": {"model": model, "method": method, "settings": settings},
    }


def _main(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["pin_rome_layer.py", *map(str, args)])
    pin_rome_layer.main()


def test_only_null_rome_layers_of_the_model_are_pinned_in_the_files_layout(monkeypatch, tmp_path):
    files = {
        "old.json": (_run("smollm2-135m"), {"indent": 1}),
        "state.json": (_run("smollm2-135m"), {}),
        "at5.json": (_run("smollm2-135m", layer=5), {"indent": 1}),
        "gemma.json": (_run("gemma3-270m"), {"indent": 1}),
        "ft.json": (_run("smollm2-135m", method="ft"), {"indent": 1}),
    }
    for name, (doc, layout) in files.items():
        (tmp_path / name).write_text(json.dumps(doc, **layout))
    paths = [tmp_path / n for n in files]
    with pytest.raises(SystemExit):
        _main(monkeypatch, "--model", "smollm2-135m", "--layer", 6, "--check", *paths)
    assert all(p.read_text() == json.dumps(d, **lay) for p, (d, lay) in zip(paths, files.values(), strict=True))
    _main(monkeypatch, "--model", "smollm2-135m", "--layer", 6, *paths)
    for name in ("old.json", "state.json"):
        doc, layout = files[name]
        want = json.loads(json.dumps(doc))
        want["config"]["layer"] = want["run_key"]["config"]["layer"] = want["run"]["settings"]["layer"] = 6
        assert (tmp_path / name).read_text() == json.dumps(want, **layout)
    for name in ("at5.json", "gemma.json", "ft.json"):
        doc, layout = files[name]
        assert (tmp_path / name).read_text() == json.dumps(doc, **layout)
    _main(monkeypatch, "--model", "smollm2-135m", "--layer", 6, "--check", *paths)  # nothing left: no exit


def test_a_file_in_another_layout_is_refused_not_rewritten(monkeypatch, tmp_path):
    path = tmp_path / "odd.json"
    text = json.dumps(_run("smollm2-135m"), indent=4)
    path.write_text(text)
    with pytest.raises(SystemExit, match="by hand"):
        _main(monkeypatch, "--model", "smollm2-135m", "--layer", 6, path)
    assert path.read_text() == text
