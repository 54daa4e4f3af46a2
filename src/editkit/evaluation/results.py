"""The results format: what a run's results JSON holds, the header every run writes, and reading files of any
version editkit has written.

``RESULTS_VERSION`` is the version written today. :func:`load_results` reads a results file (a finished run's, or
the partial ``results.json`` of a sequential run's state folder) and returns it migrated to that version, so
readers (the report, a resumed run, the replay, the benchmarks) know one shape only. What older files lack is
filled in here where it can be derived, and nowhere else:

* version 1 (protocol ``independent``: each case edited alone into the unedited model) is a batch run of k = 1:
  ``ks``, ``case_ids``, ``aggregates_by_k`` and each record's ``k`` / ``group`` are derived from its records;
* version 2 batch results kept the editor's ``info`` of a group's edits in every record of the group (at 700
  edits at once, 20 KB a record); version 3 keeps it once per group, with the group's edit time, in ``groups``;
* sequential results saved before ``total_seconds`` was kept take their steps' time (``seconds``) for it;
  before the guard, they had no ``rejected_edits``;
* records written before ``edit_drift`` was kept give a step's drift as the increment of the total drift
  (:func:`step_drift`; it cannot be filled in, as it is not the same measure);
* a state folder written before its file names carried the edit count names its files without it
  (:func:`saved_state_files`).

The on-disk JSON is a plain dict; :class:`Header` and :class:`DataSource` type the part every run writes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from editkit.data.formats import Dataset
from editkit.editors.base import Editor
from editkit.edits import EditCase
from editkit.errors import ValidationError
from editkit.files import read_json
from editkit.models.lm import LanguageModel
from editkit.provenance import code_version, environment

RESULTS_VERSION = 3


class DataSource(TypedDict):
    """A data file a run read (version 1 files have only ``path`` and ``sha256``)."""

    path: str
    sha256: str
    format: NotRequired[str]
    records: NotRequired[int]
    invalid_records_skipped: NotRequired[int]


class Header(TypedDict):
    """What every run's results begin with: how, on what and by which code the numbers were made."""

    version: int
    protocol: str  # "batch" or "sequential"
    code_version: str
    model: str
    method: str
    config: dict[str, Any]
    provenance: dict[str, str]
    data: list[DataSource]
    case_ids: list[str | None]
    n_cases: int
    environment: dict[str, Any]


def header(
    protocol: str, lm: LanguageModel, editor: Editor, cases: Sequence[EditCase], datasets: Sequence[Dataset]
) -> Header:
    """The header of a run of ``editor`` on ``lm`` over ``cases`` (read from ``datasets``)."""
    return {
        "version": RESULTS_VERSION,
        "protocol": protocol,
        "code_version": code_version(),
        "model": lm.name,
        "method": editor.name,
        "config": editor.config.to_dict(),
        "provenance": editor.provenance(),
        "data": [
            {
                "path": str(d.path),
                "format": d.format,
                "sha256": d.sha256,
                "records": d.n_records,
                "invalid_records_skipped": len(d.skipped),
            }
            for d in datasets
        ],
        "case_ids": [c.request.case_id for c in cases],
        "n_cases": len(cases),
        "environment": environment(lm.device),
    }


