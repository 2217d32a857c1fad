"""The decision's inputs read straight from the serving pods: no Prometheus needed.

Each ready pod's metrics port (8002, `/metrics`, docs/server.md) is scraped with a short
timeout. Counters and histograms are cumulative, so rates and percentiles come from the
difference between two scrapes of the same pod: `PodHistory` keeps each pod's recent scrapes
and answers for the newest against the oldest one still inside the rate window. A counter that
went down means the process restarted; that pod's history starts over (a rate across a
restart would be garbage). Percentiles are computed the way Prometheus' histogram_quantile
does (linear within the bucket), over the bucket differences summed across pods, so the
service-wide p95 is the p95 of all its requests, not an average of per-pod p95s.

Parsing and arithmetic are pure (`parse`, `PodHistory`, `snapshot`, `quantile`); `scrape`
is the one function that does I/O.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

from modelship.autoscale.decision import PodSignals, Snapshot
from modelship.contracts import (
    DEMAND_OUTCOMES, INFLIGHT_METRIC, METRICS_PORT, MIRROR_METRIC, QUEUE_DURATION_METRIC, REQUEST_DURATION_METRIC,
    REQUESTS_METRIC,
)

PERCENTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}


@dataclasses.dataclass(frozen=True)
class Scrape:
    """The cumulative values one scrape of one pod found, for one model (all versions and
    protocols summed)."""

    at: float
    requests: float  # DEMAND_OUTCOMES summed
    buckets: tuple[tuple[float, float], ...]  # request duration: (upper bound, cumulative count), +Inf last
    queue_sum: float
    queue_count: float
    inflight: float
    # Every outcome's cumulative count, sorted by outcome (the canary analysis reads errors and sheds).
    outcomes: tuple[tuple[str, float], ...] = ()
    # MIRROR_METRIC's cumulative count per outcome (a canary mirroring to stable; empty otherwise).
    mirror: tuple[tuple[str, float], ...] = ()


class MetricsError(ValueError):
    """The text is not the modelship-server metrics this module knows; says why."""


def parse(text: str, *, model: str, at: float) -> Scrape:
    """One pod's /metrics text -> the values the autoscaler reads, for `model`."""
    from prometheus_client.parser import text_string_to_metric_families

    requests = queue_sum = queue_count = inflight = 0.0
    buckets: dict[float, float] = {}
    outcomes: dict[str, float] = {}
    mirror: dict[str, float] = {}
    seen = False
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as error:
        raise MetricsError(f"not Prometheus text format: {error}") from None
    for family in families:
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            name = sample.name
            if name == f"{REQUESTS_METRIC}_total" or (name == REQUESTS_METRIC and family.type == "counter"):
                seen = True
                outcome = sample.labels.get("outcome", "")
                outcomes[outcome] = outcomes.get(outcome, 0.0) + sample.value
                if outcome in DEMAND_OUTCOMES:
                    requests += sample.value
            elif name == f"{REQUEST_DURATION_METRIC}_bucket":
                bound = math.inf if sample.labels["le"] in ("+Inf", "Inf") else float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif name == f"{QUEUE_DURATION_METRIC}_sum":
                queue_sum += sample.value
            elif name == f"{QUEUE_DURATION_METRIC}_count":
                queue_count += sample.value
            elif name == INFLIGHT_METRIC:
                inflight += sample.value
            elif name == f"{MIRROR_METRIC}_total":
                outcome = sample.labels.get("outcome", "")
                mirror[outcome] = mirror.get(outcome, 0.0) + sample.value
    if not seen:
        raise MetricsError(f"no {REQUESTS_METRIC}_total for model {model!r} "
                           "(is this a modelship-server, serving that model?)")
    return Scrape(at=at, requests=requests, buckets=tuple(sorted(buckets.items())),
                  queue_sum=queue_sum, queue_count=queue_count, inflight=inflight,
                  outcomes=tuple(sorted(outcomes.items())), mirror=tuple(sorted(mirror.items())))


@dataclasses.dataclass(frozen=True)
class Delta:
    """What happened at one pod between two scrapes."""

    seconds: float
    requests: float
    buckets: tuple[tuple[float, float], ...]
    queue_sum: float
    queue_count: float
    inflight_start: float
    inflight_end: float


