"""Pod addresses: each pod gets its own address on this machine's loopback interface, so every
pod can listen on 8000/8001/8002 and EndpointSlices point at addresses this machine reaches.

Why not 127.x.y.z: the API server rejects loopback addresses in EndpointSlices ("may not be
in the loopback range"), so Services would never get endpoints. Instead the agent makes one
/24 of 198.18.0.0/15 (RFC 2544's benchmarking range, never routed on the Internet) local with
`ip route replace local <block> dev lo table local` (the AnyIP trick: every address of the block
is then bindable, no per-address setup), and removes that route when it stops. The block comes
from the state directory, so two planes on one machine rarely share one. Without the right to
change routes (not root), pods fall back to 127.x.y.z: they still run and answer on their
addresses, but Services get no endpoints.
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
from pathlib import Path

ROUTE_FILE = "route"


def block_for(key: str) -> int:
    """0..511: which /24 of 198.18.0.0/15 this agent uses."""
    digest = hashlib.sha256(key.encode()).digest()
    return (digest[0] << 8 | digest[1]) % 512


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


class AddressPool:
    """First-free allocation of one /24: .1 to .254."""

    def __init__(self, key: str, *, routed: bool = True):
        block = block_for(key)
        self.prefix = f"198.{18 + block // 256}.{block % 256}" if routed else f"127.{100 + block % 128}.{block // 128}"
        self.cidr = f"{self.prefix}.0/24"
        self._used: set[int] = set()
        self._lock = threading.Lock()

    def address(self, index: int) -> str:
        return f"{self.prefix}.{index + 1}"

    def allocate(self) -> str:
        with self._lock:
            free = [i for i in range(254) if i not in self._used]
            if not free:
                raise RuntimeError(f"all 254 pod addresses of {self.cidr} are in use")
            self._used.add(free[0])
            return self.address(free[0])

    def release(self, address: str) -> None:
        with self._lock:
            if address.startswith(self.prefix + "."):
                self._used.discard(int(address.rsplit(".", 1)[1]) - 1)


def routed_pool(key: str, agent_dir: Path) -> tuple[AddressPool, str]:
    """A pool whose block is made local on `lo`, or the loopback fallback; and a line saying which."""
    pool = AddressPool(key)
    result = _ip("route", "replace", "local", pool.cidr, "dev", "lo", "table", "local")
    if result.returncode == 0:
        (agent_dir / ROUTE_FILE).write_text(pool.cidr)
        return pool, f"pod addresses from {pool.cidr} (a local route on lo)"
    fallback = AddressPool(key, routed=False)
    return fallback, (f"could not add a local route for {pool.cidr} ({result.stderr.strip()}); pod addresses "
                      f"from {fallback.cidr}, which EndpointSlices reject: Services will have no endpoints")


def remove_route(agent_dir: Path) -> None:
    """Undo `routed_pool` (at agent shutdown, and again at `dev-cluster down` after a killed agent)."""
    record = agent_dir / ROUTE_FILE
    try:
        cidr = record.read_text().strip()
    except OSError:
        return
    _ip("route", "del", "local", cidr, "dev", "lo", "table", "local")
    record.unlink(missing_ok=True)
