"""Write the layer ROME edited into results files made when ROME's default was the model's ``edit_layer``.

Such runs record ``layer: null`` ("the model's default") in the editor config, in the run key of a sequential
run and (by leaving it out) in the run's ``settings``; ``--state`` resumes, ``replay_records`` and
benchmarks/replay_check.py rebuild the editor from those. Once ROME's default moves to the traced layer
(``ModelSpec.rome_layer``), a rebuild from an unpinned file would edit the new layer with the old layer's
records. This one-off pins ``--layer`` wherever such a file says null or nothing, and nothing else: every number
stays as it is (the file is rewritten in its own JSON layout, so the diff shows only the pinned lines).

    python benchmarks/pin_rome_layer.py --model smollm2-135m --layer 6 FILE... [--check]

--check lists what would change and exits 1 if anything would (0 once the files are pinned).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from editkit.files import atomic_write

LAYOUTS: tuple[dict[str, Any], ...] = ({"indent": 1}, {})  # results files (runner) and state folders' results


def layout(path: Path, text: str, doc: Any) -> dict[str, Any]:
    """The json.dumps arguments that reproduce ``text`` byte for byte."""
    for kwargs in LAYOUTS:
        if json.dumps(doc, **kwargs) == text:
            return kwargs
    raise SystemExit(f"{path}: not in a layout this script writes back unchanged; pin it by hand")


def pin(node: Any, model: str | None, want: str, layer: int, where: str, changes: list[str]) -> None:
    """Pin ``layer`` in every ROME config (``config.layer`` null) and run settings (``settings`` without a
    layer) under ``node`` that belongs to model ``want``; ``model`` is the nearest enclosing model name."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            pin(item, model, want, layer, f"{where}[{i}]", changes)
        return
    if not isinstance(node, dict):
        return
    model = node.get("model") if isinstance(node.get("model"), str) else model
    if node.get("method") == "rome" and model == want:
        config, settings = node.get("config"), node.get("settings")
        if isinstance(config, dict) and "layer" in config and config["layer"] is None:
            config["layer"] = layer
            changes.append(f"{where}.config.layer")
        if isinstance(settings, dict) and settings.get("layer") is None:
            settings["layer"] = layer
            changes.append(f"{where}.settings.layer")
    for key, value in node.items():
        pin(value, model, want, layer, f"{where}.{key}", changes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path, help="results JSON files (or a state folder's results.json)")
    ap.add_argument("--model", required=True, help="pin only runs on this model (a zoo name)")
    ap.add_argument("--layer", type=int, required=True, help="the layer those runs edited (the old default)")
    ap.add_argument("--check", action="store_true", help="list what would change; write nothing")
    args = ap.parse_args()
    pending = 0
    for path in args.files:
        text = path.read_text()
        doc = json.loads(text)
        changes: list[str] = []
        pin(doc, None, args.model, args.layer, "", changes)
        pending += len(changes)
        print(f"{path}: {', '.join(changes) if changes else 'nothing to pin'}")
        if changes and not args.check:
            atomic_write(path, json.dumps(doc, **layout(path, text, json.loads(text))))
    if args.check and pending:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