class PodHistory:
    """Recent scrapes of every pod of one ModelService, oldest first."""

    def __init__(self, window_seconds: float = 6.0, keep: int = 64) -> None:
        self.window = window_seconds
        self._scrapes: dict[str, collections.deque[Scrape]] = {}
        self._failed_at: dict[str, float] = {}
        self._keep = keep

    def add(self, pod: str, scrape: Scrape) -> None:
        history = self._scrapes.setdefault(pod, collections.deque(maxlen=self._keep))
        if history and (scrape.requests < history[-1].requests or scrape.queue_count < history[-1].queue_count):
            history.clear()  # the counters went back: the server restarted
        history.append(scrape)
        self._failed_at.pop(pod, None)

    def failed(self, pod: str, at: float) -> None:
        """A scrape of `pod` failed at `at`: its older scrapes stay, and go stale by themselves."""
        self._failed_at[pod] = at

    def forget_except(self, pods: Iterable[str]) -> None:
        keep = set(pods)
        for name in [n for n in self._scrapes if n not in keep]:
            del self._scrapes[name]
        for name in [n for n in self._failed_at if n not in keep]:
            del self._failed_at[name]

    def latest(self, pod: str) -> Scrape | None:
        history = self._scrapes.get(pod)
        return history[-1] if history else None

    def delta(self, pod: str) -> Delta | None:
        """Newest scrape against the oldest within the window (at least two scrapes apart)."""
        history = self._scrapes.get(pod)
        if not history or len(history) < 2:
            return None
        new = history[-1]
        old = next((s for s in history if new.at - s.at <= self.window and s is not new), None)
        if old is None:  # the previous scrape is older than the window: use it anyway
            old = history[-2]
        seconds = new.at - old.at
        if seconds <= 0:
            return None
        old_buckets = dict(old.buckets)
        buckets = tuple((le, max(0.0, n - old_buckets.get(le, 0.0))) for le, n in new.buckets)
        return Delta(seconds=seconds, requests=new.requests - old.requests, buckets=buckets,
                     queue_sum=new.queue_sum - old.queue_sum, queue_count=new.queue_count - old.queue_count,
                     inflight_start=old.inflight, inflight_end=new.inflight)


@dataclasses.dataclass(frozen=True)
class PodState:
    """What the operator's cache says about one serving pod."""

    name: str
    ip: str | None
    ready: bool
    ready_since: float | None


def snapshot(pods: Sequence[PodState], history: PodHistory) -> Snapshot:
    """The decision's input from the pods' scrape histories."""
    signals = []
    total: dict[float, float] = {}
    for pod in pods:
        latest = history.latest(pod.name)
        delta = history.delta(pod.name)
        if latest is None:
            signals.append(PodSignals(name=pod.name, ready=pod.ready, ready_since=pod.ready_since))
            continue
        if delta is None:
            signals.append(PodSignals(name=pod.name, ready=pod.ready, ready_since=pod.ready_since,
                                      scraped_at=latest.at, inflight=latest.inflight))
            continue
        for le, n in delta.buckets:
            total[le] = total.get(le, 0.0) + n
        samples = int(round(delta.buckets[-1][1])) if delta.buckets else 0
        signals.append(PodSignals(
            name=pod.name, ready=pod.ready, ready_since=pod.ready_since, scraped_at=latest.at,
            requests_per_second=max(0.0, delta.requests) / delta.seconds,
            backlog_growth=(delta.inflight_end - delta.inflight_start) / delta.seconds,
            inflight=delta.inflight_end,
            queue_seconds=delta.queue_sum / delta.queue_count if delta.queue_count > 0 else None,
            samples=samples,
        ))
    cumulative = tuple(sorted(total.items()))
    count = int(round(cumulative[-1][1])) if cumulative else 0
    latency = {name: q for name, p in PERCENTILES.items() if (q := quantile(p, cumulative)) is not None}
    return Snapshot(pods=tuple(signals), latency_seconds=latency, latency_samples=count)


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """histogram_quantile over cumulative (upper bound, count) pairs, +Inf last; None when
    there were no observations. Linear within a bucket; a quantile in the +Inf bucket
    answers the highest finite bound, as Prometheus does."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


async def scrape(session: Any, url: str, *, model: str, at: float, timeout: float = 1.0) -> Scrape:
    """GET one pod's metrics with an aiohttp `session`; raises on any failure."""
    async with asyncio.timeout(timeout):
        async with session.get(url) as response:
            if response.status != 200:
                raise MetricsError(f"{url} answered HTTP {response.status}")
            text = await response.text()
    return parse(text, model=model, at=at)


def metrics_url(pod: PodState, port: int = METRICS_PORT) -> str | None:
    return f"http://{pod.ip}:{port}/metrics" if pod.ip else None


async def scrape_all(session: Any, pods: Sequence[PodState], history: PodHistory, *, model: str,
                     clock: Callable[[], float], timeout: float = 1.0, port: int = METRICS_PORT) -> Mapping[str, str]:
    """Scrape every ready pod concurrently into `history`; returns pod -> error for failures."""
    errors: dict[str, str] = {}

    async def one(pod: PodState) -> None:
        url = metrics_url(pod, port)
        if url is None:
            return
        try:
            result = await scrape(session, url, model=model, at=clock(), timeout=timeout)
        except Exception as error:  # noqa: BLE001 - any failure is a gap in this pod's metrics, never a crash
            history.failed(pod.name, clock())
            errors[pod.name] = f"{type(error).__name__}: {error}"
            return
        history.add(pod.name, result)

    await asyncio.gather(*(one(p) for p in pods if p.ready))
    history.forget_except(p.name for p in pods)
    return errors
