"""Every weight editor on one device, on a model of a zoo model's shape with random weights (real weights are
too big to travel to a lent GPU machine): times, peak memory, and a bit-for-bit rollback check, as JSON.

The shape is a folder with the model's ``config.json`` and tokenizer files (no weights); ``--save-shape`` copies
them out of the model cache into a folder that can travel with the working tree:

    python benchmarks/gpu_check.py --save-shape smollm2-135m build/shapes/smollm2-135m
    python benchmarks/gpu_check.py --shape build/shapes/smollm2-135m --device cuda --out gpu_check.json

Per method: ``prepare`` (context prefixes, key statistics over ``--corpus``, or the package's own demo text
repeated), seconds per edit over ``--edits`` single edits with a fixed number of optimisation steps (early
stopping off, so every device runs the same work), and for the batch editors one batch of ``--batch`` edits
(its requests' residuals optimised together). After each edit the model is rolled back and checked equal, bit
for bit, to the unedited weights. ``--shape tiny:llama`` (any tiny architecture) is the test suite's CPU run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers as tf

from editkit.data.demo import demo_cases
from editkit.editors import create_editor
from editkit.edits import EditRequest
from editkit.models import zoo
from editkit.models.lm import LanguageModel
from editkit.models.tiny import TEXT, tiny_model
from editkit.provenance import code_version, environment, peak_memory_mb

METHODS = ("ft", "ft-c", "rome", "memit", "alphaedit")
BATCH = ("ft", "memit", "alphaedit")
LOCATE = ("rome", "memit", "alphaedit")
SHAPE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "editkit-model.json")


def save_shape(name: str, dest: Path) -> None:
    """Copy a cached zoo model's config and tokenizer (not its weights) to ``dest``."""
    src = zoo.model_dir(name)
    if not (src / "config.json").is_file():
        raise SystemExit(f"{name} is not in the model cache ({src}); load it once first (editkit models fetch)")
    dest.mkdir(parents=True, exist_ok=True)
    for f in SHAPE_FILES:
        if (src / f).is_file():
            shutil.copy2(src / f, dest / f)


def narrow(config: Any, head_dim: int) -> None:
    """Shrink ``config`` to ``head_dim`` per attention head (hidden size = heads x head_dim, MLP twice that),
    keeping the layers, heads, vocabulary and every module: the shape's graph of operations with almost none
    of its arithmetic."""
    heads = config.num_attention_heads
    config.hidden_size = heads * head_dim
    config.head_dim = head_dim
    config.intermediate_size = 2 * config.hidden_size


def build(
    shape: str, dtype: torch.dtype, device: str, seed: int, head_dim: int | None = None
) -> tuple[LanguageModel, dict[str, Any]]:
    """A model of ``shape`` (a folder from ``--save-shape``, or ``tiny:ARCH``) with random weights; with
    ``head_dim``, narrowed by :func:`narrow`."""
    if shape.startswith("tiny:"):
        if head_dim is not None:
            raise SystemExit("--head-dim narrows a saved shape, not a tiny model")
        lm = tiny_model(shape.removeprefix("tiny:"), seed=seed)
        model = lm.model.to(device, dtype)
        return LanguageModel(model, lm.tokenizer, name=lm.name), {}
    folder = Path(shape)
    if not (folder / "config.json").is_file():
        raise SystemExit(f"{folder} holds no config.json: make a shape with --save-shape MODEL DEST, or use tiny:ARCH")
    config = tf.AutoConfig.from_pretrained(folder)
    if head_dim is not None:
        narrow(config, head_dim)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)
    tokenizer = tf.AutoTokenizer.from_pretrained(folder)
    spec = json.loads((folder / "editkit-model.json").read_text()) if (folder / "editkit-model.json").is_file() else {}
    name = spec.get("name", folder.name)
    known = zoo.MODELS.get(name)
    layers = {"edit_layer": known.edit_layer, "rome_layer": known.rome_layer} if known else {}
    prefix = known.prefix if known else None
    return LanguageModel(model, tokenizer, name=f"{name}-random", prefix=prefix, **layers), layers


