"""What ``editkit trace`` writes: a results JSON (numbers, settings, provenance) and a PNG beside it (ROME-style
heatmaps of one trace: token x layer, one panel per kind; or the average effect by layer)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from editkit.files import atomic_open, atomic_write
from editkit.locating.trace import TraceResult
from editkit.provenance import code_version, environment

TITLES = {"hidden": "residual stream (layer output)", "mlp": "MLP output (window)", "attn": "attention output (window)"}


def header(lm: Any, command: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "command": command,
        "model": lm.name,
        "model_fingerprint": lm.fingerprint(),
        "n_layers": lm.adapter.n_layers(lm.model),
        "code_version": code_version(),
        "environment": environment(lm.device),
        **extra,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=1) + "\n")


def neuron_report(lm: Any, prompt: str, answer: str | None, steps: int, top: int) -> dict[str, Any]:
    """A fact's knowledge-neuron attributions over every layer (``answer``'s first token; default the greedy next
    token): the ``top`` neurons, those above 0.2 x the largest (the paper's t) and each layer's sum."""
    import torch

    from editkit.editors.neurons import coarse_neurons, prompt_attributions

    if answer:
        answer_id = lm.encode(answer if answer.startswith(" ") else " " + answer, special=False)[0]
    else:
        answer_id = int(lm.next_token_logprobs([prompt])[0].argmax())
    start = time.perf_counter()
    layers = list(range(lm.adapter.n_layers(lm.model)))
    attrs = prompt_attributions(lm, prompt, answer_id, layers, steps)
    flat = torch.cat([attrs[layer] for layer in layers])
    width = attrs[0].numel()
    best = flat.topk(min(top, flat.numel()))
    return {
        "prompt": prompt,
        "answer": lm.tokenizer.decode([answer_id]),
        "answer_id": answer_id,
        "steps": steps,
        "seconds": time.perf_counter() - start,
        "top": [
            {"layer": int(i) // width, "neuron": int(i) % width, "attribution": float(v)}
            for v, i in zip(best.values, best.indices, strict=True)
        ],
        "above_0.2_of_max": [f"{layer}:{i}" for layer, i in sorted(coarse_neurons(attrs, 0.2))],
        "per_layer_sum": {str(layer): float(attrs[layer].sum()) for layer in layers},
    }


def plot_trace(result: TraceResult, path: Path) -> None:
    """Three heatmaps (token x layer) of P(answer) with one state restored; subject tokens starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(result.scores)
    n_tok = len(result.tokens)
    s0, s1 = result.subject_range
    labels = [repr(t.strip() or t)[1:-1] + ("*" if s0 <= i < s1 else "") for i, t in enumerate(result.tokens)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 0.32 * n_tok + 1.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        img = ax.imshow(
            result.scores[kind], aspect="auto", cmap={"hidden": "Purples", "mlp": "Greens"}.get(kind, "Reds")
        )
        ax.set_yticks(range(n_tok), labels, fontsize=7)
        ax.set_xlabel("layer")
        ax.set_title(f"{TITLES[kind]}", fontsize=9)
        fig.colorbar(img, ax=ax, label=f"p({result.answer.strip()})", shrink=0.8)
    fig.suptitle(
        f"{result.prompt!r} -> {result.answer!r}: clean {result.p_clean:.3f}, corrupted {result.p_corrupted:.3f}",
        fontsize=9,
    )
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def plot_average(summary: dict[str, Any], model: str, path: Path) -> None:
    """Average indirect effect at the subject's last token by layer, one line per kind (ROME's Figure 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    colors = {"hidden": "purple", "mlp": "green", "attn": "red"}
    for kind, stats in summary["kinds"].items():
        mean = stats["mean_effect"]
        layers = list(range(len(mean)))
        ax.plot(layers, mean, color=colors[kind], label=TITLES[kind])
        if stats["stderr"] is not None:
            lo = [m - 1.96 * e for m, e in zip(mean, stats["stderr"], strict=True)]
            hi = [m + 1.96 * e for m, e in zip(mean, stats["stderr"], strict=True)]
            ax.fill_between(layers, lo, hi, color=colors[kind], alpha=0.15)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("layer (centre of the window for MLP / attention)")
    ax.set_ylabel("average indirect effect")
    ax.set_title(f"{model}: last subject token, {summary['known']} known facts", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


__all__ = ["header", "neuron_report", "plot_average", "plot_trace", "write_json"]
