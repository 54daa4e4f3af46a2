"""The report's section of judged generations (SERAC Table 7 in kind): for runs whose records keep
``generations`` (``editkit eval --judge-tokens N``, :mod:`editkit.evaluation.judged`), a table per run of the
first cases' first question, the requested sentiment, the unedited model's generation and the edited model's,
each with the judge's probability of the requested sentiment."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

EXAMPLES = 6  # cases shown per run


def _cell(text: str) -> str:
    """Generated text in a Markdown table cell: one line, pipes escaped, a blank answer named."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat or "(blank)"


def generations_section(
    runs: Sequence[dict[str, Any]], label: Callable[[dict[str, Any]], str], examples: int = EXAMPLES
) -> list[str]:
    """Markdown lines of the section (none when no run judged generations); ``label`` names a run."""
    judged = [r for r in runs if any("generations" in rec for rec in r.get("records", []))]
    if not judged:
        return []
    lines = [
        "## Generations before and after an edit (judged sentiment)",
        "",
        "Greedy generations to each edit's first in-scope question; in parentheses the sentiment judge's "
        "probability of the requested sentiment (`es_sent_judged`: the share above 0.5 over all questions).",
        "",
    ]
    for run in judged:
        judge = run.get("judge", {})
        lines += [
            f"### {label(run)}",
            "",
            f"Judge `{judge.get('fingerprint', '?')}`, {judge.get('max_new_tokens', '?')} new tokens.",
            "",
            "| case | question | wanted | before (unedited) | after (edited) |",
            "|---|---|---|---|---|",
        ]
        shown = [rec for rec in run["records"] if rec.get("generations")][:examples]
        for rec in shown:
            g = rec["generations"][0]
            lines.append(
                f"| {rec['case_id']} | {_cell(g['prompt'])} | {g['sentiment']} | {_cell(g['before'])} "
                f"({g['score_before']:.2f}) | {_cell(g['after'])} ({g['score_after']:.2f}) |"
            )
        lines.append("")
    return lines