def settings(method: str, steps: int, corpus: Path, step_dtype: str = "float32") -> dict[str, Any]:
    if method in LOCATE:
        out: dict[str, Any] = {
            "v_steps": steps,
            "stop_loss": 0.0,
            "corpus": str(corpus),
            "mom2_n_tokens": 20_000,
            "step_dtype": step_dtype,
        }
        if method == "memit":
            out["mom2_update_weight"] = 1500.0
        return out
    return {"steps": steps, "stop_loss": 0.0}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check_rollback(lm: LanguageModel, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(before[n], p.detach()) for n, p in lm.model.named_parameters())


def run_method(
    lm: LanguageModel, method: str, requests: list[EditRequest], args: argparse.Namespace, corpus: Path
) -> dict[str, Any]:
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    editor = create_editor(method, settings(method, args.steps, corpus, args.step_dtype))
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    editor.prepare(lm)
    sync(args.device)
    out: dict[str, Any] = {"prepare_seconds": time.perf_counter() - t0, "rollback_exact": True}
    seconds = []
    for req in requests[: args.edits]:
        t0 = time.perf_counter()
        handle = editor.apply(lm, [req])
        sync(args.device)
        seconds.append(time.perf_counter() - t0)
        handle.rollback()
        out["rollback_exact"] &= check_rollback(lm, before)
    out["seconds_per_edit"] = seconds
    out["median_seconds_per_edit"] = sorted(seconds)[len(seconds) // 2]
    out["median_seconds_per_step"] = out["median_seconds_per_edit"] / args.steps
    if method in BATCH and args.batch > 1:
        batch = [requests[i % len(requests)] for i in range(args.batch)]
        if method in LOCATE:
            editor = create_editor(
                method, {**settings(method, args.steps, corpus, args.step_dtype), "v_batch": args.batch}
            )
            editor.prepare(lm)
        t0 = time.perf_counter()
        handle = editor.apply(lm, batch)
        sync(args.device)
        out["batch"] = {"edits": len(batch), "seconds": time.perf_counter() - t0}
        handle.rollback()
        out["rollback_exact"] &= check_rollback(lm, before)
    if args.device.startswith("cuda"):
        out["peak_device_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--save-shape", nargs=2, metavar=("MODEL", "DEST"), help="copy a cached model's shape and stop")
    ap.add_argument("--shape", help="a folder from --save-shape, or tiny:ARCH")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument(
        "--step-dtype", default="float32", choices=["float32", "bfloat16"], help="ROME/MEMIT/AlphaEdit steps"
    )
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=25, help="optimisation steps per edit (early stopping off)")
    ap.add_argument("--edits", type=int, default=5, help="single edits timed per method")
    ap.add_argument("--batch", type=int, default=20, help="edits in the one batch edit of MEMIT, AlphaEdit and FT")
    ap.add_argument("--corpus", type=Path, help="text for the key statistics (default: demo text repeated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.save_shape:
        save_shape(args.save_shape[0], Path(args.save_shape[1]))
        return {}
    if not args.shape or not args.out:
        ap.error("--shape and --out are needed (or --save-shape MODEL DEST)")
    methods = args.methods.split(",")
    if unknown := [m for m in methods if m not in METHODS]:
        ap.error(f"unknown method(s) {', '.join(unknown)}; this check runs {', '.join(METHODS)}")
    lm, layers = build(args.shape, getattr(torch, args.dtype), args.device, args.seed)
    requests = [c.request for c in demo_cases()]  # distinct subjects; a larger batch repeats them
    result: dict[str, Any] = {
        "shape": args.shape,
        "model": lm.name,
        "parameters": sum(p.numel() for p in lm.model.parameters()),
        "device": args.device,
        "dtype": args.dtype,
        "step_dtype": args.step_dtype,
        "steps": args.steps,
        "layers": layers,
        "methods": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus or Path(tmp) / "corpus.txt"
        if args.corpus is None:
            corpus.write_text(TEXT * 200)
        for method in methods:
            result["methods"][method] = run_method(lm, method, requests, args, corpus)
            print(json.dumps({method: result["methods"][method]}), flush=True)
    result["peak_host_memory_mb"] = peak_memory_mb()
    return save(result, args.out, args.device)


def save(result: dict[str, Any], out: Path, device: str) -> dict[str, Any]:
    """``result`` with the code version and the environment added, written to ``out`` as JSON."""
    result["code_version"] = code_version()
    result["environment"] = environment(device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
