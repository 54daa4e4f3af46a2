"""What AlphaEdit's null space holds, per edited layer: how much of the preserved keys it leaves unprotected, and
how much of an edit's own keys it lets the update reach.

AlphaEdit confines each layer's update to the span of the eigenvectors of C = E[k k^T] (the corpus's keys at the
layer) whose eigenvalues lie below ``nullspace_threshold`` times the largest. Counted in directions, that span
says little where the largest eigenvalue is an outlier (Gemma-3); what decides the damage is energy: the share of
E[|k|^2] (the trace of C) in the span is the share of the preserved keys' energy the update may still move. The
share of an edit's subject key in the span says how much room the edit has.

Per layer: dimensions, null-space dimensions, the largest and the median eigenvalue, the preserved keys' energy
in the null space, and medians over the first N cases of the subject key's energy in it and along the largest
eigenvector (the key MEMIT's walk solves for: the subject's last token, averaged over the context prefixes).

    python benchmarks/null_space.py --model gemma3-270m --cases 20 --out null_space_gemma.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from editkit.data.formats import load_cases
from editkit.editors import create_editor
from editkit.editors.alphaedit import AlphaEdit
from editkit.files import atomic_write
from editkit.models.zoo import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument(
        "--data", default="../shared/data/counterfact/canonical_schema_subsets/counterfact_portability_gpt4.json"
    )
    ap.add_argument("--corpus", default="../shared/data/wikitext/wikitext-2/valid.txt", help="for key statistics")
    ap.add_argument("--cases", type=int, default=20, help="the first N cases' subject keys")
    ap.add_argument("--threshold", type=float, help="nullspace_threshold (default: AlphaEdit's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    settings: dict[str, Any] = {"corpus": args.corpus}
    if args.threshold is not None:
        settings["nullspace_threshold"] = args.threshold
    editor = create_editor("alphaedit", settings)
    assert isinstance(editor, AlphaEdit)
    lm = load(args.model)
    requests = [c.request for c in load_cases(args.data).cases[: args.cases]]
    layers = editor.layers(lm)
    editor.prepare(lm, progress=True)
    rows = []
    for layer in layers:
        cov = editor.preserved_covariance(lm, layer)
        assert cov is not None
        values, vectors = torch.linalg.eigh(cov.double())
        basis = editor.basis(lm, layer)
        keys, _ = editor.subject_states(lm, requests, layer, layers[-1])
        keys = keys.double()
        norms = (keys**2).sum(1)
        in_null = ((keys @ basis) ** 2).sum(1) / norms
        along_largest = (keys @ vectors[:, -1]) ** 2 / norms
        below = values < editor.config.nullspace_threshold * values.max()
        rows.append(
            {
                "layer": layer,
                "dims": values.numel(),
                "null_dims": basis.shape[1],
                "largest_eigenvalue": values.max().item(),
                "median_eigenvalue": values.median().item(),
                "preserved_energy_in_null": (values[below].sum() / values.sum()).item(),
                "edit_key_energy_in_null_median": in_null.median().item(),
                "edit_key_energy_along_largest_median": along_largest.median().item(),
            }
        )
    out = {
        "model": args.model,
        "nullspace_threshold": editor.config.nullspace_threshold,
        "corpus": args.corpus,
        "cases": len(requests),
        "layers": rows,
    }
    atomic_write(Path(args.out), json.dumps(out, indent=1))
    print(f"{args.model}, nullspace_threshold {editor.config.nullspace_threshold:g}, {len(requests)} cases")
    print("| layer | null dims | largest / median eigenvalue | preserved keys' energy in it | edit keys' energy |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['layer']} | {r['null_dims']} of {r['dims']} ({r['null_dims'] / r['dims']:.0%}) "
            f"| {r['largest_eigenvalue']:.3g} / {r['median_eigenvalue']:.3g} "
            f"| {r['preserved_energy_in_null']:.1%} | {r['edit_key_energy_in_null_median']:.1%} |"
        )


if __name__ == "__main__":
    main()
