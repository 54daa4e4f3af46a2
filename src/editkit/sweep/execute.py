"""Running a sweep's runs (:mod:`editkit.sweep.grid`) as Ray tasks.

Each task is one ``editkit eval`` run (:func:`editkit.evaluation.runner.run`): a whole run or one case-range shard
of a batch run; or one part of a run's residuals (:func:`~editkit.residuals.cache_residuals`), which the run's own
task waits for (a part that fails, fails the run). A task asks Ray for ``threads`` CPUs (the run after its parts:
``run_threads``) and ``gpus`` GPUs, runs with that many torch threads, and gets a fresh worker process
(``max_calls=1``: its memory is freed and its peak memory is its own). Ray reruns a task whose worker died up to
``retries`` times; a run's failure (bad input) is reported, not retried.

Nothing is done twice: a task whose results file exists, made with the same settings (the ``run`` block; torch
threads aside), is skipped, a residual part optimises only what its folder lacks, and a sequential run resumes from
its state folder (``STATE_DIR/NAME.state``, :mod:`editkit.evaluation.runstate`), so running the sweep again after a
crash, on this machine or with ``--address`` on a cluster sharing the folder, finishes what was left. A sequential
run whose state folder was lost resumes from its snapshot in ``snapshot_dir``, if the sweep keeps them
(:mod:`editkit.sweep.snapshot`). When every shard of a batch run is done, they are merged into the run's results
file (:func:`~editkit.sweep.merge.merge_batch`).

Ray is imported here only, when a sweep executes: ``import editkit`` and the CLI's other commands never load it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from editkit.errors import EditkitError, ValidationError
from editkit.evaluation.results import load_results
from editkit.evaluation.runner import RunConfig, write_results_or_keep
from editkit.evaluation.runstate import RunState
from editkit.residuals import residual_files
from editkit.sweep.grid import SweepConfig, SweepRun
from editkit.sweep.merge import merge_batch
from editkit.sweep.snapshot import seed_from_snapshots, snapshot_path

EXECUTION_ONLY = ("threads",)  # run settings that change how fast a run goes, not its results
PROGRESS_SECONDS = 60.0  # how often a sweep says how far its running sequential runs have come


@dataclass
class Outcome:
    """What a sweep did: the runs it finished now, those already done before, and the failures (name, reason)."""

    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def is_done(config: RunConfig) -> bool:
    """Whether ``config``'s results file exists and was made with its settings (torch threads aside)."""
    out = Path(config.out)
    if not out.is_file():
        return False
    try:
        made = load_results(out).get("run")
    except ValidationError:
        return False
    wanted = {k: v for k, v in config.to_dict().items() if k not in EXECUTION_ONLY}
    return isinstance(made, dict) and {k: v for k, v in made.items() if k not in EXECUTION_ONLY} == wanted


@dataclass(frozen=True)
class Job:
    """A task to submit: the run ``config`` of sweep run ``name`` (a shard's, or the whole run's), or with
    ``part`` (I, N) the I-th of N parts of its residuals."""

    name: str
    config: RunConfig
    part: tuple[int, int] | None = None

    @property
    def tag(self) -> str:
        if self.part is not None:
            return f" [residuals {self.part[0]}/{self.part[1]}]"
        return f" [{self.config.case_range}]" if self.config.case_range else ""


def run_task(config: dict[str, Any], cwd: str, part: tuple[int, int] | None = None, *after: Any) -> dict[str, Any]:
    """A Ray task: the run ``config`` describes, or with ``part`` that part of its residuals, from the driver's
    working folder where this machine has it (relative paths in the sweep are relative to it); ``after`` are
    the results of the tasks it waited for. Returns the seconds it took, or the one-line error of a run the user
    must fix."""
    from editkit.evaluation.runner import run
    from editkit.residuals import cache_residuals

    if Path(cwd).is_dir():
        os.chdir(cwd)
    t0 = time.perf_counter()
    try:
        if part is not None:
            cache_residuals(RunConfig.from_dict(config), (part[0], part[1]))
        else:
            run(RunConfig.from_dict(config), progress=False)
    except EditkitError as exc:
        return {"error": str(exc)}
    return {"seconds": time.perf_counter() - t0}


