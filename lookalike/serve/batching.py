"""Micro-batching: requests that arrive together are embedded together, in one model call.

Request threads hand their item to ``MicroBatcher.submit`` and block; one worker thread takes the first waiting
item, collects whatever else arrives within ``max_wait_ms`` (at most ``max_batch`` items), runs the batch
function once and hands every caller its own result. A batch that fails is retried item by item, so one bad
item fails only its own request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Sequence

from lookalike.errors import ArgumentError

__all__ = ["MicroBatcher"]

log = logging.getLogger(__name__)


class MicroBatcher:
    """Runs ``fn(items) -> results`` (one result per item, in order) on batches formed from concurrent
    ``submit`` calls; ``calls`` and ``batch_sizes`` count what happened (for /health and the tests)."""

    def __init__(self, fn: Callable[[list], Sequence[Any]], *, max_batch: int = 32, max_wait_ms: float = 5.0,
                 name: str = "lookalike-batcher") -> None:
        if max_batch < 1:
            raise ArgumentError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ArgumentError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.fn = fn
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.calls = 0
        self.batch_sizes: list[int] = []
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> Any:
        """Blocks until ``item``'s batch has run; returns its result or raises its exception."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        future: Future = Future()
        self._queue.put((item, future))
        return future.result()

    def close(self) -> None:
        """Stops the worker after the batches already queued (idempotent)."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout=10)

    def _collect(self, first: tuple) -> list[tuple]:
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:  # whatever is already waiting joins at once; then wait for late arrivals until the deadline
                entry = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    entry = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if entry is None:  # close(): finish this batch, then stop
                self._queue.put(None)
                break
            batch.append(entry)
        return batch

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = self._collect(first)
            self._run([item for item, _ in batch], [future for _, future in batch])

    def _run(self, items: list, futures: list[Future]) -> None:
        self.calls += 1
        self.batch_sizes.append(len(items))
        try:
            results = list(self.fn(items))
            if len(results) != len(items):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        except BaseException as exc:  # noqa: BLE001 - handed to the callers, the worker keeps running
            if len(items) > 1:
                log.warning("a batch of %d failed (%s); retrying its items one by one", len(items), exc)
                for item, future in zip(items, futures):
                    self._run([item], [future])
                return
            futures[0].set_exception(exc)
            return
        for future, result in zip(futures, results):
            future.set_result(result)
