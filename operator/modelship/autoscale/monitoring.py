"""The monitoring loop: one task per ModelService with spec.monitoring.enabled, every
`interval` seconds: scrape each ready pod's metrics port (the way the builtin autoscaler
does, no Prometheus needed), parse the monitoring series (`parse`, pure), decide
(status/monitoring.py, pure), and wake the reconciler when the settled view changed. The
reconciler writes status.monitoring and the conditions through its `extra_status` seam, so it
stays the one status writer; its condition transitions become Events.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Mapping, Protocol

from modelship import contracts
from modelship.api.v1alpha1 import ModelService
from modelship.autoscale.loop import pod_states
from modelship.autoscale.service_loop import ServiceLoop
from modelship.autoscale.signals import MetricsError, metrics_url
from modelship.kube.cache import Key, Store
from modelship.status import conditions as c
from modelship.status import monitoring as m

log = logging.getLogger("modelship.monitoring")

DEFAULT_INTERVAL_SECONDS = 5.0


def parse(text: str, *, model: str) -> m.PodReading:
    """One pod's /metrics text -> its monitoring series for `model`. A server without
    monitoring exports none of them: a reading with no reference and no tensors."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as error:
        raise MetricsError(f"not Prometheus text format: {error}") from None
    reference = labels = written = dropped = 0.0
    psi: dict[str, float] = {}
    ks: dict[str, float] = {}
    window: dict[str, float] = {}
    quality: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            name, tensor = sample.name, sample.labels.get("tensor", "")
            if name == contracts.DRIFT_SCORE_METRIC:
                test = sample.labels.get("test")
                if test == "psi":
                    psi[tensor] = sample.value
                elif test == "ks":
                    ks[tensor] = sample.value
            elif name == contracts.DRIFT_WINDOW_METRIC:
                window[tensor] = sample.value
            elif name == contracts.DRIFT_REFERENCE_METRIC:
                reference = max(reference, sample.value)
            elif name == contracts.QUALITY_METRIC and sample.labels.get("metric") in contracts.QUALITY_METRICS:
                quality[sample.labels["metric"]] = sample.value
            elif name == contracts.QUALITY_LABELS_METRIC:
                labels += sample.value
            elif name in (contracts.CAPTURE_METRIC, f"{contracts.CAPTURE_METRIC}_total"):
                if sample.labels.get("outcome") == "written":
                    written += sample.value
                elif sample.labels.get("outcome") == "dropped":
                    dropped += sample.value
    tensors = tuple(m.TensorReading(tensor=t, window=window.get(t, 0.0), psi=psi.get(t), ks=ks.get(t))
                    for t in sorted(set(psi) | set(ks) | set(window)))
    return m.PodReading(reference_samples=reference, tensors=tensors, quality=quality, quality_labels=labels,
                        written=written, dropped=dropped)


class MonitoringMetrics(Protocol):
    """What the loop reports to the operator's metrics (controller/metrics.py)."""

    def observe_monitoring(self, key: Key, conditions: dict[str, str | None]) -> None: ...


def condition_states(view: m.View) -> dict[str, str | None]:
    """The view's conditions as the operator's gauge carries them (None: Unknown or not configured)."""
    out: dict[str, str | None] = {}
    for type_, verdict in ((m.DATA_DRIFT, view.drift), (m.QUALITY_DEGRADED, view.quality),
                           (m.CAPTURE_DROPPING, view.capture)):
        out[type_] = verdict.status if verdict is not None and verdict.status != c.UNKNOWN else None
    return out


class Monitor(ServiceLoop):
    """Owns the per-service tasks and the views the reconciler publishes."""

    label = "monitor"
    log = log

    def __init__(self, *, store: Store, wake: Callable[[Key], None], interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
                 scrape_port: int = contracts.METRICS_PORT, scrape_timeout: float = 2.0,
                 metrics: MonitoringMetrics | None = None) -> None:
        super().__init__(store)
        self.wake, self.metrics = wake, metrics
        self.interval = interval_seconds
        self.scrape_port, self.scrape_timeout = scrape_port, scrape_timeout
        self.views: dict[Key, m.View] = {}
        self.counters: dict[Key, dict[str, tuple[float, float]]] = {}

    # --- the reconciler's seam ---------------------------------------------------------------

    def status_for(self, key: Key, msvc: ModelService) -> tuple[dict[str, Any], list[c.ConditionSpec]]:
        """status.monitoring and the monitoring conditions for `msvc` (a read of the loop's state)."""
        previous = ((self.store.msvc(key) or {}).get("status") or {}).get("conditions")
        if not msvc.spec.monitoring.enabled:
            return m.fields(None), m.conditions(msvc, None, previous)
        view = self.views.get(key)
        if view is None:
            return {}, m.conditions(msvc, None, previous)
        return m.fields(view), m.conditions(msvc, view, previous)

    # --- tasks ---------------------------------------------------------------------------------

    def wants(self, msvc: ModelService) -> bool:
        return msvc.spec.monitoring.enabled

    def _forget(self, key: Key) -> None:
        super()._forget(key)
        self.counters.pop(key, None)
        if self.metrics is not None:
            self.metrics.observe_monitoring(key, dict.fromkeys(m.MONITORING_CONDITIONS))
        if self.views.pop(key, None) is not None:
            self.wake(key)  # the reconciler turns the conditions False and removes status.monitoring

    async def step(self, key: Key) -> float:
        """Scrape, decide and publish once for `key`; the seconds until the next tick."""
        msvc = self._msvc(key)
        if msvc is None or not msvc.spec.monitoring.enabled:
            return self.interval
        pods = [p for p in pod_states(self.store.pods(key)) if p.ready]
        readings = await self._scrape(msvc, pods)
        old = self.views.get(key)
        view = m.decide(msvc, readings, previous=old, previous_counters=self.counters.get(key))
        self.counters[key] = {name: (r.written, r.dropped) for name, r in readings.items() if r is not None}
        settled = m.settle(old, view)
        if settled is not old:
            self.views[key] = settled
            if self.metrics is not None:
                self.metrics.observe_monitoring(key, condition_states(settled))
            self.wake(key)
        return self.interval

    async def _scrape(self, msvc: ModelService, pods: list[Any]) -> Mapping[str, m.PodReading | None]:
        session = await self._client()
        model = msvc.spec.model.name

        async def one(pod: Any) -> tuple[str, m.PodReading | None]:
            url = metrics_url(pod, self.scrape_port)
            if url is None:
                return pod.name, None
            try:
                async with asyncio.timeout(self.scrape_timeout):
                    async with session.get(url) as response:
                        if response.status != 200:
                            raise MetricsError(f"{url} answered HTTP {response.status}")
                        text = await response.text()
                return pod.name, parse(text, model=model)
            except Exception as error:  # noqa: BLE001 - a failed scrape is a gap, never a crash
                log.debug("monitoring scrape of %s failed: %s", pod.name, error)
                return pod.name, None

        return dict(await asyncio.gather(*(one(p) for p in pods)))
