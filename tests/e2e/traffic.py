"""Steady client traffic that follows a Service's EndpointSlices, as kube-proxy would.

The local cluster has no kube-proxy, so a client-side balancer stands in for it: it re-reads
the Service's ready endpoints every `refresh` seconds and spreads requests over them. Every
request's outcome is counted, with the first errors kept for the assertion message.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def ready_addresses(api: Callable[..., dict[str, Any]], namespace: str, service: str) -> list[str]:
    slices = api("GET", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
                        f"?labelSelector=kubernetes.io/service-name={service}")
    return sorted({a for s in slices.get("items", []) for e in s.get("endpoints") or []
                   if (e.get("conditions") or {}).get("ready") for a in e.get("addresses") or []})


class Traffic:
    """`clients` threads sending tritonclient HTTP requests until stopped."""

    def __init__(self, api: Callable[..., dict[str, Any]], namespace: str, service: str, model: str,
                 feed: dict[str, np.ndarray], clients: int = 2, refresh: float = 0.25) -> None:
        self.api, self.namespace, self.service, self.model = api, namespace, service, model
        self.feed, self.clients, self.refresh = feed, clients, refresh
        self.ok = 0
        self.failed = 0
        self.errors: list[str] = []
        self.seen: set[str] = set()
        self.counts: collections.Counter[str] = collections.Counter()  # answered requests per pod address
        self.answered: list[tuple[float, str]] = []  # (time.time(), address) of each answered request
        self._addresses: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "Traffic":
        self._addresses = ready_addresses(self.api, self.namespace, self.service)
        assert self._addresses, f"Service {self.service} has no ready endpoint to send traffic to"
        self._threads = [threading.Thread(target=self._follow, daemon=True)]
        self._threads += [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _follow(self) -> None:
        while not self._stop.wait(self.refresh):
            try:
                addresses = ready_addresses(self.api, self.namespace, self.service)
            except Exception:  # noqa: BLE001 - a missed refresh keeps the last good list
                continue
            if addresses:
                self._addresses = addresses

    def _client(self, index: int) -> None:
        import tritonclient.http as httpclient

        clients: dict[str, Any] = {}
        for n in itertools.count(index):
            if self._stop.is_set():
                break
            addresses = self._addresses
            address = addresses[n % len(addresses)]
            client = clients.get(address)
            if client is None:
                client = clients[address] = httpclient.InferenceServerClient(f"{address}:8000", network_timeout=10)
            inputs = []
            for name, array in self.feed.items():
                item = httpclient.InferInput(name, list(array.shape), "FP32")
                item.set_data_from_numpy(array)
                inputs.append(item)
            try:
                client.infer(self.model, inputs)
                with self._lock:
                    self.ok += 1
                    self.seen.add(address)
                    self.counts[address] += 1
                    self.answered.append((time.time(), address))
            except Exception as exc:  # noqa: BLE001 - counted; the test asserts there are none
                with self._lock:
                    self.failed += 1
                    if len(self.errors) < 5:
                        self.errors.append(f"{address}: {exc}")
                clients.pop(address, None)
            time.sleep(0.005)
        for client in clients.values():
            client.close()


def processes_with_env(key: str, values: set[str]) -> list[int]:
    """PIDs of live processes whose environment sets `key` to one of `values` (needs /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            name, _, value = item.decode(errors="replace").partition("=")
            if name == key and value in values:
                found.append(int(entry.name))
                break
    return [pid for pid in found if pid != os.getpid()]
