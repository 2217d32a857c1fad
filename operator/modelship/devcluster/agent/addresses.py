"""Pod addresses: each pod gets its own address on this machine's loopback interface, so every
pod can listen on 8000/8001/8002 and EndpointSlices point at addresses this machine reaches.

Why not 127.x.y.z: the API server rejects loopback addresses in EndpointSlices ("may not be
in the loopback range"), so Services would never get endpoints. Instead the agent makes one
/24 of 198.18.0.0/15 (RFC 2544's benchmarking range, never routed on the Internet) local with
`ip route replace local <block> dev lo table local` (the AnyIP trick: every address of the block
is then bindable, no per-address setup), and removes that route when it stops. The block comes
from the state directory; a registry in /run keeps two live agents off the same block and lets
the next agent reclaim the block of one that was SIGKILLed. Without the right to
change routes (not root), pods fall back to 127.x.y.z: they still run and answer on their
addresses, but Services get no endpoints.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from pathlib import Path
from typing import Callable

ROUTE_FILE = "route"


def block_for(key: str) -> int:
    """0..511: which /24 of 198.18.0.0/15 this agent uses."""
    digest = hashlib.sha256(key.encode()).digest()
    return (digest[0] << 8 | digest[1]) % 512


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


class AddressPool:
    """First-free allocation of one /24: .1 to .254."""

    def __init__(self, key: str, *, routed: bool = True, block: int | None = None) -> None:
        block = block_for(key) if block is None else block
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


# Which agent (PID) holds which block, machine-wide: a block whose agent died without cleaning
# up (SIGKILL) is reclaimed by the next agent, and two live agents never share a block.
REGISTRY = Path("/run/modelship-dev-cluster/routes")


def _holder_alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"modelship.devcluster.agent" in cmdline


def _unroute(cidr: str) -> None:
    _ip("route", "del", "local", cidr, "dev", "lo", "table", "local")


def _claim(pool_for: Callable[[int], AddressPool], first: int, registry: Path,
           unroute: Callable[[str], None] = _unroute) -> AddressPool | None:
    """The first block from `first` on that no live agent holds, its stale route removed."""
    registry.mkdir(parents=True, exist_ok=True)
    for step in range(512):
        pool = pool_for((first + step) % 512)
        record = registry / pool.cidr.replace("/", "_")
        try:
            holder = int(record.read_text().strip() or 0)
        except (OSError, ValueError):
            holder = 0
        if holder and holder != os.getpid() and _holder_alive(holder):
            continue
        if holder:
            unroute(pool.cidr)
        record.write_text(str(os.getpid()))
        return pool
    return None


def routed_pool(key: str, agent_dir: Path, registry: Path = REGISTRY) -> tuple[AddressPool, str]:
    """A pool whose block is made local on `lo`, or the loopback fallback; and a line saying which."""
    try:
        pool = _claim(lambda block: AddressPool(key, block=block), block_for(key), registry) or AddressPool(key)
    except OSError:  # no /run to write to: the hashed block, unregistered
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
    (REGISTRY / cidr.replace("/", "_")).unlink(missing_ok=True)