def execute(
    sweep: SweepConfig,
    runs: Sequence[SweepRun],
    *,
    address: str | None = None,
    max_parallel: int | None = None,
    on_event: Callable[[str], None] = lambda _: None,
) -> Outcome:
    """Run every task of ``runs`` that is not done yet on Ray (the running Ray if this process has one; else
    the cluster at ``address``; else a local Ray started here, with ``max_parallel`` x ``threads`` CPUs or every
    core), at most ``max_parallel`` at once, merge sharded runs, and say what happens through ``on_event``."""
    import ray

    t_start = time.perf_counter()
    outcome = Outcome()
    jobs: list[Job] = []
    for r in runs:
        if is_done(r.config):
            outcome.skipped.append(r.name)
            on_event(f"{r.name}: done before, kept")
            continue
        n, part = r.residual_parts, replace(r.config, threads=sweep.threads)
        jobs += [Job(r.name, part, (i, n)) for i in range(1, n + 1)]  # parts a rerun finds done take seconds
        jobs += [Job(r.name, s) for s in (r.shards or [r.config]) if not is_done(s)]
    if sweep.snapshot_dir:
        for line in seed_from_snapshots([r for r in runs if r.name not in outcome.skipped], sweep.snapshot_dir):
            on_event(line)
    started = False
    if jobs and not ray.is_initialized():
        try:
            if address is not None:
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
            else:
                cpus = sweep.threads * max_parallel if max_parallel else max(os.cpu_count() or 1, sweep.threads)
                cpus = max(cpus, *(j.config.threads or 1 for j in jobs))
                # "local": a Ray of its own, even where `ray start` left a cluster that ray.init() would join
                ray.init(
                    address="local",
                    num_cpus=cpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if address is None:
                raise ValidationError(f"could not start a local Ray: {first}") from None
            # Ray reports a refused token only in its own log lines, and this error says no more than "failed".
            raise ValidationError(
                f"could not reach the Ray cluster at {address}: {first}. If `ray start` said that token "
                "authentication is enabled, set RAY_AUTH_MODE=token here too (the token is read from "
                "~/.ray/auth_token, or RAY_AUTH_TOKEN)"
            ) from None
        started = True
    try:
        if jobs:
            _check_fits(ray, jobs)
        failed = _run_jobs(ray, sweep, jobs, max_parallel, on_event)
    finally:
        if started:
            ray.shutdown()
    outcome.failed = sorted(failed.items())
    for r in runs:
        if r.name in outcome.skipped or r.name in failed:
            continue
        if r.shards:
            merged = merge_batch(r.config, [load_results(s.out) for s in r.shards])
            write_results_or_keep(Path(r.config.out), json.dumps(merged, indent=1))
            on_event(f"{r.name}: {len(r.shards)} shards merged into {r.config.out}")
        outcome.finished.append(r.name)
    outcome.seconds = time.perf_counter() - t_start
    return outcome


def status_of(run: SweepRun, snapshot_dir: str | None) -> str:
    """How far ``run`` is, from its files alone: done, its shards done, its state's or its snapshot's edits, or
    not started."""
    if is_done(run.config):
        return "done"
    shards_done = sum(is_done(s) for s in run.shards)
    if shards_done:
        return f"{shards_done} of {len(run.shards)} shards done"
    saved = RunState(Path(run.config.state)).results if run.config.state else None
    if saved is not None and saved.is_file():
        return f"{load_results(saved)['n_edits']} of {run.n_cases} edits, in its state"
    snapshot = snapshot_path(snapshot_dir, run.name) if snapshot_dir else None
    if snapshot is not None and snapshot.is_file():
        return f"{load_results(snapshot)['n_edits']} of {run.n_cases} edits, in its snapshot (resumes by replay)"
    return "not started"


def progress_lines(
    running: Iterable[tuple[str, RunConfig]], seen: dict[str, int], kept: Mapping[str, Sequence[Path]] | None = None
) -> list[str]:
    """``NAME: n of N edits`` for each running sequential run whose state folder's partial results have moved
    since ``seen`` (run name -> count last said; updated), and ``NAME: n of N residuals kept`` for a run whose
    residuals' files ``kept`` lists (:func:`~editkit.residuals.residual_files`: its own, not those of other runs
    sharing the folder). Other runs, or runs with nothing saved yet, say nothing."""
    lines = []
    for name, config in running:
        files = (kept or {}).get(name)
        if files is not None:
            n_files = sum(path.is_file() for path in files)
            if n_files and seen.get(name) != n_files:
                seen[name] = n_files
                lines.append(f"{name}: {n_files} of {len(files)} residuals kept")
            continue
        if config.state is None:
            continue
        try:
            saved = json.loads(RunState(Path(config.state)).results.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not written yet; the runner replaces it whole, so never half-written
            continue
        n = saved.get("n_edits") if isinstance(saved, dict) else None
        if isinstance(n, int) and seen.get(name) != n:
            seen[name] = n
            lines.append(f"{name}: {n} of {saved.get('n_cases', '?')} edits")
    return lines


def _check_fits(ray: Any, jobs: Sequence[Job]) -> None:
    """Refuse tasks that ask for more CPUs than any node of the Ray cluster has (Ray would wait for them for
    ever)."""
    wanted = max((j.config.threads or 1 for j in jobs), default=1)
    largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    if wanted > largest:
        raise ValidationError(
            f"a task asks for {wanted} CPUs (threads / run_threads) and the largest node of the Ray cluster has "
            f"{largest:g}: give fewer threads"
        )


def _run_jobs(
    ray: Any,
    sweep: SweepConfig,
    jobs: Sequence[Job],
    max_parallel: int | None,
    on_event: Callable[[str], None],
) -> dict[str, str]:
    """Submit ``jobs`` to Ray in their order, at most ``max_parallel`` in flight (a run's task after its residual
    parts, as one waiting for them); the failed runs' reasons."""
    task = ray.remote(
        num_cpus=sweep.threads, num_gpus=sweep.gpus, max_retries=sweep.retries, retry_exceptions=False, max_calls=1
    )(run_task)
    cwd = os.getcwd()
    waiting = list(jobs)
    flying: dict[Any, Job] = {}
    parts: dict[str, list[Any]] = {}  # run name -> its residual parts' tasks
    kept: dict[str, list[Path]] = {}  # run name -> its residuals' files, listed at the first progress report
    failed: dict[str, str] = {}
    limit = max_parallel or len(jobs)
    seen: dict[str, int] = {}
    while waiting or flying:
        while waiting and len(flying) < limit:
            job = waiting.pop(0)
            after = [] if job.part is not None else parts.get(job.name, [])
            ref = task.options(num_cpus=job.config.threads or sweep.threads).remote(
                job.config.to_dict(), cwd, job.part, *after
            )
            if job.part is not None:
                parts.setdefault(job.name, []).append(ref)
            flying[ref] = job
        done, _ = ray.wait(list(flying), num_returns=1, timeout=PROGRESS_SECONDS)
        if not done:
            for j in flying.values():
                if j.part is not None and j.name not in kept:
                    try:
                        kept[j.name] = residual_files(j.config)
                    except EditkitError as exc:  # its tasks will fail and say why; the sweep goes on
                        kept[j.name] = []
                        on_event(f"{j.name}: its residuals not counted: {exc}")
            for line in progress_lines([(j.name, j.config) for j in flying.values()], seen, kept):
                on_event(line)
            continue
        (ready,) = done
        job = flying.pop(ready)
        try:
            result = ray.get(ready)
        except Exception as exc:  # a bug in the run, or a worker that died more often than retries allow
            result = {"error": str(exc).strip().splitlines()[-1]}
        if "error" in result:
            failed.setdefault(job.name, result["error"])
            on_event(f"{job.name}{job.tag}: failed: {result['error']}")
        else:
            on_event(f"{job.name}{job.tag}: done in {result['seconds']:.1f} s")
    return failed
