"""Calibrating SERAC's ``defer_kl`` on training data: how far h's next-token distribution after an input moves
from the base model's, for inputs in an edit's scope and for inputs about what the edit does not touch.

For a sample of each training file's cases (less those sharing a subject or prompt with the evaluated files,
as the trainer leaves them out), KL(h || base) of the first answer token: h reads ``template(edit, input)``,
the base model the input alone. In-scope inputs are the edit prompt and its rephrases; out-of-scope ones the
case's own (split into those naming the edit's subject, another fact of it, and the rest). The suggested
``defer_kl`` is the KL under which only ``1 - --keep`` of the in-scope inputs fall (h keeps ``--keep`` of
them; with ``--keep-kind rephrase``, of the rephrasings alone, which are the in-scope inputs a judge loses: the
edit's own prompt is rarely deferred); the JSON also says what share of each kind of input it would send back to
the base model. Cases the judge was trained on flatter the in-scope side (their KL is higher than a new case's):
calibrate on a split it never saw, e.g. CounterFact's edit split. With
``--contrast`` the KL is that of ``defer_contrast``: h reading the edit against h reading its twin (the base
model's own answer in place of the new one), for the same inputs.

    python benchmarks/serac_defer_calibration.py --artifacts build/serac-keep-packaged \
        --data ../shared/data/knowedit/benchmark/wiki_counterfact/train_cf.json \
               ../shared/data/counterfact/easyedit/counterfact-train.json \
               ../shared/data/zsre/mend_format/zsre_mend_train-1k.json \
        --holdout ../shared/data/knowedit/benchmark/wiki_counterfact/train_cf.json --holdout-limit 200 \
        --out benchmarks/results/scale31/defer_calibration.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import torch

from editkit.data import load_cases
from editkit.editors.memory import descriptor_of, next_token_kl, twin_descriptors
from editkit.edits import ProbeKind, names_subject
from editkit.files import atomic_write, file_sha256
from editkit.models.lm import LanguageModel
from editkit.models.zoo import load
from editkit.provenance import code_version, environment
from editkit.trained import load_adapter_lm, read_manifest
from editkit.training.serac_data import held_out

IN_SCOPE = (ProbeKind.EDIT, ProbeKind.REPHRASE)
OUT_OF_SCOPE = (ProbeKind.NEIGHBORHOOD, ProbeKind.OUT)
QUANTILES = (0.01, 0.03, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9)


def first_token_kl(
    base: LanguageModel, h: LanguageModel, template: str, pairs: list[tuple[str, str]], twin: str | None = None
) -> list[float]:
    """KL(h || base) of the next token, for (descriptor, input) pairs; with ``twin``, KL(h || h reading the
    twin descriptor instead)."""
    if not pairs:
        return []
    if twin is None:
        b = base.next_token_logprobs([x for _, x in pairs])
    else:
        b = h.next_token_logprobs([template.format(edit=twin, input=x) for _, x in pairs])
    e = h.next_token_logprobs([template.format(edit=d, input=x) for d, x in pairs])
    return next_token_kl(e, b).tolist()


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", required=True, help="a SERAC folder with a counterfactual part")
    ap.add_argument("--data", nargs="+", required=True, help="training files")
    ap.add_argument("--holdout", nargs="*", default=[], help="evaluated files: cases sharing their subjects are out")
    ap.add_argument("--holdout-limit", type=int, default=None)
    ap.add_argument("--cases-per-file", type=int, default=100)
    ap.add_argument("--keep", type=float, default=0.97, help="share of in-scope inputs h keeps at the suggested KL")
    ap.add_argument(
        "--keep-kind",
        choices=("in_scope", "rephrase"),
        default="in_scope",
        help="the inputs --keep counts: every in-scope one, or the rephrasings alone",
    )
    ap.add_argument("--contrast", action="store_true", help="calibrate defer_contrast's KL (against the twin)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(args.artifacts)
    template = str(read_manifest(folder).get("template", "{edit}\n{input}"))
    base = load("smollm2-135m")
    h = load_adapter_lm(folder / "counterfactual", "serac-h")
    kls: dict[str, list[float]] = {"in_scope": [], "rephrase": [], "same_subject": [], "other_out_of_scope": []}
    files = []
    for path in args.data:
        dataset = load_cases(path, skip_invalid=True)
        cases, _ = held_out(dataset.cases, args.holdout, args.holdout_limit)
        sample = random.Random(0).sample(cases, min(args.cases_per_file, len(cases)))
        files.append({"path": path, "sha256": file_sha256(Path(path)), "cases": len(sample)})
        for c in sample:
            d, subject = descriptor_of(c.request), c.request.subject
            twin = twin_descriptors(base, [c.request])[0] if args.contrast else None
            probes = c.of_kind(*IN_SCOPE)
            inside_kls = first_token_kl(base, h, template, [(d, p.prompt) for p in probes], twin)
            kls["in_scope"] += inside_kls
            kls["rephrase"] += [k for k, p in zip(inside_kls, probes, strict=True) if p.kind is ProbeKind.REPHRASE]
            out = [p.prompt for p in c.of_kind(*OUT_OF_SCOPE)]
            same = [x for x in out if subject and names_subject(x, subject)]
            kls["same_subject"] += first_token_kl(base, h, template, [(d, x) for x in same], twin)
            other = [x for x in out if x not in same]
            kls["other_out_of_scope"] += first_token_kl(base, h, template, [(d, x) for x in other], twin)
    if not kls[args.keep_kind]:
        raise SystemExit(f"no {args.keep_kind} inputs in these files to calibrate on")
    suggested = quantile(kls[args.keep_kind], 1 - args.keep)
    result: dict[str, Any] = {
        "artifacts": str(folder),
        "counterfactual": read_manifest(folder)["parts"]["counterfactual"].get("fingerprint"),
        "files": files,
        "holdout": args.holdout,
        "holdout_limit": args.holdout_limit,
        "keep": args.keep,
        "keep_kind": args.keep_kind,
        "contrast": args.contrast,
        "suggested_defer_kl": suggested,
        "inputs": {k: len(v) for k, v in kls.items()},
        "quantiles": {k: {str(q): quantile(v, q) for q in QUANTILES} for k, v in kls.items() if v},
        "deferred_at_suggested": {k: sum(x <= suggested for x in v) / len(v) for k, v in kls.items() if v},
        "code_version": code_version(),
        "environment": environment(),
    }
    atomic_write(Path(args.out), json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("suggested_defer_kl", "inputs", "deferred_at_suggested")}))


if __name__ == "__main__":
    main()
