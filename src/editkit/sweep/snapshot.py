"""Snapshots of a sweep's unfinished sequential runs, kept in the work tree (the sweep's ``snapshot_dir``) to commit.

A sequential run's state lives under ``state_dir``, usually the cache outside the work tree (it holds weights), and
a cache can be lost with its machine: a run of many hours would then start again. ``editkit sweep CONFIG
--snapshot`` copies each unfinished run's partial results (``STATE/results.json``: its records and checkpoints,
no weights and none of the data set's text) to ``snapshot_dir/NAME.json``, keeping a snapshot that is further
along, and removes the snapshot of a run that has finished (its results file replaces it).

When the sweep executes, a run whose state folder holds no results starts from its snapshot: the runner rebuilds
the weights by replaying the records (:func:`~editkit.evaluation.replay.replay_records`, each edit checked against
the drift the run recorded) and goes on. A snapshot whose records cannot be replayed (an editor without
``capabilities.replay``) is reported and left alone; that run starts afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from editkit.errors import ValidationError
from editkit.evaluation.results import load_results
from editkit.evaluation.runner import RunConfig
from editkit.evaluation.runstate import RunState
from editkit.files import atomic_write
from editkit.sweep.grid import SweepRun


def _sequential(runs: Sequence[SweepRun]) -> list[tuple[SweepRun, RunState]]:
    return [(r, RunState(Path(r.config.state))) for r in runs if r.config.state is not None]


def snapshot_path(snapshot_dir: str | Path, name: str) -> Path:
    """Where run ``name``'s snapshot lives in ``snapshot_dir``."""
    return Path(snapshot_dir) / f"{name}.json"


def _n_edits(path: Path) -> int:
    return int(load_results(path).get("n_edits", 0))


def replayable(results: dict[str, Any]) -> bool:
    """Whether partial results can rebuild their weights: nothing edited yet, or records that keep each call's
    ``replay`` (ROME, MEMIT, AlphaEdit, KN)."""
    records = results.get("records", [])
    return results.get("n_edits", 0) == 0 or any("replay" in r for r in records)


def take_snapshots(
    runs: Sequence[SweepRun], snapshot_dir: str | Path, is_done: Callable[[RunConfig], bool]
) -> list[str]:
    """Copy each unfinished sequential run's partial results to ``snapshot_dir/NAME.json`` and drop the snapshots
    of runs that ``is_done`` (:func:`editkit.sweep.execute.is_done`). Returns a line per snapshot written, kept or
    removed."""
    said = []
    for r, state in _sequential(runs):
        snapshot = snapshot_path(snapshot_dir, r.name)
        if is_done(r.config):
            if snapshot.exists():
                snapshot.unlink()
                said.append(f"{r.name}: finished, snapshot {snapshot} removed")
            continue
        if not state.results.exists():
            continue
        n, kept = _n_edits(state.results), _n_edits(snapshot) if snapshot.exists() else -1
        if kept > n:
            said.append(f"{r.name}: {snapshot} is further along than {state.folder} ({kept} > {n}): kept")
            continue
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(snapshot, state.results.read_bytes())
        said.append(f"{r.name}: {n} edits -> {snapshot}")
    return said


def seed_from_snapshots(runs: Sequence[SweepRun], snapshot_dir: str | Path) -> list[str]:
    """Start each sequential run whose state folder holds no results from its snapshot in ``snapshot_dir``, if
    its records can be replayed. Returns a line per run seeded or refused."""
    said = []
    for r, state in _sequential(runs):
        snapshot = snapshot_path(snapshot_dir, r.name)
        if state.results.exists() or not snapshot.is_file():
            continue
        try:
            results = load_results(snapshot)
        except ValidationError as exc:
            said.append(f"{r.name}: snapshot not used ({exc}); the run starts afresh")
            continue
        if not replayable(results):
            said.append(f"{r.name}: {snapshot}'s records cannot rebuild the weights (no replay); the run starts afresh")
            continue
        state.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(state.results, snapshot.read_bytes())
        said.append(f"{r.name}: resumes from {snapshot} ({results.get('n_edits', 0)} edits, replayed from records)")
    return said
