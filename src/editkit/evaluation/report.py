"""``editkit report``: Markdown tables and PNG plots from results JSON files, in the style of the papers' figures.

* every run: a table of its aggregates (and the unedited model's);
* batch runs: ES, DD and ES - DD against the number of edits applied together (SERAC Figure 3);
* sequential runs: immediate efficacy / paraphrase / neighborhood as running means over the edit index
  (forgetting paper Figure 1a-c), the number of earlier edits forgotten (Figure 1d), downstream F1 per task
  (Figure 2a-c), the normalised drift of the edited weights (Figure 2d), one line per run, and that of each
  edited layer, a panel per run (Figure 3d), and which earlier edits are forgotten at each checkpoint; and the
  forgetting paper's Table 3 in kind, measured (:func:`forgetting_summary`) where the paper gives words.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

from editkit.errors import ValidationError
from editkit.evaluation.report_judged import generations_section
from editkit.evaluation.results import load_results
from editkit.evaluation.sequential import sequential_aggregates
from editkit.evaluation.shared import edit_success

TABLE_COLUMNS = (
    "efficacy",
    "paraphrase",
    "neighborhood",
    "es",
    "dd",
    "kl_drawdown",
    "hard_in_acc",
    "choice_all",
    "final_efficacy",
    "forgotten_fraction",
    "final_downstream_f1",
    "final_sst2_auc",
    "seconds_per_edit",
)


def load_runs(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The runs to report, each read by :func:`load_results`; a sequential run's partial ``results.json`` (its
    state folder's, while it runs) gets its aggregates so far and a label that says so."""
    runs = []
    for p in paths:
        data = load_results(p)
        if data["protocol"] == "sequential" and "aggregates" not in data:
            data["aggregates"] = sequential_aggregates(data)
            name = (data.get("run") or {}).get("label") or data["method"]
            data["run"] = {"label": f"{name}, {data['n_edits']} of {data['n_cases']} edits so far"}
        data["_path"] = str(Path(p))
        runs.append(data)
    if not runs:
        raise ValidationError("no results files given")
    return runs


def _label(run: dict[str, Any]) -> str:
    name = (run.get("run") or {}).get("label") or run["method"]
    return f"{name} ({run['model']})"


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))


