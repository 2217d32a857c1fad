"""The per-model scheduler: a bounded queue, dynamic batching, one ONNX Runtime session per instance.

Each model version has one queue and `instance_group.count` sessions. Whenever a
request arrives or a session frees up, `_dispatch` pairs idle sessions with work:
with dynamic batching it takes compatible queued requests (same non-batch shapes)
up to max_batch_size or the largest preferred batch size, and if it has fewer it
waits — but never past max_queue_delay after the oldest request arrived. The
batch is concatenated along dimension 0, run, and the outputs are split back as
views. Without dynamic batching each request runs on its own, as Triton's default
scheduler does.

Where a batch runs is `placement`'s decision, from its expected run time (running
averages): on the loop thread when it fits the loop's inline budget for this turn,
in the next turn when it is short but this turn's budget is spent (the dispatch is
put off by one `call_soon`, so the loop polls for I/O in between), and on the
session's worker thread when it is too long to run inline at all (ONNX Runtime
releases the GIL there, and the loop keeps serving). A threshold of 0 always uses threads.

A batch that fails is not failed as a whole: its members go back to the front
of the queue marked `solo` and run one by one, so a request ONNX Runtime cannot
run (a token id out of range) fails alone, as a 400 naming its inputs.

A full queue sheds the request (QueueFull -> 503/UNAVAILABLE); a request whose
deadline passes, queued or running, fails with RequestTimeout (504/DEADLINE_EXCEEDED).
No worker tasks: dispatch is driven by arrivals, completions and one timer, so
an idle request on an idle model costs no event-loop hop at all.
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
from .placement import INLINE, LATER, THREAD, InlineBudget, RunTimes, SwitchInterval
from .repository import BatchingPolicy
from .stats import ModelStats
from .tracing import BatchRun, RequestTrace

log = logging.getLogger(__name__)

_perf_ns = time.perf_counter_ns


class _Pending:
    __slots__ = ("feeds", "batch", "key", "future", "enqueued_ns", "timer", "started", "solo", "trace")

    def __init__(self, feeds, batch, key, future, enqueued_ns, trace=None) -> None:
        self.feeds = feeds
        self.batch = batch
        self.key = key
        self.future = future
        self.enqueued_ns = enqueued_ns
        self.timer = None
        self.started = False
        self.solo = False  # its batch failed: run it alone, so only a bad request fails
        self.trace = trace  # a sampled request's tracing.RequestTrace, else None


def _describe_feeds(feeds: dict) -> str:
    return ", ".join(f"'{n}' {list(a.shape)}" for n, a in feeds.items())


def _classify_ort_error(exc: Exception, feeds: dict) -> ServingError:
    """A failed run of one request's inputs (never a batch: batches are retried member by member).

    The model loaded and warmed up, so a node failing on these inputs (a token id
    out of range, shapes that do not broadcast) is the input's doing: 400, naming
    the inputs. Anything else (out of memory, a provider failure) is the server's.
    """
    kind = type(exc).__name__
    text = str(exc)
    if kind in ("InvalidArgument", "InvalidGraph") or (
        kind in ("RuntimeException", "Fail") and "while running" in text
    ):
        return InvalidInput(f"the model cannot run on inputs {_describe_feeds(feeds)}: ONNX Runtime: {text}"[:2000])
    return ServingError(f"ONNX Runtime failed to run the model: {kind}: {text}")


def _timed(run: Callable[[dict], list], feeds: dict):
    """Run in the worker thread; time only the run itself, not the handoff (its start is kept for traces)."""
    t = _perf_ns()
    try:
        return run(feeds), _perf_ns() - t, None, t
    except Exception as exc:  # noqa: BLE001 - handed back to the requests
        return None, _perf_ns() - t, exc, t


class Scheduler:
    """Queue + sessions of one model version."""

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
        inline_threshold_s: float = 100e-6,
        inline_budget: InlineBudget | None = None,
        switch_interval: SwitchInterval | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.policy = policy
        self.output_names = output_names
        self.max_queue_size = policy.max_queue_size or max_queue_size
        self.metrics = metrics
        self.stats = stats
        self._runners = runners
        self._free = list(range(len(runners)))  # idle sessions
        self._queue: collections.deque[_Pending] = collections.deque()
        self._executor = ThreadPoolExecutor(max_workers=len(runners), thread_name_prefix=f"ort-{name}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._later = False  # a dispatch is put off to the next loop turn
        # Shared by the server's models (one loop); alone, a scheduler may block it for one threshold.
        self._inline = inline_budget or InlineBudget(int(inline_threshold_s * 1e9), int(inline_threshold_s * 1e9))
        self._switch = switch_interval or SwitchInterval(0.0)
        self.run_times = RunTimes()  # unknown until measured: threads
        target = policy.max_batch_size
        if policy.preferred_batch_sizes:
            target = max(policy.preferred_batch_sizes)
        self._target = max(target, 1)
        self._delay_ns = int(policy.max_queue_delay_s * 1e9)
        self._closed = False
        metrics.queue_depth = lambda: len(self._queue)

    def start(self, run_ns_hint: float | None = None) -> None:
        """Bind to the running loop; `run_ns_hint` is a measured run time (from warm-up)."""
        self._loop = asyncio.get_running_loop()
        if run_ns_hint is not None:
            self.run_times.observe(1, run_ns_hint)  # warm-up timed a batch of one

    async def stop(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(ServingError("the server is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- request side -------------------------------------------------------

    def check_room(self) -> None:
        """QueueFull when the queue is full: asked before a request is decoded, and again when it is queued."""
        if len(self._queue) >= self.max_queue_size:
            raise QueueFull(
                f"model '{self.name}' is overloaded: its queue holds {len(self._queue)} requests "
                f"(max_queue_size {self.max_queue_size}); retry later"
            )

    async def submit(self, feeds: dict[str, np.ndarray], batch: int, timeout_s: float | None,
                     trace: RequestTrace | None = None) -> dict[str, np.ndarray]:
        """Queue one request and wait for its outputs (name -> array); `trace` gets its queue and batch stamps."""
        self.check_room()
        loop = self._loop
        key = None
        if self.policy.dynamic:
            key = tuple((n, a.shape[1:]) for n, a in feeds.items())
        item = _Pending(feeds, batch, key, loop.create_future(), _perf_ns(), trace)
        if trace is not None:
            trace.enqueued_ns = item.enqueued_ns
        self._queue.append(item)
        self._dispatch()
        future = item.future
        if future.done():
            # It ran inline: no suspension and no deadline timer (a timer per request is a
            # libuv handle made and closed for nothing; issue 13's gRPC cost, where clients
            # such as ghz send a deadline with every call).
            return future.result()
        if timeout_s:
            # The deadline still counts from the arrival, not from here.
            left_s = timeout_s - (_perf_ns() - item.enqueued_ns) / 1e9
            item.timer = loop.call_later(max(left_s, 0.0), self._expire, item, timeout_s)
        try:
            return await future
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

    # -- dispatch ---------------------------------------------------------------

    def _dispatch(self) -> None:
        """Give idle sessions work while there is some that should run now."""
        q = self._queue
        while self._free and q and not self._closed:
            first = q.popleft()
            if first.future.done():  # cancelled or timed out while queued
                continue
            batch = [first]
            size = first.batch
            if self.policy.dynamic and size < self._target and not first.solo:
                size = self._gather(first, batch, size)
                if size < self._target:
                    wait_ns = first.enqueued_ns + self._delay_ns - _perf_ns()
                    if wait_ns > 0:
                        # Not full yet and still inside max_queue_delay: put back, wake up later.
                        q.extendleft(reversed(batch))
                        if self._timer is None:
                            self._timer = self._loop.call_later(wait_ns / 1e9, self._on_timer)
                        return
                if self.policy.preferred_batch_sizes and size not in self.policy.preferred_batch_sizes:
                    size = self._trim_to_preferred(batch, size)
            where = self._inline.place(self.run_times.expected(size))
            if where == THREAD and len(batch) > 1 and not self.policy.preferred_batch_sizes:
                # Too long to run inline as gathered: a smaller batch that is not runs inline
                # (no thread, no GIL wait); the rest stays first in line.
                size, where = self._trim_to_inline(batch, size, where)
            if where == LATER:
                # Short, but this turn's inline budget is spent: let the loop poll first.
                q.extendleft(reversed(batch))
                if not self._later:
                    self._later = True
                    self._loop.call_soon(self._on_later)
                return
            self._run(self._free.pop(), batch, size, where == INLINE)

    def _trim_to_inline(self, batch: list[_Pending], size: int, where: str) -> tuple[int, str]:
        kept, total = 0, 0
        for item in batch:
            if self.run_times.expected(total + item.batch) > self._inline.max_run_ns:
                break
            kept += 1
            total += item.batch
        if kept == 0:
            return size, where
        rest = batch[kept:]
        del batch[kept:]
        self._queue.extendleft(reversed(rest))
        return total, self._inline.place(self.run_times.expected(total))

    def _on_later(self) -> None:
        self._later = False
        self._dispatch()

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _gather(self, first: _Pending, batch: list[_Pending], size: int) -> int:
        """Move compatible queued requests into `batch` while they fit; return the new size."""
        limit = self._target
        q = self._queue
        skipped = []
        while q and size < limit:
            item = q.popleft()
            if item.future.done():
                continue
            if item.key != first.key or size + item.batch > limit or item.solo:
                skipped.append(item)
                if len(skipped) > 64:
                    break
                continue
            batch.append(item)
            size += item.batch
        if skipped:
            q.extendleft(reversed(skipped))
        return size

    def _trim_to_preferred(self, batch: list[_Pending], size: int) -> int:
        """Cut the batch back to the largest preferred size it covers; the rest waits."""
        fitting = [p for p in self.policy.preferred_batch_sizes if p <= size]
        if not fitting:
            return size
        want = fitting[-1]
        kept, total = 0, 0
        for item in batch:
            if total + item.batch > want:
                break
            kept += 1
            total += item.batch
        if total != want:
            return size  # request batch sizes do not add up to it exactly; run what we have
        rest = batch[kept:]
        del batch[kept:]
        self._queue.extendleft(reversed(rest))
        return total

    # -- execution --------------------------------------------------------------

    def _run(self, index: int, batch: list[_Pending], size: int, inline: bool) -> None:
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
        except Exception as exc:  # noqa: BLE001
            self._complete(index, batch, size, t0, t0, None, 0, exc)
            return
        t1 = _perf_ns()
        run = self._runners[index]
        if inline:
            outputs, run_ns, exc, run_start = _timed(run, feeds)
            self._inline.charge(self._loop, run_ns)
            self._complete(index, batch, size, t0, t1, outputs, run_ns, exc, run_start, redispatch=False)
            return
        loop = self._loop
        self._switch.run_started()
        fut = self._executor.submit(_timed, run, feeds)
        fut.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._threaded_done, index, batch, size, t0, t1, *f.result())
        )

    def _threaded_done(self, index, batch, size, t0, t1, outputs, run_ns, exc, run_start) -> None:
        self._switch.run_ended()
        self._complete(index, batch, size, t0, t1, outputs, run_ns, exc, run_start)

    def _complete(self, index, batch, size, t0, t1, outputs, run_ns, exc, run_start=0, redispatch: bool = True) -> None:
        self._free.append(index)
        if exc is not None and len(batch) > 1 and not self._closed:
            # One bad request must not fail the others: run each member alone, first in line.
            for item in batch:
                item.solo = True
                item.started = False
            self._queue.extendleft(reversed(batch))
            log.info("model %s: batch of %d requests failed; running each alone", self.name, len(batch))
        elif exc is not None:
            err = exc if isinstance(exc, ServingError) else _classify_ort_error(exc, batch[0].feeds)
            if not isinstance(err, InvalidInput):
                log.error("model %s: run of batch %d failed: %s", self.name, size, err.message)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
        else:
            t2 = _perf_ns()
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
            self.run_times.observe(size, run_ns)
            m = self.metrics
            m.compute_duration.observe(run_ns / 1e9)
            m.batch_size.observe(size)
            self.stats.executed(size, len(batch), t1 - t0, run_ns, _perf_ns() - t2)
            traced = [item.trace for item in batch if item.trace is not None]
            if traced:
                run = BatchRun(t0, run_start or t1, (run_start or t1) + run_ns, size, len(batch), traced)
                for tr in traced:
                    tr.batch = run
        if redispatch:
            self._dispatch()
