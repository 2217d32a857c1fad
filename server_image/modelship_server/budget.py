"""One budget of request bytes in flight, shared by HTTP and gRPC.

Why one number: a pod dies of the sum of what every connection holds, not of any
single request (eight 48 MiB gRPC messages, each under the size cap, took 1.7 GiB).
A request reserves its size before its body is read (HTTP, from Content-Length)
or before its message is parsed (gRPC), and gives it back when its response is
written. Over the budget it is shed at once with 503 / RESOURCE_EXHAUSTED and
Retry-After, before any decoding, so the work already admitted keeps running at
full speed.

The reservation is the wire size times `EXPANSION`: a decoded request holds the
body, the arrays made from it and the batch they are concatenated into.
"""

from __future__ import annotations

from pathlib import Path

EXPANSION = 3  # body + decoded arrays + batch copy
MIN_BUDGET = 64 * 1024**2
SMALL_REQUEST = 64 * 1024
DEFAULT_WITHOUT_LIMIT = 1024**3  # no cgroup limit found (a laptop, CI): 1 GiB
_CGROUP_FILES = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def cgroup_memory_limit(files: tuple[Path, ...] = _CGROUP_FILES) -> int | None:
    """The container's memory limit in bytes, or None when there is none."""
    for f in files:
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit():
            return None
        value = int(text)
        # cgroup v1 says "no limit" with a huge page-aligned number.
        return None if value >= 1 << 60 else value
    return None


def default_budget(limit: int | None) -> int:
    """Half the container's memory for request bytes in flight; the rest is models and runtime."""
    if limit is None:
        return DEFAULT_WITHOUT_LIMIT
    return max(MIN_BUDGET, limit // 2)


class ByteBudget:
    """A counter of reserved bytes; every call happens on the event-loop thread."""

    __slots__ = ("limit", "used", "shed")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.shed = 0  # requests refused so far (a metric)

    def cost(self, wire_bytes: int) -> int:
        return wire_bytes * EXPANSION

    def try_reserve(self, wire_bytes: int) -> int:
        """Reserve room for a request of `wire_bytes`; the amount to release later, or -1 if over.

        One request alone is always admitted when nothing else is in flight, so a
        body under the size cap is never refused forever by a small budget.
        Requests up to SMALL_REQUEST bytes may use the whole budget, larger ones 7/8.
        """
        n = wire_bytes * EXPANSION
        # Large requests stop at 7/8 of the budget, so a few huge bodies can never
        # starve the small requests of everyone else.
        ceiling = self.limit if wire_bytes <= SMALL_REQUEST else self.limit - (self.limit >> 3)
        if self.used and self.used + n > ceiling:
            self.shed += 1
            return -1
        self.used += n
        return n

    def release(self, n: int) -> None:
        self.used -= n

    def message(self, wire_bytes: int) -> str:
        return (
            f"the server is holding {self.used} bytes of requests in flight and a request of "
            f"{wire_bytes} bytes would pass its budget of {self.limit} bytes "
            "(--max-inflight-bytes); retry later"
        )
