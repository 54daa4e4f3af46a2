"""Distractor edits for a memory of up to 100,000 edits, when the shared data runs out (issue 31).

The held-out edit files hold about 20,000 edits. This script writes a file in editkit's format (JSON lines, no
probes) that starts with the edits of ``--real`` (as they are) and adds synthetic ones: for each subject of those
edits, ``--per-subject`` other relations' prompt templates from ROME's known-facts file (known_1000.json, the
templates of relations no two share) with a target drawn from the answers that file lists for the relation. A
synthetic edit is a plausible-looking counterfactual about a real entity ("Danielle Darrieux was born in Oslo"):
the memory fills with many edits of the same relations and, per subject, several edits of different relations,
which is what makes routing hard. Nothing is written into the repository: give an ``--out`` outside it.

    python benchmarks/synth_edits.py --real ../shared/data/counterfact/easyedit/counterfact-edit.json \\
        --per-subject 9 --out ~/.cache/editkit/synth/counterfact_edit_100k.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from editkit.data import load_cases
from editkit.files import atomic_write, read_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", required=True, help="held-out edit file whose edits come first and lend subjects")
    ap.add_argument("--templates", default="../shared/data/counterfact/rome_knowns/known_1000.json")
    ap.add_argument("--per-subject", type=int, default=9, help="synthetic edits per subject (other relations)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows = read_json(args.templates, "known-facts file")
    by_template: dict[str, set[str]] = {}
    answers: dict[str, set[str]] = {}
    for r in rows:
        by_template.setdefault(r["template"], set()).add(r["relation_id"])
        answers.setdefault(r["relation_id"], set()).add(r["attribute"])
    templates = sorted((t, next(iter(rs))) for t, rs in by_template.items() if len(rs) == 1 and t.count("{}") == 1)
    relations = sorted({rel for _, rel in templates})
    rng = random.Random(args.seed)
    dataset = load_cases(args.real, skip_invalid=True)
    lines = [json.dumps({"request": c.request.to_dict()}) for c in dataset.cases]
    subjects = list(dict.fromkeys(c.request.subject for c in dataset.cases if c.request.subject))
    for i, subject in enumerate(subjects):
        for rel in rng.sample(relations, min(args.per_subject, len(relations))):
            template = rng.choice([t for t, r in templates if r == rel])
            target = " " + rng.choice(sorted(answers[rel]))
            request = {"prompt": template, "subject": subject, "target_new": target, "case_id": f"synth-{i}-{rel}"}
            lines.append(json.dumps({"request": request}))
    Path(args.out).expanduser().parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(args.out).expanduser(), "\n".join(lines) + "\n")
    print(f"{len(dataset.cases)} real + {len(lines) - len(dataset.cases)} synthetic edits -> {args.out}")


if __name__ == "__main__":
    main()
