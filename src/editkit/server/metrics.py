"""The server's metrics in Prometheus' text exposition format (``GET /metrics``), without a client library.

* ``editkit_requests_total{route,status}``: requests answered, by route template and status code;
* ``editkit_request_seconds{route}``: a latency histogram per route (cumulative buckets, ``_sum``, ``_count``);
* ``editkit_edits_total{op}``: edits applied and rolled back through this process;
* ``editkit_edits_active``: active edits (the service's list);
* ``editkit_answers_total{answered_by}``: answers given by an edit, the base model or the edited weights, so the
  routed share is ``answered_by="edit"`` over the sum;
* ``editkit_batch_size``: a histogram of how many prompts shared a generation pass.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out, total = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += count
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {total}')
        braces = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{braces} {self.sum}", f"{name}_count{braces} {total}"]
        return out


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters and histograms, safe from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.edits: defaultdict[str, int] = defaultdict(int)
        self.answers: defaultdict[str, int] = defaultdict(int)
        self.batches = Histogram(BATCH_BUCKETS)

    def request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, status)] += 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def edit(self, op: str, n: int = 1) -> None:
        with self._lock:
            self.edits[op] += n

    def answer(self, answered_by: str) -> None:
        with self._lock:
            self.answers[answered_by] += 1

    def batch(self, size: int) -> None:
        with self._lock:
            self.batches.observe(size)

    def render(self, active_edits: int) -> str:
        with self._lock:
            lines = [
                "# HELP editkit_requests_total HTTP requests answered.",
                "# TYPE editkit_requests_total counter",
            ]
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f'editkit_requests_total{{route="{_label(route)}",status="{status}"}} {n}')
            lines += ["# HELP editkit_request_seconds Request latency.", "# TYPE editkit_request_seconds histogram"]
            for route, hist in sorted(self.latency.items()):
                lines += hist.lines("editkit_request_seconds", f'route="{_label(route)}"')
            lines += ["# HELP editkit_edits_total Edits applied / rolled back.", "# TYPE editkit_edits_total counter"]
            lines += [f'editkit_edits_total{{op="{op}"}} {n}' for op, n in sorted(self.edits.items())]
            lines += ["# HELP editkit_edits_active Active edits.", "# TYPE editkit_edits_active gauge"]
            lines.append(f"editkit_edits_active {active_edits}")
            lines += [
                "# HELP editkit_answers_total Answers by what gave them (edit, base, weights).",
                "# TYPE editkit_answers_total counter",
            ]
            lines += [f'editkit_answers_total{{answered_by="{k}"}} {n}' for k, n in sorted(self.answers.items())]
            lines += ["# HELP editkit_batch_size Prompts per generation pass.", "# TYPE editkit_batch_size histogram"]
            lines += self.batches.lines("editkit_batch_size", "")
        return "\n".join(lines) + "\n"
