"""The decision's inputs through a Prometheus server's HTTP API, for clusters that have one.

The same signals as `signals` (per-pod demand rate, in-flight and its growth, queue time,
scrape freshness, and service-wide percentiles from the summed histogram buckets), asked as
PromQL instant queries. Which series belong to which pod is up to the scrape config; the
defaults match the usual Kubernetes pod discovery relabelling (`pod` and `namespace`
labels), and `podLabel`/`namespaceLabel` change them. Building the queries and assembling
the answers are pure; `fetch_snapshot` does the HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from typing import Any, Mapping, Sequence

from modelship.autoscale.decision import PodSignals, Snapshot
from modelship.autoscale.signals import PERCENTILES, PodState
from modelship.contracts import (
    DEMAND_OUTCOMES, INFLIGHT_METRIC, QUEUE_DURATION_METRIC, REQUEST_DURATION_METRIC, REQUESTS_METRIC,
)


@dataclasses.dataclass(frozen=True)
class PrometheusSource:
    url: str  # e.g. http://prometheus.monitoring:9090
    pod_label: str = "pod"
    namespace_label: str | None = "namespace"
    rate_window_seconds: float = 30.0
    timeout_seconds: float = 2.0


class PrometheusError(RuntimeError):
    """Prometheus could not answer; the message says which query and why."""


def _selector(model: str, namespace: str, pods: Sequence[PodState], source: PrometheusSource,
              extra: str = "") -> str:
    names = "|".join(re.escape(p.name) for p in pods) or "^$"
    parts = [f'model="{_quote(model)}"', f'{source.pod_label}=~"{_quote(names)}"']
    if source.namespace_label:
        parts.append(f'{source.namespace_label}="{_quote(namespace)}"')
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def queries(model: str, namespace: str, pods: Sequence[PodState], source: PrometheusSource) -> dict[str, str]:
    """Name -> PromQL for everything one decision needs."""
    w = f"[{int(source.rate_window_seconds)}s]"
    by = f"sum by ({source.pod_label})"
    sel = _selector(model, namespace, pods, source)
    demand = _selector(model, namespace, pods, source, f'outcome=~"{"|".join(DEMAND_OUTCOMES)}"')
    requests, inflight, queue, duration = REQUESTS_METRIC, INFLIGHT_METRIC, QUEUE_DURATION_METRIC, REQUEST_DURATION_METRIC
    out = {
        "requests": f"{by} (rate({requests}_total{demand}{w}))",
        "inflight": f"{by} ({inflight}{sel})",
        "growth": f"{by} (deriv({inflight}{sel}{w}))",
        "queue": f"{by} (rate({queue}_sum{sel}{w})) / "
                 f"{by} (rate({queue}_count{sel}{w}))",
        "scraped": f"max by ({source.pod_label}) (timestamp({inflight}{sel}))",
        "samples": f"sum(increase({duration}_count{sel}{w}))",
    }
    for name, q in PERCENTILES.items():
        out[name] = f"histogram_quantile({q}, sum by (le) (rate({duration}_bucket{sel}{w})))"
    return out


def assemble(results: Mapping[str, Sequence[Mapping[str, Any]]], pods: Sequence[PodState],
             source: PrometheusSource) -> Snapshot:
    """Turn the instant-query results (the `data.result` vectors) into a Snapshot."""

    def per_pod(name: str) -> dict[str, float]:
        out = {}
        for item in results.get(name) or []:
            value = float(item["value"][1])
            pod = (item.get("metric") or {}).get(source.pod_label)
            if pod is not None and math.isfinite(value):
                out[pod] = value
        return out

    def scalar(name: str) -> float | None:
        for item in results.get(name) or []:
            value = float(item["value"][1])
            return value if math.isfinite(value) else None
        return None

    requests, inflight, growth = per_pod("requests"), per_pod("inflight"), per_pod("growth")
    queue, scraped = per_pod("queue"), per_pod("scraped")
    signals = [
        PodSignals(
            name=p.name, ready=p.ready, ready_since=p.ready_since, scraped_at=scraped.get(p.name),
            requests_per_second=requests.get(p.name), backlog_growth=growth.get(p.name, 0.0),
            inflight=inflight.get(p.name), queue_seconds=queue.get(p.name),
        )
        for p in pods
    ]
    latency = {name: v for name in PERCENTILES if (v := scalar(name)) is not None}
    samples = scalar("samples")
    return Snapshot(pods=tuple(signals), latency_seconds=latency,
                    latency_samples=int(round(samples)) if samples is not None else 0)


async def fetch_snapshot(session: Any, source: PrometheusSource, *, model: str, namespace: str,
                         pods: Sequence[PodState]) -> Snapshot:
    """Ask Prometheus every query concurrently (aiohttp `session`); PrometheusError on failure."""
    ready = [p for p in pods if p.ready]
    named = queries(model, namespace, ready, source)

    async def one(name: str, query: str) -> tuple[str, list[Mapping[str, Any]]]:
        url = source.url.rstrip("/") + "/api/v1/query"
        try:
            async with asyncio.timeout(source.timeout_seconds):
                async with session.get(url, params={"query": query}) as response:
                    body = await response.json(content_type=None)
        except Exception as error:  # noqa: BLE001 - any failure is this query's PrometheusError
            raise PrometheusError(f"{url}: query {name} failed: {type(error).__name__}: {error}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{url}: query {name} failed: {body.get('error') or body}")
        return name, body["data"]["result"]

    results = dict(await asyncio.gather(*(one(n, q) for n, q in named.items())))
    return assemble(results, pods, source)
