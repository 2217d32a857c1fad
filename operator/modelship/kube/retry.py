"""Which API failures are worth retrying, and when.

The API server fails in two ways a controller must ride out: it answers with a status that
says "later" (409 on a stale write, 429 with Retry-After, 5xx while it or etcd is busy), or the
transport fails (refused, reset, timed out; urllib3 wraps these in ProtocolError and
MaxRetryError). Both are ordinary weather, not bugs: they get a short, jittered, exponential
backoff, and a Retry-After the server sent wins over our own guess. Everything here is pure.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import logging
import random
from typing import Awaitable, Callable, Mapping, TypeVar

log = logging.getLogger("modelship.retry")

TRANSIENT_STATUSES = frozenset({0, 408, 409, 429, 500, 502, 503, 504})
"""0 is our code for "no HTTP answer at all" (the transport failed)."""

BASE_SECONDS = 0.5
TRANSIENT_CAP_SECONDS = 30.0  # weather passes: after it, every object converges within one cap
PERMANENT_CAP_SECONDS = 300.0  # 403 and other answers that need a person
RETRY_AFTER_CAP_SECONDS = 60.0  # never trust a server to park us longer than this


def transient(status: int) -> bool:
    """True for answers that say "try again" rather than "this request is wrong"."""
    return status in TRANSIENT_STATUSES


UNKNOWN_OUTCOME_STATUSES = frozenset({0, 500, 502, 503, 504})


def outcome_unknown(status: int) -> bool:
    """True when a write that failed with `status` may still have been applied: the connection
    broke after the request was sent (0), or the server failed while it was being processed (5xx).
    A 409 or 429 was refused before anything changed."""
    return status in UNKNOWN_OUTCOME_STATUSES


def retry_after(headers: Mapping[str, str] | None, *, now: datetime.datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), clamped to
    [0, RETRY_AFTER_CAP_SECONDS]; None when absent or unreadable."""
    if not headers:
        return None
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = str(value).strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = (when - (now or datetime.datetime.now(datetime.timezone.utc))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(RETRY_AFTER_CAP_SECONDS, max(0.0, seconds))


def backoff(failures: int, *, status: int, after: float | None = None,
            jitter: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds before retry number `failures` (1 = the first retry) of a request that failed
    with `status`; `after` is the server's Retry-After, honoured as a floor."""
    cap = TRANSIENT_CAP_SECONDS if transient(status) else PERMANENT_CAP_SECONDS
    delay = min(cap, BASE_SECONDS * 2 ** max(0, failures - 1)) * jitter(0.8, 1.2)
    if after is not None:
        delay = max(delay, after)
    return delay


def transport_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "no usable answer from the API server" (imported lazily:
    urllib3 comes with the Kubernetes client)."""
    import urllib3.exceptions

    return (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, OSError)


def describe_transport(error: BaseException) -> str:
    """One line for a transport failure: urllib3 nests the cause (MaxRetryError ->
    NewConnectionError -> ConnectionRefusedError); the innermost reason is what a reader wants."""
    reason: BaseException | None = error
    seen = set()
    while reason is not None and id(reason) not in seen:
        seen.add(id(reason))
        inner = getattr(reason, "reason", None)
        if not isinstance(inner, BaseException):
            inner = reason.__cause__ or reason.__context__
        if inner is None:
            break
        reason = inner
    name = type(reason or error).__name__
    text = str(reason or error).strip()
    return f"API server unreachable ({name}: {text})" if text else f"API server unreachable ({name})"


T = TypeVar("T")


async def retrying(call: Callable[[], Awaitable[T]], *, what: str, attempts: int = 8,
                   sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> T:
    """`call()`, again after a backoff while it fails with a transient status (an exception
    with `status`, like the client's KubeError), at most `attempts` times; for the reads a
    start-up or a check cannot do without (one failed LIST among ten must not cost all ten)."""
    failures = 0
    while True:
        try:
            return await call()
        except Exception as error:
            status = getattr(error, "status", None)
            failures += 1
            if not isinstance(status, int) or not transient(status) or failures >= attempts:
                raise
            delay = backoff(failures, status=status, after=getattr(error, "retry_after", None))
            log.info("%s failed (%s); retrying in %.1fs", what, error, delay)
            await sleep(delay)
