"""A sweep's grid (:class:`SweepConfig`, read from YAML) expanded into ``editkit eval`` runs (:func:`expand`).

Every run is a :class:`~editkit.evaluation.runner.RunConfig`, so a run of a sweep is the run ``editkit eval``
makes with the same settings. Its results go to ``OUT_DIR/NAME.json``; a sequential run keeps its resumable state
in ``STATE_DIR/NAME.state`` (``state_dir``, default ``out_dir``). A batch run is split into ``shards`` tasks by
case range (``case_range``), each writing ``OUT_DIR/NAME.shards/START-END.json``, merged afterwards
(:mod:`editkit.sweep.merge`); a shard edits the groups of cases that begin in its range. A batch run of an editor
that keeps its target residuals (rome, memit, alphaedit with ``residual_cache=FOLDER``) is split otherwise: its
residuals, what such a run spends its time on, are optimised in ``shards`` tasks first
(:func:`~editkit.residuals.cache_residuals`, part I of N), then one task runs it and reads them. That
splits MEMIT's 10,000 edits at once, one group that no case range can cut.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from editkit.configfile import read_yaml
from editkit.errors import ConfigError
from editkit.evaluation.runner import RunConfig
from editkit.residuals import residual_folder
from editkit.typedconfig import TypedConfig

AXES = ("models", "methods", "orderings", "seeds", "protocols")
# RunConfig fields the grid sets itself; the shared ``run`` block and the protocol blocks may not
GRID_FIELDS = frozenset(
    {"model", "method", "label", "settings", "data", "format", "limit", "sample", "shuffle", "seed", "protocol"}
    | {"out", "state", "case_range", "threads"}
)


@dataclass
class SweepConfig(TypedConfig):
    """A sweep file's settings. The grid is every combination of its five axes (``models``, ``methods``,
    ``orderings``, ``seeds``, ``protocols``); every other RunConfig setting goes in ``run`` (all runs),
    ``batch`` or ``sequential`` (runs of that protocol)."""

    out_dir: str = field(default="", metadata={"help": "folder for every run's results and state"})
    state_dir: str | None = field(
        default=None,
        metadata={"help": "folder for sequential runs' resumable state (default out_dir; it holds weights)"},
    )
    snapshot_dir: str | None = field(
        default=None,
        metadata={
            "help": "folder in the work tree for unfinished sequential runs' partial results (--snapshot), to "
            "commit; a run whose state is gone resumes from its snapshot by replaying the records"
        },
    )
    data: str = field(default="", metadata={"help": "the data file every run reads"})
    format: str | None = field(default=None, metadata={"help": "the data file's format (default: detected)"})
    limit: int | None = field(default=None, metadata={"help": "read the first N cases"})
    sample: int | None = field(default=None, metadata={"help": "N cases drawn (seeded by the run's seed)"})
    models: list[str] = field(default_factory=list, metadata={"help": "model names or folders"})
    methods: list[Any] = field(
        default_factory=list,
        metadata={
            "help": "method names, or {label, method, settings, format} mappings (label: the run's name; format: "
            "how this method reads the data file, where methods take the same cases in different forms)"
        },
    )
    orderings: list[int | None] = field(
        default_factory=lambda: [None],
        metadata={"help": "case orderings: null (file order) or a seed shuffling the cases read"},
    )
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "RunConfig seeds"})
    protocols: list[Literal["batch", "sequential"]] = field(
        default_factory=lambda: ["batch"], metadata={"help": "batch and / or sequential"}
    )
    run: dict[str, Any] = field(default_factory=dict, metadata={"help": "RunConfig settings of every run"})
    batch: dict[str, Any] = field(default_factory=dict, metadata={"help": "RunConfig settings of batch runs"})
    sequential: dict[str, Any] = field(default_factory=dict, metadata={"help": "RunConfig settings of sequential runs"})
    shards: int = field(
        default=1,
        metadata={
            "help": "split each batch run into up to N tasks by case range (runs that keep their residuals: the "
            "residuals into N tasks, then the run)"
        },
    )
    threads: int = field(default=1, metadata={"help": "torch threads (CPUs) per task"})
    run_threads: int | None = field(
        default=None,
        metadata={
            "help": "torch threads (CPUs) of the task that runs a batch run after its residual tasks (its keys, "
            "update and scoring, once the cores its residuals took are free); default: threads"
        },
    )
    gpus: float = field(default=0.0, metadata={"help": "GPUs per task (device cuda unless run sets device)"})
    retries: int = field(default=2, metadata={"help": "times Ray reruns a task whose worker died"})

    def validate(self) -> None:
        if not self.out_dir:
            raise ConfigError("the sweep needs out_dir (a folder for its results)")
        if not self.data:
            raise ConfigError("the sweep needs data (a data file)")
        for axis in AXES:
            if not getattr(self, axis):
                raise ConfigError(f"the grid is empty: {axis!r} has no entries")
        low_run = self.run_threads is not None and self.run_threads < 1
        if self.shards < 1 or self.threads < 1 or low_run or self.gpus < 0 or self.retries < 0:
            raise ConfigError("shards, threads and run_threads must be at least 1, gpus and retries at least 0")
        for block in ("run", "batch", "sequential"):
            taken = sorted(set(getattr(self, block)) & GRID_FIELDS)
            if taken:
                raise ConfigError(f"{block}: {taken} are set by the sweep's grid (its top-level keys), not here")

    def method_entries(self) -> list[MethodEntry]:
        """Every entry of ``methods``; labels are unique."""
        entries: list[MethodEntry] = []
        for m in self.methods:
            if isinstance(m, str):
                entries.append(MethodEntry(m, m, {}, self.format))
            elif isinstance(m, dict) and "method" in m and not set(m) - {"label", "method", "settings", "format"}:
                label, method = str(m.get("label", m["method"])), str(m["method"])
                entries.append(MethodEntry(label, method, dict(m.get("settings") or {}), m.get("format", self.format)))
            else:
                raise ConfigError(
                    f"methods: {m!r} is neither a method name nor a {{label, method, settings, format}} mapping"
                )
        labels = [e.label for e in entries]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise ConfigError(f"methods: label {twice[0]!r} is used twice (give each entry its own label)")
        return entries


@dataclass(frozen=True)
class MethodEntry:
    """One entry of a sweep's ``methods``: the runs' label, the method, its settings and the data format it reads
    (the sweep's unless the entry names its own)."""

    label: str
    method: str
    settings: dict[str, Any]
    format: str | None


@dataclass
class SweepRun:
    """One run of the grid: ``config`` is the whole run; ``shards`` the case-range runs that make it (empty: one
    task runs ``config``), or ``why`` it is not sharded; ``residual_parts`` the tasks that optimise its residuals
    before the task that runs it (0: none)."""

    name: str
    config: RunConfig
    n_cases: int
    shards: list[RunConfig] = field(default_factory=list)
    why: str = ""
    residual_parts: int = 0

    @property
    def tasks(self) -> int:
        return (len(self.shards) or 1) + self.residual_parts


def load_sweep(path: str | Path) -> SweepConfig:
    """The sweep file at ``path``, checked (unknown keys, types, empty axes)."""
    return SweepConfig.from_dict(read_yaml(Path(path)))


def expand(sweep: SweepConfig) -> list[SweepRun]:
    """Every run of the grid, in the order models, methods, orderings, seeds, protocols; each checked as
    ``editkit eval`` checks a run (its RunConfig, its method and settings, its model name) before anything runs."""
    from editkit.editors import create_editor
    from editkit.models.zoo import check_model_name

    if not Path(sweep.data).is_file():
        raise ConfigError(f"data file {sweep.data} does not exist")
    entries = sweep.method_entries()
    for entry in entries:
        create_editor(entry.method, entry.settings)  # an unknown method or setting fails here, naming it
    for model in sweep.models:
        check_model_name(model)
    counts: dict[tuple[str | None, int], int] = {}
    out = Path(sweep.out_dir)
    states = Path(sweep.state_dir).expanduser() if sweep.state_dir else out
    runs = []
    for model in sweep.models:
        for entry in entries:
            for ordering in sweep.orderings:
                for seed in sweep.seeds:
                    if (entry.format, seed) not in counts:
                        counts[(entry.format, seed)] = _n_cases(sweep, entry.format, seed)
                    for protocol in sweep.protocols:
                        order = "file" if ordering is None else f"shuffle{ordering}"
                        name = f"{entry.label}_{Path(model).name.lower()}_{order}_seed{seed}_{protocol}"
                        values = {**sweep.run, **getattr(sweep, protocol)}
                        if sweep.gpus > 0:
                            values.setdefault("device", "cuda")
                        config = RunConfig.build(
                            None,
                            **values,
                            model=model,
                            method=entry.method,
                            label=name,
                            settings=entry.settings,
                            data=sweep.data,
                            format=entry.format,
                            limit=sweep.limit,
                            sample=sweep.sample,
                            shuffle=ordering,
                            seed=seed,
                            protocol=protocol,
                            threads=sweep.threads,
                            out=str(out / f"{name}.json"),
                            state=str(states / f"{name}.state") if protocol == "sequential" else None,
                        )
                        runs.append(_sharded(SweepRun(name, config, counts[(entry.format, seed)]), sweep, out))
    return runs


def _n_cases(sweep: SweepConfig, data_format: str | None, seed: int) -> int:
    """How many cases a run reads in ``data_format`` (after ``limit`` and the ``sample`` seeded by ``seed``)."""
    from editkit.data.formats import load_cases

    skip = bool(sweep.run.get("skip_invalid", False))
    n = len(load_cases(sweep.data, format=data_format, limit=sweep.limit, skip_invalid=skip).cases)
    return min(n, sweep.sample) if sweep.sample is not None else n


def _sharded(run: SweepRun, sweep: SweepConfig, out: Path) -> SweepRun:
    """``run`` with up to ``sweep.shards`` case-range shards of about equal size (cut at multiples of every k
    where the cases allow, so groups of consecutive cases spread evenly), or its residuals in that many parts
    and the run with ``run_threads``."""
    config, shards = run.config, sweep.shards
    if config.protocol == "batch" and shards > 1 and residual_folder(config):
        run.residual_parts = shards
        threads = sweep.run_threads or sweep.threads
        run.config = replace(config, threads=threads)
        wide = f"; {threads} threads" if threads != sweep.threads else ""
        run.why = f"its residuals in {shards} tasks first{wide}"
        return run
    step = math.lcm(*config.edits_per_step)
    blocks = run.n_cases // step if run.n_cases % step == 0 else run.n_cases
    unit = run.n_cases // blocks
    parts = min(shards, blocks)
    if config.protocol != "batch":
        run.why = "sequential: its state folder resumes it"
    elif parts == 1:
        run.why = "shards: 1" if shards == 1 else f"{run.n_cases} cases make one group"
    else:
        cuts = [round(i * blocks / parts) * unit for i in range(parts + 1)]
        folder = out / f"{run.name}.shards"
        run.shards = [
            RunConfig.from_dict({**config.to_dict(), "case_range": f"{a}:{b}", "out": str(folder / f"{a}-{b}.json")})
            for a, b in itertools.pairwise(cuts)
        ]
    return run
