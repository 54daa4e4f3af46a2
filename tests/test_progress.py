"""Progress reporting off a terminal: background jobs get plain lines with counts and an ETA."""

import io

from editkit import progress
from editkit.progress import progress_bar


def test_a_pipe_gets_lines_with_count_and_eta(monkeypatch):
    monkeypatch.setattr(progress, "LINE_EVERY_SECONDS", 0.0)
    out = io.StringIO()
    with progress_bar(4, "training", stream=out) as bar:
        for _ in range(4):
            bar.advance()
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"training: {i}/4" for i in range(1, 5)]
    assert "ETA 0 s" in lines[-1]


def test_lines_are_rate_limited_but_the_last_is_always_written():
    out = io.StringIO()
    with progress_bar(100, "scoring", stream=out) as bar:
        for _ in range(100):
            bar.advance()
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]
    assert out.getvalue().startswith("scoring: 100/100")


def test_disabled_progress_writes_nothing():
    out = io.StringIO()
    with progress_bar(3, "quiet", enabled=False, stream=out) as bar:
        bar.advance(3)
    assert out.getvalue() == ""


def test_a_resumed_run_counts_from_where_it_stopped_and_estimates_from_its_own_rate(monkeypatch):
    clock = iter([0.0, 10.0])  # started at 0 s; one new step done at 10 s
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(progress, "LINE_EVERY_SECONDS", 0.0)
    out = io.StringIO()
    with progress_bar(100, "edits", stream=out, start=90) as bar:
        bar.advance()
    # 91 of 100 done; one step in 10 s leaves 9 steps, 90 s (not 10 / 91 * 9 = 1 s from the resumed count).
    assert out.getvalue().strip() == "edits: 91/100, 10 s elapsed, ETA 90 s"
