"""A paced HTTP load generator for the autoscaler tests: a fixed request rate against a real
server, recording what it did (requests sent, failures, client-side latencies)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import threading
import time
from typing import Callable


@dataclasses.dataclass
class LoadResult:
    started: float
    finished: float
    latencies: list[float]
    failures: int
    errors: list[str]

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

    def __init__(self, port: int, path: str, payload: bytes, rate: float, threads: int = 4,
                 hosts: Callable[[], list[str]] | None = None) -> None:
        """`hosts`: where to send, asked before every request (round-robin over its answer),
        as kube-proxy would spread a Service's traffic; default 127.0.0.1."""
        self.port, self.path, self.payload = port, path, payload
        self.hosts = hosts or (lambda: ["127.0.0.1"])
        self.errors: list[str] = []
        self.interval = threads / rate
        self.latencies: list[float] = []
        self.done_at: list[float] = []
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
        return LoadResult(self.started, self.finished, list(self.latencies), self.failures, list(self.errors))

    def _run(self, index: int) -> None:
        connections: dict[str, http.client.HTTPConnection] = {}
        next_at = time.monotonic() + index * self.interval / len(self._threads)
        sent = index
        try:
            while not self._stop.is_set():
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                    if self._stop.is_set():
                        return
                next_at += self.interval
                hosts = self.hosts()
                host = hosts[sent % len(hosts)]
                sent += 1
                conn = connections.get(host)
                if conn is None:
                    conn = connections[host] = http.client.HTTPConnection(host, self.port, timeout=30)
                t0 = time.perf_counter()
                error = None
                try:
                    conn.request("POST", self.path, body=self.payload)
                    response = conn.getresponse()
                    response.read()
                    if response.status != 200:
                        error = f"{host}: HTTP {response.status}"
                except OSError as exc:
                    error = f"{host}: {exc}"
                    conn.close()
                    connections.pop(host, None)
                elapsed = time.perf_counter() - t0
                with self._lock:
                    if error is None:
                        self.latencies.append(elapsed)
                        self.done_at.append(time.time())
                    else:
                        self.failures += 1
                        if len(self.errors) < 5:
                            self.errors.append(error)
        finally:
            for conn in connections.values():
                conn.close()

    def recent_quantile(self, q: float, seconds: float) -> float | None:
        """Client-side quantile of the requests that finished in the last `seconds`."""
        with self._lock:
            cut = time.time() - seconds
            recent = sorted(lat for lat, at in zip(self.latencies, self.done_at) if at >= cut)
        return recent[min(len(recent) - 1, int(q * len(recent)))] if recent else None
