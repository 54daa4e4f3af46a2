"""Concurrent queries share one generation pass.

The service serves one pass at a time (its lock), so queries that arrive while a pass runs wait; the batcher
makes that wait useful: one worker thread takes every waiting query with the same generation settings (up to
``max_batch``) and answers them in one :meth:`~editkit.service.EditService.answer` call. A query is answered by
the model as it was for the whole pass: an edit waits for the pass to finish, never lands in the middle.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from editkit.server.metrics import Metrics
from editkit.service import EditService

Answer = tuple[str, dict[str, Any]]


@dataclass
class _Query:
    prompt: str
    key: tuple[int, bool]  # (max_new_tokens, stop_at_newline): queries batch only with the same settings
    future: Future[Answer] = field(default_factory=Future)


class Batcher:
    """One worker thread answering queued prompts in batches (module docstring)."""

    def __init__(self, service: EditService, metrics: Metrics, *, max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.service = service
        self.metrics = metrics
        self.max_batch = max_batch
        self._queue: list[_Query] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="editkit-batcher", daemon=True)
        self._thread.start()

    def submit(self, prompt: str, max_new_tokens: int, *, stop_at_newline: bool = False) -> Future[Answer]:
        query = _Query(prompt, (max_new_tokens, stop_at_newline))
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append(query)
            self._cond.notify()
        return query.future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _take(self) -> list[_Query] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            key = self._queue[0].key
            batch = [q for q in self._queue if q.key == key][: self.max_batch]
            taken = {id(q) for q in batch}
            self._queue = [q for q in self._queue if id(q) not in taken]
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            max_new_tokens, stop = batch[0].key
            self.metrics.batch(len(batch))
            try:
                answers = self.service.answer([q.prompt for q in batch], max_new_tokens, stop_at_newline=stop)
            except BaseException as exc:  # handed to every waiting request; the worker goes on
                for q in batch:
                    q.future.set_exception(exc)
                continue
            for q, a in zip(batch, answers, strict=True):
                q.future.set_result(a)
