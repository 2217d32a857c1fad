"""Loopback addresses for pods: each pod gets its own 127.x.y.z, so every pod can listen on
8000/8001/8002 and EndpointSlices point at addresses this machine can reach.

The second octet comes from the state directory, so two planes on one machine (a test session
and `dev-cluster up`) rarely draw from the same block; within a block, allocation is first free.
"""

from __future__ import annotations

import hashlib
import threading


def block_for(key: str) -> int:
    """A second octet in 100..227 for this agent."""
    return 100 + hashlib.sha256(key.encode()).digest()[0] % 128


class AddressPool:
    def __init__(self, key: str):
        self.octet = block_for(key)
        self._used: set[int] = set()
        self._lock = threading.Lock()

    def address(self, index: int) -> str:
        return f"127.{self.octet}.{index // 254}.{index % 254 + 1}"

    def allocate(self) -> str:
        with self._lock:
            index = next(i for i in range(254 * 256) if i not in self._used)
            self._used.add(index)
            return self.address(index)

    def release(self, address: str) -> None:
        with self._lock:
            _, _, third, fourth = (int(p) for p in address.split("."))
            self._used.discard(third * 254 + fourth - 1)
