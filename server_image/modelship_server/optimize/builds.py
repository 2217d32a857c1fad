"""Candidate builds, in worker processes when the machine has cores and memory to spare.

Building a variant (graph rewrites, calibration, quantization) is mostly single-threaded Python,
so one build at a time leaves the other cores idle for most of the search. Workers are spawned,
not forked: the parent holds ONNX Runtime sessions with threads of their own, and a fork copies
their locks in whatever state they happen to be. Builds that share an intermediate (the fused
graph, the sensitivity ranking) coordinate through files in the work folder (workfolder.py).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from . import candidates as cand
from .inputs import Feed

MAX_WORKERS = 4
# Peak memory of one build, in multiples of the model file: the loaded graph, the quantizer's
# copy and the written result, with room for calibration activations.
BUILD_MEMORY_FACTOR = 6


@dataclass(frozen=True)
class Built:
    """One finished build: the file, or why there is none, and how long building took."""

    recipe: cand.Recipe
    path: Path | None
    error: str | None
    seconds: float


def quiet_quantizer() -> None:
    """The quantizer logs advice on the root logger for every model; our progress lines suffice."""
    logging.getLogger().addFilter(lambda record: "pre-processing before quantization" not in record.getMessage())


def usable_cpus() -> int:
    """CPUs this process may use: its affinity, bounded by a cgroup v2 CPU quota (a pod's limit)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def available_memory_bytes() -> int | None:
    """Memory this process may still use: the cgroup v2 limit less usage, else MemAvailable."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def worker_count(cpus: int, model_bytes: int, memory_bytes: int | None) -> int:
    """Pure decision: parallel builds, one per CPU, as many as memory holds, at most MAX_WORKERS."""
    count = min(cpus, MAX_WORKERS)
    if memory_bytes is not None and model_bytes > 0:
        count = min(count, memory_bytes // (BUILD_MEMORY_FACTOR * model_bytes))
    return max(1, int(count))


_CALIBRATION: list[Feed] = []


def _start_worker(calibration: list[Feed]) -> None:
    global _CALIBRATION
    _CALIBRATION = calibration
    quiet_quantizer()


def _build(recipe: cand.Recipe, source: Path, workdir: Path, calibration: list[Feed]) -> Built:
    """Build one recipe; a recipe that does not apply to this model is a finding, not a crash."""
    start = time.monotonic()
    try:
        path = cand.build(recipe, source, workdir, calibration)
    except Exception as exc:  # noqa: BLE001 - a recipe that fails to build is a finding, reported
        return Built(recipe, None, f"{type(exc).__name__}: {str(exc)[:200]}", time.monotonic() - start)
    return Built(recipe, path, None, time.monotonic() - start)


def _build_in_worker(recipe: cand.Recipe, source: Path, workdir: Path) -> Built:
    return _build(recipe, source, workdir, _CALIBRATION)


class Builds:
    """Builds submitted one by one and collected as they finish, `workers` at a time.

    With one worker there is no pool: each build runs in this process when collected, so a
    1-CPU pod pays nothing for the machinery."""

    def __init__(self, source: Path, workdir: Path, calibration: list[Feed], workers: int):
        self.source, self.workdir, self.calibration, self.workers = source, workdir, calibration, workers
        self._pool: ProcessPoolExecutor | None = None
        self._running: dict[Future[Built], tuple[cand.Recipe, ProcessPoolExecutor]] = {}
        self._queued: deque[cand.Recipe] = deque()

    def __enter__(self) -> Builds:
        return self

    def __exit__(self, *exc: object) -> None:
        self._drop_pool(wait=True)  # a build still running finishes first: no orphaned worker

    @property
    def in_flight(self) -> int:
        return len(self._running) + len(self._queued)

    def start(self) -> None:
        """Start the worker processes now (a spawned worker takes a second or two to import)."""
        if self.workers > 1 and self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker, initargs=(self.calibration,))
            for _ in range(self.workers):  # the pool spawns a process per task while none is idle
                self._pool.submit(int)

    def submit(self, recipe: cand.Recipe) -> None:
        if self.workers <= 1:
            self._queued.append(recipe)
            return
        self.start()
        assert self._pool is not None
        try:
            future = self._pool.submit(_build_in_worker, recipe, self.source, self.workdir)
        except BrokenProcessPool:  # a worker died while idle: start over with fresh ones
            self._drop_pool()
            self.start()
            assert self._pool is not None
            future = self._pool.submit(_build_in_worker, recipe, self.source, self.workdir)
        self._running[future] = (recipe, self._pool)

    @property
    def pids(self) -> list[int]:
        """The worker processes' PIDs (none without a pool): for a person looking at a slow search."""
        processes = getattr(self._pool, "_processes", None) or {}
        return sorted(processes)

    def _drop_pool(self, wait: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None

    def next_done(self) -> Built:
        """The next finished build (blocks until one finishes)."""
        if self._queued:
            return _build(self._queued.popleft(), self.source, self.workdir, self.calibration)
        done, _ = wait(self._running, return_when=FIRST_COMPLETED)
        future = next(iter(done))
        recipe, pool = self._running.pop(future)
        try:
            return future.result()
        except BrokenProcessPool:
            # A worker died (out of memory, a crash in native code): every build in its pool is
            # lost with it. Report this one; the next submit starts a fresh pool.
            if pool is self._pool:
                self._drop_pool()
            return Built(recipe, None, "the build's worker process died (out of memory, or a crash in native code)",
                         0.0)
