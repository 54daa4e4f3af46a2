"""Progress for long loops: a rich bar with ETA on a terminal; on a pipe or log file (a background job), a plain
line to stderr every ``LINE_EVERY_SECONDS`` with the count, elapsed time and ETA; or nothing."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

LINE_EVERY_SECONDS = 30.0


class _Null:
    def advance(self, n: int = 1) -> None:
        return None


class _Lines:
    """Progress as occasional lines, for output that is not a terminal."""

    def __init__(self, total: int, description: str, stream: IO[str], every: float, start: int = 0) -> None:
        self.total, self.description, self.stream, self.every = total, description, stream, every
        self.done = self.start = start
        self.started = self.last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = now - self.started
        new = self.done - self.start  # work done before (a resumed run) says nothing of this run's rate
        eta = elapsed / new * (self.total - self.done) if new else float("nan")
        return f"{self.description}: {self.done}/{self.total}, {elapsed:.0f} s elapsed, ETA {eta:.0f} s"


@contextmanager
def progress_bar(
    total: int, description: str, enabled: bool = True, *, stream: IO[str] | None = None, start: int = 0
) -> Iterator[Any]:
    """Progress of ``total`` units of work (call ``advance(n)`` once per unit), ``start`` of them done before (a
    resumed run; the ETA counts only this run's rate): a rich bar on a terminal, lines on any other ``stream``
    (default stderr), nothing when not ``enabled``."""
    if not enabled:
        yield _Null()
        return
    out = stream or sys.stderr
    if not out.isatty():
        yield _Lines(total, description, out, LINE_EVERY_SECONDS, start)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, completed=start)

        class _Bar:
            def advance(self, n: int = 1) -> None:
                bar.advance(task, n)

        yield _Bar()
