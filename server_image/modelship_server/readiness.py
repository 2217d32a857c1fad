"""Waiting for a server process to answer: the one poll that the capacity sweep, the
comparison benchmark and the tests use when they start a server of their own."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from typing import Callable


def wait_until_ok(url: str, proc: subprocess.Popen, *, timeout: float, what: str,
                  on_exit: Callable[[], str] = lambda: "", interval: float = 0.1) -> None:
    """Poll `url` until it answers 200. RuntimeError if `proc` exits first (with `on_exit()`,
    e.g. the end of its log); TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = on_exit()
            raise RuntimeError(f"{what} exited with {proc.returncode}{': ' + detail if detail else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a health URL on loopback
                if response.status == 200:
                    return
        except OSError:  # refused, not ready yet (HTTPError is an OSError too)
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:g}s")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports free on `host` now: all bound at once (so none repeats), then released
    for a server about to start. Another process may take one in between; a caller that can
    retry a failed bind should."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
