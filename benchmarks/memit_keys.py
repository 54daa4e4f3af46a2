"""Time MEMIT's keys: the passes that read each edit's key at every edited layer and the top layer's output
(``MEMIT.subject_states``), what a mass edit spends after its residuals are found (once per edited layer).
Seconds for N CounterFact requests at each of MEMIT's layers, with the code version, so that two commits can
be compared on the same machine (run it with PYTHONPATH pointing at the other checkout's ``src``).

    python benchmarks/memit_keys.py --cases 256 \
        --data ../shared/data/counterfact/easyedit/counterfact-edit.json --out benchmarks/results/memit_keys.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from editkit.configfile import parse_overrides
from editkit.data import load_cases
from editkit.editors import create_editor
from editkit.editors.memit import MEMIT
from editkit.models.zoo import load
from editkit.provenance import code_version

LEAN = {"n_context": 3, "step_dtype": "bfloat16", "v_lr": 1.0}  # batch_memit_10k.yaml's optimisation settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", required=True, help="an edit file with subjects (CounterFact)")
    parser.add_argument("--cases", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="MEMIT setting KEY=VALUE")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load(args.model, progress=False)
    requests = [c.request for c in load_cases(args.data, limit=args.cases).cases]
    settings = {**LEAN, "mom2_update_weight": 15.0, **parse_overrides(args.overrides)}  # lambda: no corpus read
    editor = create_editor("memit", settings)
    assert isinstance(editor, MEMIT)
    editor.context_templates(lm)
    layers = editor.layers(lm)
    seconds = {}
    for layer in layers:
        start = time.perf_counter()
        editor.subject_states(lm, requests, layer, layers[-1])
        seconds[str(layer)] = time.perf_counter() - start
    total = sum(seconds.values())
    result = {
        "model": args.model,
        "data": args.data,
        "requests": len(requests),
        "threads": args.threads,
        "settings": settings,
        "code_version": code_version(),
        "seconds_by_layer": seconds,
        "seconds": total,
        "seconds_per_request": total / len(requests),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(requests)} requests, layers {layers}: {total:.1f} s ({total / len(requests):.3f} s per request)")


if __name__ == "__main__":
    main()
