"""The builtin autoscaler's loop: one task per ModelService with autoscaling enabled and engine
builtin, every `intervalSeconds`: read signals, decide, act.

Acting is a merge patch of the Deployment's scale subresource with field manager `modelship`
(the user's ModelService is never written; the rendered Deployment leaves .spec.replicas out,
so the operator's own server-side apply never takes the count back), and an Event on the
ModelService (ScaledUp / ScaledDown, with the decision's reason). What the user reads in
status (status.autoscaling, status.latency, ScalingLimited) is written by the reconciler
through its `extra_status` seam from the view kept here; the loop only wakes the reconciler
when that view changes in a way worth a write (`report.settle`).

An operator restart starts each service's state afresh, with the current count as the first
recommendation, so no scale-down happens until a whole window of new measurements says so.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any, Callable, Mapping, Protocol, Sequence


from modelship import contracts
from modelship.api.v1alpha1 import ModelService
from modelship.autoscale import promql, report, signals
from modelship.autoscale.decision import Decision, PodSignals, Policy, Snapshot, State, decide
from modelship.autoscale.policy import policy_of
from modelship.autoscale.service_loop import ServiceLoop
from modelship.kube import objects
from modelship.kube.cache import Key, Store
from modelship.kube.client import KubeClient, KubeError
from modelship.render import names
from modelship.render.capacity import capacity_of
from modelship.status import conditions as c

log = logging.getLogger("modelship.autoscale")

SCALED_UP, SCALED_DOWN = "ScaledUp", "ScaledDown"




class DecisionMetrics(Protocol):
    """What the loop reports to the operator's metrics (controller/metrics.py)."""

    def observe_decision(self, key: Key, decision: Decision, policy: Policy) -> None: ...

    def forget(self, key: Key) -> None: ...


def builtin_enabled(msvc: ModelService) -> bool:
    return msvc.spec.autoscaling.enabled and msvc.spec.autoscaling.engine == "builtin"


