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