def _table(runs: Sequence[dict[str, Any]]) -> list[str]:
    cols = [c for c in TABLE_COLUMNS if any(c in r["aggregates"] for r in runs)]
    lines = [
        "| run | protocol | cases | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for r in runs:
        agg = r["aggregates"]
        # a batch run's aggregates count the cases its largest k scored (max_groups may leave some out)
        scored = agg.get("n_cases", r["n_cases"])
        lines.append(
            f"| {_label(r)} | {r['protocol']} | {scored} | " + " | ".join(_fmt(agg.get(c)) for c in cols) + " |"
        )
        unedited = [agg.get(f"unedited_{c}") for c in cols]
        if any(u is not None for u in unedited):
            lines.append(f"| unedited {r['model']} | | | " + " | ".join(_fmt(u) for u in unedited) + " |")
    return lines


def _window(n_edits: int) -> int:
    """The running-mean window of the sequential plots: the forgetting paper's 50 edits for runs of 500 or more
    (its runs are 1,000-2,000 edits), 20 for shorter ones."""
    return 50 if n_edits >= 500 else 20


def _running_mean(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _plot_batch(runs: Sequence[dict[str, Any]], out: Path) -> list[str]:
    """ES, DD and ES - DD against k on fixed axes (small differences should look small); where a run has
    rephrase probes, their accuracy alone is drawn dashed beside ES (which also averages the edit prompts and
    any hard in-scope probes)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    dd_top = 0.1
    for r in runs:
        ks = sorted(int(k) for k in r["aggregates_by_k"])
        by_k = [r["aggregates_by_k"][str(k)] for k in ks]
        es = [a.get("es", float("nan")) for a in by_k]
        dd = [a.get("dd", float("nan")) for a in by_k]
        dd_top = max([dd_top, *(1.1 * d for d in dd if not math.isnan(d))])
        lines = []
        for ax, ys in zip(axes, (es, dd, [e - d for e, d in zip(es, dd, strict=True)]), strict=True):
            lines += ax.plot(ks, ys, marker="o", label=_label(r))
        if any("rephrase_acc" in a for a in by_k):
            rephrase = [a.get("rephrase_acc", float("nan")) for a in by_k]
            color = lines[0].get_color()
            axes[0].plot(ks, rephrase, ls="--", marker=".", color=color, label=f"{_label(r)}, rephrases")
            axes[2].plot(ks, [e - d for e, d in zip(rephrase, dd, strict=True)], ls="--", marker=".", color=color)
    for ax, title in zip(axes, ("edit success (ES)", "drawdown (DD)", "ES - DD"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("edits applied together (k)")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1.02)
    axes[1].set_ylim(0, min(1.02, dd_top))
    axes[2].set_ylim(min(0.0, axes[2].get_ylim()[0]), 1.02)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    name = "batch_es_dd.png"
    fig.savefig(out / name, dpi=90)
    plt.close(fig)
    return [f"![ES and DD against the number of edits]({name})"]


def _plot_sequential(runs: Sequence[dict[str, Any]], out: Path) -> list[str]:
    import matplotlib.pyplot as plt

    md: list[str] = []
    scores = [s for s in ("efficacy", "paraphrase", "neighborhood", "es") if any(s in r["aggregates"] for r in runs)]
    scores = scores[:3] if "efficacy" in scores else scores
    window = _window(max(r["n_edits"] for r in runs))
    fig, axes = plt.subplots(1, len(scores) + 1, figsize=(3.6 * (len(scores) + 1), 3.2), squeeze=False)
    for r in runs:
        x = [rec["n_edits"] for rec in r["records"]]
        for ax, s in zip(axes[0], scores, strict=False):
            ys = [rec["post"].get(s, float("nan")) for rec in r["records"]]
            (line,) = ax.plot(x, _running_mean(ys, window), label=_label(r))
            ax.plot(x, _running_mean(ys, 5), color=line.get_color(), alpha=0.35, linestyle=":")
        ck = r["checkpoints"][1:]
        axes[0][-1].plot(
            [c["n_edits"] for c in ck], [100 * c["forgotten_fraction"] for c in ck], marker="o", label=_label(r)
        )
    for ax, s in zip(axes[0], scores, strict=False):
        ax.set_title(f"{s} of each new edit")
        ax.set_ylim(-0.05, 1.05)
    axes[0][-1].set_title("earlier edits forgotten (%)")
    for ax in axes[0]:
        ax.set_xlabel("number of edits")
        ax.grid(alpha=0.3)
    # below the panels: long run labels inside one would squeeze the others
    fig.legend(*axes[0][-1].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    rows = math.ceil(len(runs) / 3)
    fig.tight_layout(rect=(0, 0.07 * rows, 1, 1))
    fig.savefig(out / "sequential_editing.png", dpi=90)
    plt.close(fig)
    md.append(
        "![editing proficiency and forgetting](sequential_editing.png)\n\n"
        f"Running means over the last {window} edits (solid) and 5 edits (dotted); forgetting is the share of the "
        "edits that succeeded when made and fail at the checkpoint."
    )

    tasks = sorted({t for r in runs for c in r["checkpoints"] for t in c["downstream"]})
    has_drift = any(rec.get("drift") for r in runs for rec in r["records"])
    # each edit's own drift over its run's median, by the run's place in ``runs`` (its colour in the other panels)
    own = {i: ratios for i, r in enumerate(runs) if (ratios := _own_drift(r))}
    panels = len(tasks) + (1 if has_drift else 0) + (1 if own else 0)
    if panels:
        fig, axes = plt.subplots(1, panels, figsize=(3.4 * panels, 3.2), squeeze=False)
        for r in runs:
            ck = r["checkpoints"]
            for ax, t in zip(axes[0], tasks, strict=False):
                pts = [(c["n_edits"], c["downstream"][t]) for c in ck if t in c["downstream"]]
                (line,) = ax.plot([n for n, _ in pts], [d["f1"] for _, d in pts], marker="o", label=_label(r))
                ax.fill_between(
                    [n for n, _ in pts],
                    [d["f1_ci"][0] for _, d in pts],
                    [d["f1_ci"][1] for _, d in pts],
                    color=line.get_color(),
                    alpha=0.15,
                )
                ax.plot([n for n, _ in pts], [d["auc"] for _, d in pts], color=line.get_color(), linestyle="--")
            if has_drift:
                axes[0][len(tasks)].plot(
                    [0] + [rec["n_edits"] for rec in r["records"]],
                    [0.0] + [rec["drift"] for rec in r["records"]],
                    label=_label(r),
                )
        for ax, t in zip(axes[0], tasks, strict=False):
            ax.set_title(f"{t}: F1 (solid, 95% CI), AUC (dashed)", fontsize=9)
            ax.set_ylim(-0.05, 1.05)
        if has_drift:
            axes[0][len(tasks)].set_title("normalised L2 drift of edited weights", fontsize=9)
        if own:
            ax = axes[0][-1]
            for i, ratios in own.items():
                ax.plot(list(ratios), list(ratios.values()), ".", markersize=3, color=f"C{i % 10}")
            ax.axhline(10, color="grey", linestyle="--", linewidth=0.8)
            ax.set_yscale("log")
            ax.set_title("each edit's own drift, x the run's median", fontsize=9)
        for ax in axes[0]:
            ax.set_xlabel("number of edits")
            ax.grid(alpha=0.3)
        # below the panels, as in the editing figure: inside one, it hid a steep run's curve
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
        fig.tight_layout(rect=(0, 0.09 * math.ceil(len(labels) / 3), 1, 1))
        fig.savefig(out / "sequential_downstream.png", dpi=90)
        plt.close(fig)
        md.append("![downstream F1 and weight drift](sequential_downstream.png)")
        if own:
            md.append(
                "\nThe last panel: how far each edit alone moved the weights, against the run's median edit (dashed: "
                "10x, where a run flags a disabling edit)."
            )
    md += _plot_layers(runs, out)
    md += _plot_forgotten(runs, out)
    disabling = [(i, d) for i, r in enumerate(runs) for d in r.get("disabling_edits", [])]
    if disabling:
        # a flag from the downstream rule names the window's largest edit, which may still be an ordinary one
        md += ["", "Disabling edits flagged:", "", "| run | edit # | case | its own drift, x the run's median | why |"]
        md += ["|---|---|---|---|---|"]
        for i, d in disabling:
            ratio = own.get(i, {}).get(d["n_edits"])
            size = "not recorded" if ratio is None else f"{ratio:.1f}x"
            md.append(f"| {_label(runs[i])} | {d['n_edits']} | {d['case_id']} | {size} | {d['reason']} |")
    rejected = [(r, d) for r in runs for d in r.get("rejected_edits", [])]
    if rejected:
        md += ["", "Edits the guard rejected (the model was left as it was):", "", "| run | edit # | case | why |"]
        md += ["|---|---|---|---|"]
        md += [f"| {_label(r)} | {d['n_edits']} | {d['case_id']} | {'; '.join(d['reasons'])} |" for r, d in rejected]
    return md


def _layer_names(names: Sequence[str]) -> list[str]:
    """Short names for a run's edited weights: what tells them apart (``model.layers.2.mlp.down_proj.weight``
    and ``...layers.6...`` -> ``2``, ``6``), cut at dots; a single weight keeps its name."""
    if len(names) < 2:
        return [n.removesuffix(".weight") for n in names]
    parts = [n.split(".") for n in names]
    head = 0
    while all(len(p) > head + 1 and p[head] == parts[0][head] for p in parts):
        head += 1
    tail = 0
    while all(len(p) > head + tail + 1 and p[-1 - tail] == parts[0][-1 - tail] for p in parts):
        tail += 1
    return [".".join(p[head : len(p) - tail]) for p in parts]


def _plot_layers(runs: Sequence[dict[str, Any]], out: Path) -> list[str]:
    """The drift of each edited weight at every checkpoint, a panel per run (forgetting paper Figure 3d: does one
    layer spike where the sum over layers grows smoothly?)."""
    import matplotlib.pyplot as plt

    drawn = [(i, r) for i, r in enumerate(runs) if any(c.get("drift") for c in r["checkpoints"])]
    if not drawn:
        return []
    fig, axes = plt.subplots(1, len(drawn), figsize=(3.4 * len(drawn), 3.2), squeeze=False)
    for ax, (i, r) in zip(axes[0], drawn, strict=True):
        ck = [c for c in r["checkpoints"] if c.get("drift")]
        names = list(ck[-1]["drift"])
        # layer numbers in numeric order (10 after 9), other names after them
        shorts = sorted(
            zip(_layer_names(names), names, strict=True),
            key=lambda p: (0, int(p[0]), "") if p[0].isdigit() else (1, 0, p[0]),
        )
        for k, (short, name) in enumerate(shorts):
            pts = [(c["n_edits"], c["drift"][name]) for c in ck if name in c["drift"]]
            ax.plot(
                [0] + [n for n, _ in pts],
                [0.0] + [d for _, d in pts],
                color=f"C{i % 10}",
                alpha=0.35 + 0.65 * (k + 1) / len(names),
                label=short,
            )
        ax.set_title(_label(r), fontsize=8)
        ax.set_xlabel("number of edits")
        ax.grid(alpha=0.3)
        layers = len(shorts) > 1 and all(short.isdigit() for short, _ in shorts)
        ax.legend(fontsize=7, title="layer" if layers else "edited weight", title_fontsize=7)
    axes[0][0].set_ylabel("normalised L2 drift")
    fig.tight_layout()
    fig.savefig(out / "sequential_layers.png", dpi=90)
    plt.close(fig)
    return [
        "\n![drift of each edited layer](sequential_layers.png)\n\n"
        "The drift of each edited weight at the checkpoints, a panel per run (darker: a higher layer; each panel "
        "has its own scale; the summed drift above compares the runs)."
    ]


def _plot_forgotten(runs: Sequence[dict[str, Any]], out: Path) -> list[str]:
    """Which earlier edits are forgotten at each checkpoint, a panel per run that names them: old edits or
    recent ones, for good or recalled again later?"""
    import matplotlib.pyplot as plt

    drawn = [(i, r) for i, r in enumerate(runs) if any("forgotten_edits" in c for c in r["checkpoints"])]
    if not drawn:
        return []
    fig, axes = plt.subplots(1, len(drawn), figsize=(3.4 * len(drawn), 3.4), squeeze=False)
    for ax, (i, r) in zip(axes[0], drawn, strict=True):
        named = [c for c in r["checkpoints"] if "forgotten_edits" in c]
        xs = [c["n_edits"] for c in named for _ in c["forgotten_edits"]]
        ys = [e for c in named for e in c["forgotten_edits"]]
        ax.scatter(xs, ys, s=4, marker="s", color=f"C{i % 10}", linewidths=0)
        ax.plot([0, r["n_edits"]], [0, r["n_edits"]], color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlim(0, r["n_edits"] * 1.03)
        ax.set_ylim(0, r["n_edits"] * 1.03)
        ax.set_title(_label(r), fontsize=8)
        ax.set_xlabel("checkpoint (number of edits)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("forgotten edit (its place in the run)")
    fig.tight_layout()
    fig.savefig(out / "sequential_forgotten.png", dpi=90)
    plt.close(fig)
    return [
        "\n![which edits are forgotten](sequential_forgotten.png)\n\n"
        "Which earlier edits are forgotten at each checkpoint (a mark per edit; the dashed line is the newest "
        "edit): a column is one checkpoint, a row one edit forgotten for good or recalled again. Checkpoints "
        "written before editkit named the forgotten edits show no marks."
    ]


def _own_drift(run: dict[str, Any]) -> dict[int, float]:
    """Each edit's own drift against the run's median edit, by edit number: as the guard measured it (also for
    the edits it rejected), else as the run recorded it (``edit_drift``); empty for runs made before editkit
    kept it."""
    points = {
        r["n_edits"]: d
        for r in run["records"]
        if (d := (r.get("guard") or {}).get("drift", r.get("edit_drift"))) is not None
    }
    typical = median(points.values()) if points else 0.0
    return {n: d / typical for n, d in points.items()} if typical > 0 else {}


def forgetting_summary(run: dict[str, Any]) -> dict[str, Any]:
    """The forgetting paper's Table 3 (properties of an editor at scale) for one sequential run, in numbers.

    The downstream signal is the task the unedited model does best (highest AUC: on SmolLM2 only SST-2 is
    above chance). Catastrophic forgetting (CF) is placed at the first checkpoint where any of these holds:
    that task's AUC has lost half its margin over chance (AUC <= 0.5 + (AUC_0 - 0.5) / 2); half or more of the
    earlier successful edits are forgotten; the edits made since the previous checkpoint succeed less than half
    as often as those of the first interval. ``cf_at`` is ``None`` when no checkpoint qualifies."""
    checkpoints = run["checkpoints"]
    base = checkpoints[0]["downstream"]
    task = max(base, key=lambda t: base[t]["auc"]) if base else None
    floor = 0.5 + (base[task]["auc"] - 0.5) / 2 if task else None
    records = [r for r in run["records"] if "rejected" not in r]
    kept_rate: list[float] = []
    cf_at, reason = None, ""
    for prev, ck in itertools.pairwise(checkpoints):
        window = [edit_success(r["post"]) > 0.5 for r in records if prev["n_edits"] < r["n_edits"] <= ck["n_edits"]]
        if window:
            kept_rate.append(sum(window) / len(window))
        auc = ck["downstream"].get(task, {}).get("auc") if task else None
        if floor is not None and auc is not None and auc <= floor:
            cf_at, reason = ck["n_edits"], f"{task} AUC {auc:.2f}"
        elif ck["forgotten_fraction"] >= 0.5:
            cf_at, reason = ck["n_edits"], f"{ck['forgotten_fraction']:.0%} of earlier edits forgotten"
        elif len(kept_rate) > 1 and kept_rate[-1] < kept_rate[0] / 2:
            cf_at, reason = ck["n_edits"], f"new edits succeed {kept_rate[-1]:.0%} of the time"
        if cf_at is not None:
            break
    own = list(_own_drift(run).values())
    before_cf = [r for r in records if cf_at is None or r["n_edits"] <= cf_at]
    agg = run["aggregates"]
    last = checkpoints[-1]
    return {
        "n_edits": run["n_edits"],
        "efficacy": agg.get("efficacy", agg.get("es")),
        "efficacy_before_cf": sum(edit_success(r["post"]) > 0.5 for r in before_cf) / len(before_cf)
        if before_cf
        else None,
        "neighborhood": agg.get("neighborhood"),
        "unedited_neighborhood": agg.get("unedited_neighborhood"),
        "cf_at": cf_at,
        "cf_reason": reason,
        "task": task,
        "task_auc": (base[task]["auc"], last["downstream"][task]["auc"])
        if task and task in last["downstream"]
        else None,
        # F1, the paper's measure, also moves with the model's label bias, which AUC ignores
        "task_f1": (base[task]["f1"], last["downstream"][task]["f1"])
        if task and task in last["downstream"] and "f1" in base[task]
        else None,
        "forgotten": (last.get("forgotten", 0), last.get("succeeded", 0)),
        "disabling_edits": len(run.get("disabling_edits", [])),
        # edits the guard rolled back; None for a run without the guard
        "rejected": len(run.get("rejected_edits", [])) if "guard" in run else None,
        # the largest own drift against the median, and how many are 10x, where the run has them
        "own_drift": (max(own), sum(d > 10 for d in own), len(own)) if own else None,
    }


def _forgetting_table(runs: Sequence[dict[str, Any]]) -> list[str]:
    rows = [(_label(r), forgetting_summary(r)) for r in runs]
    lines = [
        "| property (forgetting paper, Table 3) | " + " | ".join(label for label, _ in rows) + " |",
        "|---" * (len(rows) + 1) + "|",
    ]

    def row(name: str, cells: Sequence[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    row("edits made", [str(s["n_edits"]) for _, s in rows])
    row(
        "editing efficacy (new edits; until CF)",
        [f"{_fmt(s['efficacy'])}; {_fmt(s['efficacy_before_cf'])}" for _, s in rows],
    )
    row(
        "edit locality (neighborhood of new edits; unedited)",
        [f"{_fmt(s['neighborhood'])}; {_fmt(s['unedited_neighborhood'])}" for _, s in rows],
    )
    row(
        "edits before catastrophic forgetting",
        [f"{s['cf_at']} ({s['cf_reason']})" if s["cf_at"] else f"none in {s['n_edits']}" for _, s in rows],
    )
    row(
        "downstream loss (the best task's AUC; F1; unedited -> end)",
        [
            f"{s['task']} {a[0]:.2f} -> {a[1]:.2f}" + (f"; F1 {f[0]:.2f} -> {f[1]:.2f}" if (f := s["task_f1"]) else "")
            if (a := s["task_auc"])
            else ""
            for _, s in rows
        ],
    )
    row(
        "earlier edits forgotten at the end",
        [f"{f} of {n} ({f / n:.1%})" if n else "0" for _, s in rows for f, n in [s["forgotten"]]],
    )
    row("disabling edits flagged in the run", [str(s["disabling_edits"]) for _, s in rows])
    if any(s["rejected"] is not None for _, s in rows):
        row("edits the guard rejected", ["no guard" if s["rejected"] is None else str(s["rejected"]) for _, s in rows])
    row(
        "largest edit's own drift, x the median (edits >= 10x)",
        [f"{d[0]:.1f}x ({d[1]} of {d[2]})" if (d := s["own_drift"]) else "not recorded" for _, s in rows],
    )
    lines += [
        "",
        "CF is the first checkpoint where the best task's AUC has lost half its margin over chance, half the "
        "earlier edits are forgotten, or new edits succeed less than half as often as in the first interval.",
    ]
    return lines


def write_report(paths: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Write ``report.md`` and its plots into ``out_dir``; returns the Markdown file's path."""
    import matplotlib

    matplotlib.use("Agg")
    runs = load_runs(paths)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValidationError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    md = ["# editkit report", "", "Runs:", ""]
    md += [f"- `{r['_path']}`: {_label(r)}, {r['protocol']}, code {r['code_version']}" for r in runs]
    md += ["", "## Aggregates", "", *_table(runs), ""]
    batch = [r for r in runs if r["protocol"] == "batch" and len(r.get("aggregates_by_k", {})) > 1]
    if batch:
        md += ["## Many edits at once", "", *_plot_batch(batch, out), ""]
    seq = [r for r in runs if r["protocol"] == "sequential"]
    if seq:
        md += ["## Sequential edits", "", *_plot_sequential(seq, out), ""]
        md += ["### At scale: Table 3 of the forgetting paper, measured", "", *_forgetting_table(seq), ""]
    md += generations_section(runs, _label)
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path