def pod_states(pods: Sequence[Mapping[str, Any]]) -> list[signals.PodState]:
    """Serving pods as the decision sees them; terminating pods no longer take traffic."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        status = pod.get("status") or {}
        ready, since = False, None
        for condition in status.get("conditions") or []:
            if condition.get("type") == "Ready":
                ready = condition.get("status") == "True"
                since = _epoch(condition.get("lastTransitionTime"))
        out.append(signals.PodState(name=meta.get("name", ""), ip=status.get("podIP"), ready=ready, ready_since=since))
    return out


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _rfc3339(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Autoscaler(ServiceLoop):
    """Owns the per-service tasks, their decision state and the views the reconciler publishes."""

    label = "autoscaler"

    def __init__(self, *, kube: KubeClient, store: Store, wake: Callable[[Key], None],
                 clock: Callable[[], float] = time.time, interval_seconds: float | None = None,
                 prometheus_url: str | None = None, metrics: DecisionMetrics | None = None,
                 scrape_port: int = contracts.METRICS_PORT, scrape_timeout: float = 1.0) -> None:
        super().__init__(store)
        self.kube, self.wake, self.clock = kube, wake, clock
        self.interval_override = interval_seconds
        self.prometheus_url = prometheus_url
        self.metrics = metrics
        self.scrape_port, self.scrape_timeout = scrape_port, scrape_timeout
        self.views: dict[Key, report.View] = {}
        self.states: dict[Key, State] = {}
        self.histories: dict[Key, signals.PodHistory] = {}
        # Our last scale per service: (the Deployment's resourceVersion before it, replicas).
        # Until the watch delivers a newer Deployment, the cache's count is older than ours.
        self._scaled: dict[Key, tuple[str | None, int]] = {}

    # --- the reconciler's seam ---------------------------------------------------------------

    def status_for(self, key: Key, msvc: ModelService, unavailable: frozenset[str] = frozenset()
                   ) -> tuple[dict[str, Any], list[c.ConditionSpec]]:
        """status.autoscaling / status.latency, ScalingLimited and AutoscalerReady for `msvc`
        (a read of the loop's state; `unavailable`: kinds whose CRD is missing)."""
        autoscaling = msvc.spec.autoscaling
        status = (self.store.msvc(key) or {}).get("status") or {}
        if not autoscaling.enabled:
            return report.status_fields(None), report.disabled_conditions(status.get("conditions"))
        ready = report.autoscaler_ready(msvc, unavailable)
        if autoscaling.engine != "builtin":
            capacity = capacity_of(msvc, status)
            return report.status_fields(report.static_view(msvc, capacity)), ready
        view = self.views.get(key)
        if view is None:
            capacity = capacity_of(msvc, (self.store.msvc(key) or {}).get("status"))
            view = report.View(engine="builtin", capacity_per_replica=capacity.requests_per_second,
                               capacity_source=capacity.source, reason="waiting for the first measurement",
                               percentile=msvc.spec.slo.percentile if msvc.spec.slo else None,
                               slo_milliseconds=msvc.spec.slo.latency_milliseconds if msvc.spec.slo else None,
                               max_replicas=autoscaling.max_replicas)
        return report.status_fields(view), report.limited_condition(view) + ready

    # --- tasks ---------------------------------------------------------------------------------

    def wants(self, msvc: ModelService) -> bool:
        return builtin_enabled(msvc)

    def _forget(self, key: Key) -> None:
        super()._forget(key)
        self.states.pop(key, None)
        self.histories.pop(key, None)
        self._scaled.pop(key, None)
        if self.metrics is not None:
            self.metrics.forget(key)
        if self.views.pop(key, None) is not None:
            self.wake(key)  # let the reconciler remove what was published

    # --- one tick ------------------------------------------------------------------------------

    async def step(self, key: Key) -> float:
        """Measure, decide and act once for `key`; returns the seconds until the next tick."""
        msvc = self._msvc(key)
        if msvc is None or not builtin_enabled(msvc):
            return 1.0
        interval = float(self.interval_override or msvc.spec.autoscaling.interval_seconds)
        body = self.store.msvc(key) or {}
        capacity = capacity_of(msvc, body.get("status"))
        policy = policy_of(msvc, capacity, interval_seconds=interval)
        deployment = self.store.child(key, "Deployment", names.deployment(msvc.metadata.name))
        base: dict[str, Any] = dict(engine="builtin", capacity_per_replica=capacity.requests_per_second,
                    capacity_source=capacity.source, percentile=policy.percentile,
                    slo_milliseconds=msvc.spec.slo.latency_milliseconds if msvc.spec.slo else None,
                    max_replicas=policy.max_replicas)
        old = self.views.get(key)
        if deployment is None or not objects.controlled_by(deployment, msvc.metadata.uid):
            self._publish(key, report.View(reason="waiting for the Deployment", **base))
            return interval
        current = int((deployment.get("spec") or {}).get("replicas", 1))
        version = (deployment.get("metadata") or {}).get("resourceVersion")
        scaled = self._scaled.get(key)
        if scaled is not None and scaled[0] == version:
            current = scaled[1]
        now = self.clock()
        state = self.states.get(key) or State(recommendations=((now, current),))
        pods = pod_states(self.store.pods(key))
        snapshot, problem = await self._measure(key, msvc, pods)
        decision = decide(snapshot, policy, current=current, state=state, now=now)
        reason = decision.reason if problem is None or not decision.held else f"{decision.reason} ({problem})"
        self.states[key] = decision.state
        last_scale = old.last_scale_time if old is not None else None
        if decision.desired != current:
            try:
                await self._scale(msvc, decision.desired)
            except KubeError as error:
                log.warning("cannot scale %s/%s to %d: %s", *key, decision.desired, error)
                reason = f"cannot scale to {decision.desired}: {error}"
            else:
                self._scaled[key] = (version, decision.desired)
                last_scale = _rfc3339(now)
                log.info("scaled %s/%s %d->%d: %s", *key, current, decision.desired, decision.reason)
                await self._event(body, current, decision)
                current = decision.desired
        if self.metrics is not None:
            self.metrics.observe_decision(key, decision, policy)
        limited = decision.limited if not decision.held else (old.limited if old is not None else None)
        self._publish(key, report.View(
            reason=reason, desired=decision.desired, current=current,
            requests_per_second=decision.observed_requests_per_second,
            latency_seconds=decision.observed_latency_seconds if not decision.held else
            (old.latency_seconds if old is not None else None),
            limited=limited, last_scale_time=last_scale,
            **{**base, "capacity_per_replica": decision.capacity_per_replica}))
        return interval

    def _publish(self, key: Key, view: report.View) -> None:
        old = self.views.get(key)
        settled = report.settle(old, view)
        if settled is not old:
            self.views[key] = settled
            self.wake(key)

    async def _measure(self, key: Key, msvc: ModelService, pods: list[signals.PodState]) -> tuple[Snapshot, str | None]:
        session = await self._client()
        settings = msvc.spec.autoscaling.prometheus
        url = settings.url if settings is not None else self.prometheus_url
        if url is not None:
            source = promql.PrometheusSource(
                url=url, pod_label=settings.pod_label if settings else "pod",
                namespace_label=settings.namespace_label if settings else "namespace",
                rate_window_seconds=float(settings.rate_window_seconds if settings else 30))
            try:
                return await promql.fetch_snapshot(session, source, model=msvc.spec.model.name,
                                                   namespace=msvc.metadata.namespace, pods=pods), None
            except promql.PrometheusError as error:
                blank = tuple(PodSignals(name=p.name, ready=p.ready, ready_since=p.ready_since) for p in pods)
                return Snapshot(pods=blank), str(error)
        history = self.histories.setdefault(key, signals.PodHistory())
        errors = await signals.scrape_all(session, pods, history, model=msvc.spec.model.name, clock=self.clock,
                                          timeout=self.scrape_timeout, port=self.scrape_port)
        problem = None
        if errors:
            name, reason = next(iter(errors.items()))
            problem = f"scrape of {name} failed: {reason}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
        return signals.snapshot(pods, history), problem

    async def _scale(self, msvc: ModelService, replicas: int) -> None:
        """Set the Deployment's replicas through its scale subresource, as field manager modelship."""
        await self.kube.scale("apps/v1", "Deployment", msvc.metadata.namespace,
                              names.deployment(msvc.metadata.name), replicas)

    async def _event(self, body: Mapping[str, Any], old: int, decision: Decision) -> None:
        meta = body.get("metadata") or {}
        event = objects.event(
            body, reason=SCALED_UP if decision.desired > old else SCALED_DOWN,
            message=f"{old} -> {decision.desired} replicas: {decision.reason}", now=_rfc3339(self.clock()),
            component="modelship-autoscaler", reporting_component="modelship.dev/autoscaler",
            reporting_instance="modelship")
        try:
            await self.kube.create_event(event)
        except KubeError as error:
            log.warning("cannot post Event for %s/%s: %s", meta.get("namespace"), meta.get("name"), error)
