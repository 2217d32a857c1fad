"""A paced HTTP load generator for the autoscaler tests: a fixed request rate against a real
server, recording what it did (requests sent, failures, client-side latencies)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import threading
import time


@dataclasses.dataclass
class LoadResult:
    started: float
    finished: float
    latencies: list[float]
    failures: int

    @property
    def rate(self) -> float:
        return len(self.latencies) / (self.finished - self.started)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def body(name: str, width: int) -> bytes:
    return json.dumps({"inputs": [{"name": name, "datatype": "FP32", "shape": [1, width],
                                   "data": [0.5] * width}]}).encode()


class Load:
    """`rate` requests per second from `threads` threads (each paced to rate/threads) until stop()."""

    def __init__(self, port: int, path: str, payload: bytes, rate: float, threads: int = 4) -> None:
        self.port, self.path, self.payload = port, path, payload
        self.interval = threads / rate
        self.latencies: list[float] = []
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        self.started = self.finished = 0.0

    def __enter__(self) -> "Load":
        self.started = time.time()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        if not self._stop.is_set():
            self._stop.set()
            for t in self._threads:
                t.join(30)
            self.finished = time.time()
        return LoadResult(self.started, self.finished, list(self.latencies), self.failures)

    def _run(self, index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        next_at = time.monotonic() + index * self.interval / len(self._threads)
        try:
            while not self._stop.is_set():
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                    if self._stop.is_set():
                        return
                next_at += self.interval
                t0 = time.perf_counter()
                try:
                    conn.request("POST", self.path, body=self.payload)
                    response = conn.getresponse()
                    response.read()
                    ok = response.status == 200
                except OSError:
                    ok = False
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                elapsed = time.perf_counter() - t0
                with self._lock:
                    if ok:
                        self.latencies.append(elapsed)
                    else:
                        self.failures += 1
        finally:
            conn.close()
