"""SEPROG's Table 3 in kind: wall time and peak memory of training and of inference for one batch of 64 edits
(zsRE), per method, on this CPU.

* **Training** (the learned editors: SEPROG, SERAC, MEND, KE, ENN): the editor's recipe
  (``benchmarks/configs/train_NAME.yaml``) with its batch set to 64 and ``--steps`` steps, in a fresh process;
  seconds per step of the training loop (set-up such as mining or caching the base model's encodings excluded,
  and the first ``--steps`` - 1 steps' warm-up included) and the process's peak resident memory. The recipe's
  training files are read with at most ``--max-cases`` cases each: a step's cost does not depend on the pool it
  draws from, the set-up's does. SERAC's two parts (embedding classifier, counterfactual model) are timed each.
* **Inference** (every method): in a fresh process, the model is loaded, one batch of the first 64 zsRE eval cases
  with distinct subjects is applied in one ``apply`` call, and the edited model answers the 64 edit questions,
  their 64 rephrasings and 64 unrelated questions greedily (as many tokens as each expected answer). The learned
  editors read the parts the training phase just wrote: their cost is the trained parts' (same shapes), their
  quality is not measured here. Peak memory is the process's, and above the loaded model's.

    python benchmarks/batch64_cost.py --methods seprog,serac,mend,ke,enn,ft,memit \\
        --out benchmarks/results/batch64_cost_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH_KEYS = {  # recipe, the settings that make one step read a batch of B edits
    "seprog": ("train_seprog_reads.yaml", lambda b, s: {"batch": b, "steps": s}),
    "serac": (
        "train_serac.yaml",
        lambda b, s: {
            "scope_batch": b,
            "cf_batch": b,
            "scope_steps": s,
            "cf_steps": s,
            "parts": ["scope-embed", "counterfactual"],
        },
    ),
    "mend": ("train_mend.yaml", lambda b, s: {"batch": b, "steps": s}),
    "ke": ("train_ke.yaml", lambda b, s: {"edits": b, "steps": s}),
    "enn": ("train_enn.yaml", lambda b, s: {"batch": b, "steps": s}),
}
NEEDS_CORPUS = ("rome", "memit", "alphaedit")  # key statistics; every other setting is the editor's default
CORPUS = "../shared/data/wikitext/wikitext-2/valid.txt"
CONFIGS = Path(__file__).parent / "configs"


def _rss_mb() -> float:
    """This process's resident memory now."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def train_phase(method: str, folder: str, batch: int, steps: int, max_cases: int) -> dict[str, Any]:
    from editkit.configfile import read_yaml
    from editkit.training.registry import create_trainer, get_trainer_class

    recipe, keys = BATCH_KEYS[method]
    settings = {**read_yaml(CONFIGS / recipe), **keys(batch, steps), "out": folder, "checkpoint_every": steps}
    if "max_cases" in {f for f, *_ in get_trainer_class(method).config_cls.describe()}:
        settings["max_cases"] = max_cases
    started = time.perf_counter()
    manifest = create_trainer(method, settings).train(progress=False)
    parts = {
        name: {
            "steps": part["steps"],
            "seconds_per_step": part["seconds_this_run"] / max(part["steps"], 1),
            "peak_memory_mb": part.get("peak_memory_mb"),
        }
        for name, part in manifest["parts"].items()
    }
    return {
        "recipe": recipe,
        "settings": keys(batch, steps),
        "parts": parts,
        "wall_seconds": time.perf_counter() - started,
    }


def infer_phase(method: str, folder: str | None, batch: int, data: str) -> dict[str, Any]:
    from editkit.data import load_cases
    from editkit.editors import create_editor
    from editkit.edits import ProbeKind
    from editkit.models.zoo import load
    from editkit.provenance import peak_memory_mb

    lm = load("smollm2-135m", progress=False)
    loaded_rss = _rss_mb()
    seen: set[str] = set()
    cases = []
    for c in load_cases(data).cases:
        if c.request.subject and c.request.subject not in seen:
            seen.add(c.request.subject)
            cases.append(c)
        if len(cases) == batch + 1:
            break
    warm, cases = cases[-1], cases[:-1]
    settings: dict[str, Any] = {"artifacts": folder} if folder else {}
    if method in NEEDS_CORPUS:
        settings["corpus"] = CORPUS
    editor = create_editor(method, settings)
    # one edit first, rolled back: what an editor prepares once (parts loaded, key statistics) is not the batch's
    editor.apply(lm, [warm.request]).rollback()
    started = time.perf_counter()
    handle = editor.apply(lm, [c.request for c in cases])
    applied = time.perf_counter() - started
    probes = [
        p for c in cases for kind in (ProbeKind.EDIT, ProbeKind.REPHRASE, ProbeKind.OUT) for p in c.of_kind(kind)[:1]
    ]
    started = time.perf_counter()
    handle.model.greedy_answers([p.prompt for p in probes], [len(lm.encode(p.expected, special=False)) for p in probes])
    answered = time.perf_counter() - started
    return {
        "edits": len(cases),
        "inputs_answered": len(probes),
        "apply_seconds": applied,
        "answer_seconds": answered,
        "seconds": applied + answered,
        "peak_memory_mb": peak_memory_mb(),
        "model_loaded_rss_mb": loaded_rss,
        "peak_above_loaded_mb": peak_memory_mb() - loaded_rss,
    }


def _child(args: list[str]) -> dict[str, Any]:
    """Run one phase in a fresh process (its peak memory is its own) and read its JSON line."""
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(args[:2])} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="seprog,serac,mend,ke,enn,ft,memit")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2, help="training steps timed per learned editor")
    ap.add_argument("--max-cases", type=int, default=500)
    ap.add_argument("--data", default="../shared/data/zsre/mend_format/zsre_mend_eval_portability_gpt4.json")
    ap.add_argument("--out", help="results JSON (required, but for the children)")
    ap.add_argument("--phase", choices=("train", "infer"), help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:  # a child: one method, one phase, one JSON line
        method = args.methods
        if args.phase == "train":
            result = train_phase(method, args.folder, args.batch, args.steps, args.max_cases)
        else:
            result = infer_phase(method, args.folder, args.batch, args.data)
        print(json.dumps(result))
        return
    if not args.out:
        ap.error("--out is required")
    from editkit.provenance import code_version, environment

    out_path = Path(args.out)
    results: dict[str, Any] = json.loads(out_path.read_text()) if out_path.is_file() else {}
    results.update(
        {
            "code_version": code_version(),
            "environment": environment(),
            "batch": args.batch,
            "data": args.data,
            "threads": os.environ.get("OMP_NUM_THREADS"),
        }
    )
    methods = results.setdefault("methods", {})
    with tempfile.TemporaryDirectory(prefix="batch64-") as tmp:
        for method in args.methods.split(","):
            if method in methods:  # a rerun carries on where a stop left it
                continue
            common = ["--methods", method, "--batch", str(args.batch), "--data", args.data]
            row: dict[str, Any] = {}
            folder = None
            if method in BATCH_KEYS:
                folder = str(Path(tmp) / method)
                row["training"] = _child(
                    [
                        *common,
                        "--phase",
                        "train",
                        "--folder",
                        folder,
                        "--steps",
                        str(args.steps),
                        "--max-cases",
                        str(args.max_cases),
                    ]
                )
            row["inference"] = _child([*common, "--phase", "infer", *(["--folder", folder] if folder else [])])
            methods[method] = row
            out_path.write_text(json.dumps(results, indent=1))
            print(method, json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
