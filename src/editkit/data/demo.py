"""A small demo set of edits, written for editkit (not taken from any benchmark).

``demo_edits.jsonl`` is in editkit's own format (:mod:`editkit.data.formats.native`), so it doubles as an example
file.
"""

from __future__ import annotations

from importlib import resources

from editkit.data.formats import load_cases
from editkit.edits import EditCase


def demo_cases() -> list[EditCase]:
    """Counterfactual edits with a paraphrase and an unrelated prompt each, for the quickstart and examples."""
    with resources.as_file(resources.files("editkit.data").joinpath("demo_edits.jsonl")) as path:
        return load_cases(path, format="editkit").cases