def canary_summary(canary: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """What results keep of the guard's canary examples: per task their count, a digest of the examples (for the
    run key) and the data set's ``idx`` of each where it has one; never their text."""
    summary = {}
    for task, examples in canary.items():
        digest = hashlib.sha256(json.dumps(examples, sort_keys=True).encode()).hexdigest()
        summary[task] = {"n": len(examples), "sha256": digest}
        if all("idx" in e for e in examples):
            summary[task]["idx"] = [e["idx"] for e in examples]
    return summary


def load_results(path: str | Path) -> dict[str, Any]:
    """A results file, migrated to :data:`RESULTS_VERSION`. A file that is not editkit results, or of a version
    this editkit does not know (a newer one), is a one-line :class:`ValidationError`."""
    path = Path(path)
    data = read_json(path, "results file")
    if not isinstance(data, dict) or "protocol" not in data:
        raise ValidationError(f"{path} is not an editkit results file (no protocol / aggregates)")
    version = data.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > RESULTS_VERSION:
        raise ValidationError(
            f"{path} has results version {version}, newer than this editkit reads ({RESULTS_VERSION}): update editkit"
        )
    known = (*_MIGRATIONS, RESULTS_VERSION)
    if version not in known:
        raise ValidationError(f"{path} has unknown results version {version!r} (known: {min(known)} to {max(known)})")
    while data["version"] != RESULTS_VERSION:
        data = _MIGRATIONS[data["version"]](data)
    if data["protocol"] == "sequential":
        _complete_sequential(data)
        if "aggregates" not in data and ("records" not in data or "checkpoints" not in data):
            raise ValidationError(f"{path} is a sequential run's file without records or checkpoints")
    elif "aggregates" not in data:
        raise ValidationError(f"{path} is not an editkit results file (no protocol / aggregates)")
    return data


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1's ``independent`` protocol is the batch protocol with k = 1 (one group per case)."""
    if data["protocol"] != "independent":
        raise ValidationError(f"results version 1 has no protocol {data['protocol']!r}")
    records = [{**r, "k": 1, "group": g} for g, r in enumerate(data["records"])]
    edited = {k: v for k, v in data["aggregates"].items() if not k.startswith("unedited_")}
    return {
        **data,
        "version": 2,
        "protocol": "batch",
        "case_ids": [r["case_id"] for r in records],
        "ks": [1],
        "distinct_subjects": False,
        "aggregates_by_k": {"1": {**edited, "n_cases": len(records)}},
        "records": records,
    }


def _from_version_2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 kept a batch group's ``info`` in each of its records (k copies); version 3 keeps it once per
    group under ``groups``. Sequential results did not change."""
    if data["protocol"] != "batch":
        return {**data, "version": 3}
    groups: dict[tuple[int, int], dict[str, Any]] = {}
    records = []
    for r in data.get("records", []):
        g = groups.setdefault((r["k"], r["group"]), {"k": r["k"], "group": r["group"], "edit_seconds": 0.0})
        g["edit_seconds"] += r["edit_seconds"]
        g.setdefault("info", r.get("info", {}))
        records.append({key: v for key, v in r.items() if key != "info"})
    return {**data, "version": 3, "groups": list(groups.values()), "records": records}


_MIGRATIONS = {1: _from_version_1, 2: _from_version_2}


def _complete_sequential(data: dict[str, Any]) -> None:
    """Fill in what version 2 sequential results saved by an earlier editkit lack and can be derived."""
    if "seconds" in data:
        data.setdefault("total_seconds", data["seconds"])  # before it was kept: the time of the steps
    if "records" in data:
        data.setdefault("rejected_edits", [])  # before the guard: none


def step_drift(records: Sequence[dict[str, Any]], i: int) -> float:
    """How far record ``i``'s step moved the weights: its own drift (``edit_drift``) or, in records written
    before editkit kept it, the increment of the total drift (which shrinks as the total grows)."""
    if "edit_drift" in records[i]:
        own: float = records[i]["edit_drift"]
        return own
    return float(records[i]["drift"] - (records[i - 1]["drift"] if i else 0.0))


def state_files(folder: Path, n_edits: int) -> tuple[Path, Path, Path]:
    """The files of a sequential run's state folder for the state after ``n_edits`` edits, as written today: the
    changed weights, what the editor remembers, and their meta data."""
    return (
        folder / f"weights-{n_edits}.safetensors",
        folder / f"editor-{n_edits}.safetensors",
        folder / f"weights-{n_edits}.json",
    )


def saved_state_files(folder: Path, n_edits: int) -> tuple[Path, Path, Path]:
    """The files that hold the state a state folder's results name (:func:`state_files`); a folder written before
    the file names carried the edit count has them without it."""
    files = state_files(folder, n_edits)
    if files[2].exists() or not (folder / "weights.json").exists():
        return files
    return folder / "weights.safetensors", folder / "editor.safetensors", folder / "weights.json"
