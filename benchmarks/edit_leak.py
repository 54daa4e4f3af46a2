"""How far one weight edit reaches into unrelated prompts, at the layer it edits.

For each of the first N cases of a CounterFact-style file: apply one edit, read the edited layer's MLP output
(the matrix the editor changed) and the layer's output (the residual stream after it) at the last token of
each of the case's neighbourhood prompts, roll the edit back, read them again. Reported per case, medians over
its prompts: the relative change of the MLP output, the relative change of the residual stream, and the MLP
output's norm as a share of the residual's. It compares base models on which the same editor's settings damage
neighbours differently (docs/benchmarks.md, "Gemma-3-270M's first 200 sequential edits").

    python benchmarks/edit_leak.py --model gemma3-270m --method rome --cases 3 --out leak_rome_gemma.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from editkit.data.formats import load_cases
from editkit.editors import create_editor
from editkit.edits import ProbeKind
from editkit.files import atomic_write
from editkit.models.adapters import get_module
from editkit.models.lm import LanguageModel
from editkit.models.zoo import load


def last_token_reads(lm: LanguageModel, prompts: list[str], layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The edited layer's MLP output and the layer's output at each prompt's last token: two ``[n, d]``."""
    block = lm.adapter.layer_list(lm.model)[layer]
    mlp_out, residual = [], []
    hooks = [
        get_module(block, lm.adapter.mlp_out).register_forward_hook(
            lambda _m, _i, o: mlp_out.append(o[0, -1].detach().float().clone())
        ),
        block.register_forward_hook(
            lambda _m, _i, o: residual.append((o[0] if isinstance(o, tuple) else o)[0, -1].detach().float().clone())
        ),
    ]
    try:
        with torch.no_grad():
            for prompt in prompts:
                lm.model(**lm.tokenizer(prompt, return_tensors="pt").to(lm.device))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(mlp_out), torch.stack(residual)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="rome", help="a weight editor that records the one layer it edits (ROME)")
    ap.add_argument(
        "--data", default="../shared/data/counterfact/canonical_schema_subsets/counterfact_portability_gpt4.json"
    )
    ap.add_argument("--corpus", default="../shared/data/wikitext/wikitext-2/valid.txt", help="for key statistics")
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cases = load_cases(args.data, limit=args.cases).cases
    lm = load(args.model, progress=False)
    editor = create_editor(args.method, {"corpus": args.corpus})
    rows: list[dict[str, Any]] = []
    layer = None
    for case in cases:
        prompts = [p.prompt for p in case.of_kind(ProbeKind.NEIGHBORHOOD)]
        if not prompts:
            continue
        handle = editor.apply(lm, [case.request])
        try:
            layer = handle.info.get("layer")
            if not isinstance(layer, int):
                raise SystemExit(f"{args.method} records no single edited layer in its edit's info")
            mlp_after, res_after = last_token_reads(lm, prompts, layer)
        finally:
            handle.rollback()
        mlp_before, res_before = last_token_reads(lm, prompts, layer)
        rows.append(
            {
                "case_id": case.request.case_id,
                "subject": case.request.subject,
                "prompts": len(prompts),
                "mlp_out_change": float(((mlp_after - mlp_before).norm(dim=-1) / mlp_before.norm(dim=-1)).median()),
                "residual_change": float(((res_after - res_before).norm(dim=-1) / res_before.norm(dim=-1)).median()),
                "mlp_out_share_of_residual": float((mlp_before.norm(dim=-1) / res_before.norm(dim=-1)).median()),
            }
        )
    summary = {
        key: float(torch.tensor([r[key] for r in rows]).median())
        for key in ("mlp_out_change", "residual_change", "mlp_out_share_of_residual")
    }
    doc = {"model": args.model, "method": args.method, "layer": layer, "data": args.data, "summary": summary}
    atomic_write(args.out, json.dumps({**doc, "cases": rows}, indent=1))
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
