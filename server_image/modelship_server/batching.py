"""The per-model scheduler: a bounded queue, dynamic batching, one worker per instance.

Each model version has one queue and `instance_group.count` workers, each
owning one ONNX Runtime session. A worker takes the oldest request, and when
dynamic batching is on gathers more compatible requests (same non-batch
shapes) until it reaches max_batch_size or the largest preferred batch size,
or until max_queue_delay has passed since the oldest request arrived. The
batch is concatenated along dimension 0, run in a thread (ORT releases the
GIL, the event loop never blocks) and the outputs are split back as views.

Without dynamic batching each request runs on its own, as Triton's default
scheduler does. A full queue sheds the request (QueueFull → 503/UNAVAILABLE);
a request whose deadline passes, queued or running, fails with RequestTimeout.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from .errors import InvalidInput, QueueFull, RequestTimeout, ServingError
from .metrics import ModelMetrics
from .repository import BatchingPolicy
from .stats import ModelStats

log = logging.getLogger(__name__)

_perf_ns = time.perf_counter_ns


class _Pending:
    __slots__ = ("feeds", "batch", "key", "future", "enqueued_ns", "timer", "started")

    def __init__(self, feeds, batch, key, future, enqueued_ns) -> None:
        self.feeds = feeds
        self.batch = batch
        self.key = key
        self.future = future
        self.enqueued_ns = enqueued_ns
        self.timer = None
        self.started = False


def _classify_ort_error(exc: Exception) -> ServingError:
    # ORT reports a bad input (e.g. a dimension a Reshape cannot take) as InvalidArgument.
    kind = type(exc).__name__
    if kind in ("InvalidArgument", "InvalidGraph"):
        return InvalidInput(f"ONNX Runtime rejected the input: {exc}")
    return ServingError(f"ONNX Runtime failed to run the model: {kind}: {exc}")


class Scheduler:
    """Queue + workers for one model version."""

    def __init__(
        self,
        *,
        name: str,
        version: str,
        policy: BatchingPolicy,
        runners: list[Callable[[dict], list]],
        output_names: list[str],
        max_queue_size: int,
        metrics: ModelMetrics,
        stats: ModelStats,
    ) -> None:
        self.name = name
        self.version = version
        self.policy = policy
        self.output_names = output_names
        self.max_queue_size = policy.max_queue_size or max_queue_size
        self.metrics = metrics
        self.stats = stats
        self._runners = runners
        self._queue: collections.deque[_Pending] = collections.deque()
        self._waiters: list[asyncio.Future] = []
        self._executor = ThreadPoolExecutor(max_workers=len(runners), thread_name_prefix=f"ort-{name}")
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        target = policy.max_batch_size
        if policy.preferred_batch_sizes:
            target = max(policy.preferred_batch_sizes)
        self._target = max(target, 1)
        self._delay_ns = int(policy.max_queue_delay_s * 1e9)
        metrics.queue_depth.set_function(lambda: len(self._queue))

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks = [
            self._loop.create_task(self._worker(i), name=f"scheduler-{self.name}-{i}")
            for i in range(len(self._runners))
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(ServingError("the server is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- request side -------------------------------------------------------

    async def submit(self, feeds: dict[str, np.ndarray], batch: int, timeout_s: float | None) -> dict[str, np.ndarray]:
        """Queue one request and wait for its outputs (name -> array)."""
        if len(self._queue) >= self.max_queue_size:
            raise QueueFull(
                f"model '{self.name}' is overloaded: its queue holds {len(self._queue)} requests "
                f"(max_queue_size {self.max_queue_size}); retry later"
            )
        loop = self._loop
        key = None
        if self.policy.dynamic:
            key = tuple((n, a.shape[1:]) for n, a in feeds.items())
        item = _Pending(feeds, batch, key, loop.create_future(), _perf_ns())
        self._queue.append(item)
        if timeout_s:
            item.timer = loop.call_later(timeout_s, self._expire, item, timeout_s)
        if self._waiters:
            for w in self._waiters:
                if not w.done():
                    w.set_result(None)
            self._waiters.clear()
        try:
            return await item.future
        finally:
            if item.timer is not None:
                item.timer.cancel()

    def _expire(self, item: _Pending, timeout_s: float) -> None:
        if item.future.done():
            return
        where = "while running" if item.started else "in the queue"
        item.future.set_exception(
            RequestTimeout(f"request to model '{self.name}' timed out after {timeout_s:.3f} s ({where})")
        )
        if not item.started:
            try:
                self._queue.remove(item)
            except ValueError:
                pass

    # -- worker side --------------------------------------------------------

    def _wait_arrival(self, timeout_ns: int | None) -> asyncio.Future:
        fut = self._loop.create_future()
        self._waiters.append(fut)
        if timeout_ns is not None:
            self._loop.call_later(timeout_ns / 1e9, _resolve, fut)
        return fut

    async def _next(self) -> _Pending:
        while True:
            while self._queue:
                item = self._queue.popleft()
                if not item.future.done():  # skip cancelled / timed-out requests
                    return item
            await self._wait_arrival(None)

    def _gather(self, first: _Pending, batch: list[_Pending], size: int) -> int:
        """Move compatible queued requests into `batch` while they fit; return the new size."""
        limit = self.policy.max_batch_size
        q = self._queue
        skipped = []
        while q and size < self._target:
            item = q.popleft()
            if item.future.done():
                continue
            if item.key != first.key or size + item.batch > limit:
                skipped.append(item)
                if len(skipped) > 64:
                    break
                continue
            batch.append(item)
            size += item.batch
        if skipped:
            q.extendleft(reversed(skipped))
        return size

    async def _worker(self, index: int) -> None:
        run = self._runners[index]
        loop = self._loop
        policy = self.policy
        while True:
            first = await self._next()
            batch = [first]
            size = first.batch
            if policy.dynamic and size < self._target:
                deadline = first.enqueued_ns + self._delay_ns
                while True:
                    size = self._gather(first, batch, size)
                    if size >= self._target:
                        break
                    remaining = deadline - _perf_ns()
                    if remaining <= 0:
                        break
                    await self._wait_arrival(remaining)
                if policy.preferred_batch_sizes and size not in policy.preferred_batch_sizes:
                    size = self._trim_to_preferred(batch, size)
            batch = [b for b in batch if not b.future.done()]
            if not batch:
                continue
            size = sum(b.batch for b in batch)
            await self._execute(run, loop, batch, size)

    def _trim_to_preferred(self, batch: list[_Pending], size: int) -> int:
        """Cut the batch back to the largest preferred size it covers; the rest waits."""
        fitting = [p for p in self.policy.preferred_batch_sizes if p <= size]
        if not fitting:
            return size
        want = fitting[-1]
        kept, total = [], 0
        for item in batch:
            if total + item.batch <= want:
                kept.append(item)
                total += item.batch
            else:
                break
        if total != want:
            return size  # request batch sizes do not add up to it exactly; run what we have
        rest = batch[len(kept):]
        del batch[len(kept):]
        self._queue.extendleft(reversed(rest))
        return total

    async def _execute(self, run, loop, batch: list[_Pending], size: int) -> None:
        t0 = _perf_ns()
        m = self.metrics
        for item in batch:
            item.started = True
            q_ns = t0 - item.enqueued_ns
            m.queue_duration.observe(q_ns / 1e9)
            self.stats.queued(q_ns)
        try:
            if len(batch) == 1:
                feeds = batch[0].feeds
            else:
                first = batch[0].feeds
                feeds = {n: np.concatenate([b.feeds[n] for b in batch]) for n in first}
            t1 = _perf_ns()
            outputs = await loop.run_in_executor(self._executor, run, feeds)
            t2 = _perf_ns()
        except Exception as exc:  # noqa: BLE001 - every failure goes back to its requests
            err = exc if isinstance(exc, ServingError) else _classify_ort_error(exc)
            if not isinstance(exc, ServingError) and not isinstance(err, InvalidInput):
                log.error("model %s: run of batch %d failed: %s", self.name, size, err.message)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        names = self.output_names
        if len(batch) == 1:
            item = batch[0]
            if not item.future.done():
                item.future.set_result(dict(zip(names, outputs)))
        else:
            offset = 0
            for item in batch:
                end = offset + item.batch
                if not item.future.done():
                    item.future.set_result({n: o[offset:end] for n, o in zip(names, outputs)})
                offset = end
        t3 = _perf_ns()
        m.compute_duration.observe((t2 - t1) / 1e9)
        m.batch_size.observe(size)
        self.stats.executed(size, len(batch), t1 - t0, t2 - t1, t3 - t2)


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
