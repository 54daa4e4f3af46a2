"""What one optimisation step of ROME / MEMIT costs the host, apart from its arithmetic.

On an H200 a step of a SmolLM2-shaped model took 80-90 ms, of which the GPU was busy about 10 ms
(docs/benchmarks.md). This measures, on any device, a model of the shape at full width and the same shape
narrowed (``gpu_check.narrow``: every layer, head and module kept, a few numbers per head): the narrowed
model's step is almost all host work (Python, the operator dispatch, the autograd engine), which is what a
GPU step waits on when it is not waiting on arithmetic.

Per (width, method): seconds per step, as the difference of the median edit at ``--steps`` and at
``--steps-low`` steps (early stopping off) over the steps between, so the edit's fixed costs (the capture
passes, the update's solve, the check that it took) cancel; torch operators dispatched per step, the same
difference counted by the torch profiler; and, from cProfile of one edit at ``--steps``, the share of a step
in the forward pass (``Passes.step``), the backward pass (the autograd engine) and the rest of editkit's
loop (the loss, Adam, the clamp, the stopping rule).

    python benchmarks/gpu_check.py --save-shape smollm2-135m build/shapes/smollm2-135m
    python benchmarks/step_overhead.py --shape build/shapes/smollm2-135m --head-dim 8 \\
        --out benchmarks/results/step_overhead_smollm2-135m.json
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from editkit.data.demo import demo_cases
from editkit.editors import create_editor
from editkit.edits import EditRequest
from editkit.models.lm import LanguageModel
from editkit.models.tiny import TEXT
from gpu_check import build, save, settings, sync

METHODS = ("rome", "memit")


def edit_seconds(lm: LanguageModel, editor: Any, requests: list[EditRequest], device: str) -> float:
    """The median seconds of one edit (applied, then rolled back) over ``requests``."""
    seconds = []
    for req in requests:
        t0 = time.perf_counter()
        handle = editor.apply(lm, [req])
        sync(device)
        seconds.append(time.perf_counter() - t0)
        handle.rollback()
    return statistics.median(seconds)


def operators(lm: LanguageModel, editor: Any, request: EditRequest) -> int:
    """Torch operators (``aten::``) one edit dispatches."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        editor.apply(lm, [request]).rollback()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def split(lm: LanguageModel, editor: Any, request: EditRequest, steps: int) -> dict[str, float]:
    """Seconds per step in the forward pass, the backward pass and the rest of the loop (cProfile)."""
    prof = cProfile.Profile()
    prof.enable()
    editor.apply(lm, [request]).rollback()
    prof.disable()
    rows = [(Path(f).name, fn, tt, ct) for (f, _line, fn), (_cc, _nc, tt, ct, _by) in pstats.Stats(prof).stats.items()]  # type: ignore[attr-defined]

    def cumulative(file: str, *names: str) -> float:
        return sum(ct for f, fn, _tt, ct in rows if f == file and fn in names)

    loop = cumulative("locate.py", "_optimise")
    forward = cumulative("passes.py", "step")
    capture = cumulative("passes.py", "capture", "__init__")
    backward = sum(tt for _f, fn, tt, _ct in rows if "run_backward" in fn)
    rest = loop - forward - capture - backward
    return {"forward": forward / steps, "backward": backward / steps, "rest_of_loop": rest / steps}


def measure(lm: LanguageModel, method: str, args: argparse.Namespace, corpus: Path) -> dict[str, Any]:
    requests = [c.request for c in demo_cases()][: args.edits]
    editors = {n: create_editor(method, settings(method, n, corpus)) for n in (args.steps_low, args.steps)}
    for editor in editors.values():
        editor.prepare(lm)
        editor.apply(lm, [requests[0]]).rollback()  # warm-up: first-call allocations and lazy imports
    low, high = (edit_seconds(lm, editors[n], requests, args.device) for n in (args.steps_low, args.steps))
    between = args.steps - args.steps_low
    ops_low, ops_high = (operators(lm, editors[n], requests[0]) for n in (args.steps_low, args.steps))
    return {
        "median_edit_seconds": {str(args.steps_low): low, str(args.steps): high},
        "seconds_per_step": (high - low) / between,
        "operators_per_step": (ops_high - ops_low) / between,
        "seconds_per_step_by_part": split(lm, editors[args.steps], requests[0], args.steps),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", required=True, help="a folder from gpu_check.py --save-shape")
    ap.add_argument("--head-dim", type=int, default=8, help="numbers per head of the narrowed model")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--steps-low", type=int, default=5)
    ap.add_argument("--edits", type=int, default=3, help="edits per median")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full-width", action=argparse.BooleanOptionalAction, default=True, help="also the real width")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not 0 < args.steps_low < args.steps:
        ap.error("--steps-low must be above 0 and below --steps")
    methods = args.methods.split(",")
    if unknown := [m for m in methods if m not in METHODS]:
        ap.error(f"unknown method(s) {', '.join(unknown)}; this measures {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)
    widths: list[int | None] = [args.head_dim, None] if args.full_width else [args.head_dim]
    result: dict[str, Any] = {"shape": args.shape, "device": args.device, "steps": [args.steps_low, args.steps]}
    result["threads"] = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(TEXT * 200)
        for head_dim in widths:
            lm, layers = build(args.shape, torch.float32, args.device, seed=0, head_dim=head_dim)
            key = "full" if head_dim is None else f"head_dim_{head_dim}"
            row: dict[str, Any] = {"hidden_size": lm.model.config.hidden_size, "layers": layers, "methods": {}}
            row["parameters"] = sum(p.numel() for p in lm.model.parameters())
            for method in methods:
                row["methods"][method] = measure(lm, method, args, corpus)
                print(json.dumps({key: {method: row["methods"][method]}}), flush=True)
            result[key] = row
    return save(result, args.out, args.device)


if __name__ == "__main__":
    main()
