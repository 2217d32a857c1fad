"""Run the operator: configure the Kubernetes client and kopf, prime the cache, start workers.

kopf does the watching (with its reconnects and backoffs); the workers here do the
reconciling. Everything is created here and handed down as arguments, never read from
module globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import sys
import time
from typing import Any, Callable, Sequence

import kopf

from modelship import api
from modelship.autoscale.loop import Autoscaler
from modelship.autoscale.monitoring import Monitor
from modelship.canary.observe import CanaryObserver
from modelship.controller import handlers
from modelship.controller.metrics import OperatorMetrics
from modelship.controller.queue import WorkQueue
from modelship.controller.reconcile import Reconciler
from modelship.kube import relist, retry
from modelship.kube.cache import Key, Store
from modelship.kube.client import KubeClient, KubeError
from modelship.kube.kinds import PLURALS
from modelship.kube.leader import LeaderElector
from modelship.render import AUTOSCALER_KINDS, ROUTE_KINDS
from modelship.render.names import MANAGED_BY

log = logging.getLogger("modelship.operator")

RETRY_MAX_SECONDS = 300.0  # after a crash (a bug); API failures back off by kube.retry


def api_client() -> Any:
    """A Kubernetes ApiClient from the in-cluster ServiceAccount, else KUBECONFIG."""
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 32
    return kubernetes.client.ApiClient(configuration)


async def prime(kube: KubeClient, store: Store, namespaces: Sequence[str]) -> None:
    """Fill the cache with one LIST per kind before any reconcile, so a restarted operator
    sees its Deployments and pods and does not report a transient, wrong status."""
    selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
    kinds = [(api.GROUP, api.VERSION, api.PLURAL, api.KIND, None)] + [
        (g, v, p, k, selector) for g, v, p, k in handlers.WATCHED
    ]
    for group, version, plural, kind, label_selector in kinds:
        prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
        paths = [f"{prefix}/{plural}"] if not namespaces else [f"{prefix}/namespaces/{ns}/{plural}" for ns in namespaces]
        for path in paths:
            listed = await retry.retrying(functools.partial(kube.list, path, label_selector=label_selector), what=f"LIST {path}")
            for item in listed:
                item.setdefault("apiVersion", f"{group}/{version}" if group else version)
                item.setdefault("kind", kind)
                store.upsert(kind, item)
    # HPAs and ScaledObjects are not watched (KEDA may not be installed: 404, skipped); one
    # LIST tells the reconciler which exist, so switching engines removes the old autoscaler.
    for api_version, kind in (*AUTOSCALER_KINDS, *ROUTE_KINDS):
        plural = PLURALS[(api_version, kind)]
        paths = [f"/apis/{api_version}/{plural}"] if not namespaces else [
            f"/apis/{api_version}/namespaces/{ns}/{plural}" for ns in namespaces]
        for path in paths:
            try:
                items = await retry.retrying(functools.partial(kube.list, path, label_selector=selector), what=f"LIST {path}")
            except KubeError as error:
                if error.status == 404:
                    break
                raise
            for item in items:
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
                store.upsert(kind, item)


async def worker(reconciler: Reconciler, queue: WorkQueue, failures: dict[Any, int],
                 metrics: OperatorMetrics | None = None, holds: dict[Any, float] | None = None) -> None:
    """Reconcile keys from `queue`; failed ones come back after a backoff. `holds` (shared by
    the workers): key -> loop time before which it is not reconciled, because the API server
    said Retry-After; events for it meanwhile wait too."""
    holds = {} if holds is None else holds
    loop = asyncio.get_running_loop()
    while True:
        key = await queue.get()
        wait = holds.get(key, 0.0) - loop.time()
        if wait > 0:
            queue.done(key)
            queue.add_after(key, wait)
            continue
        started = time.perf_counter()
        try:
            await reconciler.reconcile(key)
            failures.pop(key, None)
            holds.pop(key, None)
        except KubeError as error:
            if metrics is not None:
                metrics.reconcile_errors.labels("api").inc()
            count = failures[key] = failures.get(key, 0) + 1
            delay = retry.backoff(count, status=error.status, after=error.retry_after)
            if error.retry_after is not None:
                holds[key] = loop.time() + error.retry_after
            log.warning("reconcile of %s/%s failed (%s%s); retrying in %.1fs", *key,
                        f"HTTP {error.status}: " if error.status else "", error, delay)
            queue.add_after(key, delay)
        except Exception:  # a bug: log it, keep the operator alive, retry later
            if metrics is not None:
                metrics.reconcile_errors.labels("crash").inc()
            log.exception("reconcile of %s/%s crashed", *key)
            queue.add_after(key, RETRY_MAX_SECONDS)
        finally:
            if metrics is not None:
                metrics.reconcile_duration.observe(time.perf_counter() - started)
            queue.done(key)


async def resync(store: Store, queue: WorkQueue, every: float, prune: Callable[[], None] | None = None) -> None:
    """Look at every ModelService now and then even without events (a missed watch event,
    a Deployment's progress deadline): cheap, because reconciles without changes write nothing.
    `prune`: also ask for one LIST that finds ModelServices deleted unseen (kube/relist.py)."""
    while True:
        await asyncio.sleep(every)
        if prune is not None:
            prune()
        for key in store.keys():  # noqa: SIM118 - Store.keys() is a method, not a dict's
            queue.add(key)


@dataclasses.dataclass(frozen=True)
class Election:
    """Where the replicas' Lease lives (kube/leader.py)."""

    namespace: str
    name: str = "modelship-operator"
    identity: str | None = None
    timeout: float = 5.0  # per Lease request: a renewal stuck longer is a renewal missed


def _uids(store: Store) -> dict[Key, str | None]:
    return {key: ((store.msvc(key) or {}).get("metadata") or {}).get("uid")
            for key in store.keys()}  # noqa: SIM118 - Store.keys() is a method, not a dict's


async def _list_msvcs(kube: KubeClient, namespaces: Sequence[str]) -> list[dict[str, Any]]:
    prefix = f"/apis/{api.GROUP}/{api.VERSION}"
    if not namespaces:
        return await kube.list(f"{prefix}/{api.PLURAL}")
    items: list[dict[str, Any]] = []
    for namespace in namespaces:
        items.extend(await kube.list(f"{prefix}/namespaces/{namespace}/{api.PLURAL}"))
    return items


def _forget(store: Store, queue: WorkQueue, key: Key, uid: str | None) -> None:
    body = store.msvc(key)
    if body is not None and (body.get("metadata") or {}).get("uid") == uid:
        store.forget(key)
        queue.add(key)  # the reconciler drops what it kept for it


async def _forward(signal: asyncio.Event, pruner: relist.Pruner) -> None:
    """kopf's relist events (set `signal`) become prune requests."""
    while True:
        await signal.wait()
        signal.clear()
        pruner.request()


def build_registry(*, client: Any, namespaces: Sequence[str], workers: int, resync_seconds: float,
                   metrics: OperatorMetrics | None = None, prometheus_url: str | None = None,
                   election: Election | None = None) -> kopf.OperatorRegistry:
    """The operator's kopf registry; `client` is the Kubernetes ApiClient its writes go through.
    With `election`, every replica watches and caches, and only the Lease's holder writes."""
    registry = kopf.OperatorRegistry()
    store = Store()
    queue = WorkQueue()
    relisted = asyncio.Event()
    handlers.register(registry, store=store, queue=queue, on_relist=relisted.set)
    tasks: list[asyncio.Task[None]] = []
    clients: list[KubeClient] = []

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # Events are ours, one per condition transition
        # No watching of CRDs and namespaces: the operator's resources exist when it starts
        # (the chart installs the CRD first), and the RBAC stays free of cluster-wide reads
        # it would need for nothing else.
        settings.scanning.disabled = True
        settings.persistence.diffbase_storage = handlers.NoDiffBase()
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 60
        # kopf's own requests (lists, watches) retry API errors with these pauses (it honours
        # Retry-After as a floor); longer than its default, so a rough minute of faults is
        # ridden out rather than escalated into a failed watcher.
        settings.networking.error_backoffs = (1, 1, 2, 3, 5, 8, 13, 21, 30, 30, 30, 30, 30, 30)
        kube = KubeClient(client, threads=max(8, 2 * workers))
        clients.append(kube)
        try:
            await prime(kube, store, namespaces)
        except KubeError as error:
            if error.status == 404:
                raise kopf.TemporaryError(
                    f"the ModelService CRD ({api.PLURAL}.{api.GROUP}) is not installed; "
                    "apply crds/ (the Helm chart does this on install)", delay=10,
                ) from None
            raise kopf.TemporaryError(f"cannot list what the operator manages: {error}", delay=10) from None
        pruner = relist.Pruner(snapshot=lambda: _uids(store), list_all=lambda: _list_msvcs(kube, namespaces),
                               forget=lambda key, uid: _forget(store, queue, key, uid))
        relisted.clear()  # prime's LIST is newer than what kopf listed so far
        tasks.append(asyncio.create_task(_forward(relisted, pruner)))
        tasks.append(asyncio.create_task(pruner.run()))

        async def lead() -> None:
            """What only the leader does: reconcile, autoscale, resync. Cancelled when the
            Lease is lost; a later term starts afresh from the (warm) cache."""
            autoscaler = Autoscaler(kube=kube, store=store, wake=queue.add, metrics=metrics,
                                    prometheus_url=prometheus_url)
            monitor = Monitor(store=store, wake=queue.add, metrics=metrics)

            def extra_status(key: Any, msvc: Any, unavailable: frozenset[str]) -> tuple[Any, Any]:
                fields, conds = autoscaler.status_for(key, msvc, unavailable)
                more_fields, more_conds = monitor.status_for(key, msvc)
                return {**fields, **more_fields}, [*conds, *more_conds]

            observer = CanaryObserver(store=store, wake=queue.add)
            reconciler = Reconciler(kube=kube, store=store, extra_status=extra_status,
                                    canary_verdict=observer.verdict)
            failures: dict[Any, int] = {}
            holds: dict[Any, float] = {}
            term = [asyncio.create_task(worker(reconciler, queue, failures, metrics, holds)) for _ in range(workers)]
            term.append(asyncio.create_task(autoscaler.supervise()))
            term.append(asyncio.create_task(monitor.supervise()))
            term.append(asyncio.create_task(observer.supervise()))
            term.append(asyncio.create_task(resync(store, queue, resync_seconds, pruner.request)))
            for key in store.keys():  # noqa: SIM118 - Store.keys() is a method, not a dict's
                queue.add(key)
            log.info("reconciling: %d ModelServices cached, %d workers", len(list(store.keys())), workers)
            try:
                await asyncio.gather(*term)
            finally:
                for task in term:
                    task.cancel()
                for task in term:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

        if election is None:
            tasks.append(asyncio.create_task(lead()))
        else:
            lease_kube = KubeClient(client, threads=2, timeout=election.timeout)  # renewals never queue
            clients.append(lease_kube)
            elector = LeaderElector(lease_kube, namespace=election.namespace, name=election.name,
                                    identity=election.identity)
            tasks.append(asyncio.create_task(elector.run(lead)))
        log.info("modelship operator started: %d ModelServices cached, %d workers%s", len(list(store.keys())),
                 workers, "" if election is None else f", leader election on {election.namespace}/{election.name}")

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        queue.close()
        for kube in clients:
            log.info("API calls: %s", kube.summary())
            kube.close()

    return registry


def run_operator(
    *, namespaces: Sequence[str], workers: int, liveness: str | None, resync_seconds: float, verbose: bool,
    metrics_port: int = 0, prometheus_url: str | None = None, election: Election | None = None,
) -> int:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("kopf.objects", "kopf.activities.probe"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import kubernetes

    try:
        client = api_client()
    except (kubernetes.config.ConfigException, OSError) as error:
        print(f"error: no Kubernetes configuration ({error}); set KUBECONFIG or run inside a cluster",
              file=sys.stderr)
        return 2
    metrics = OperatorMetrics()
    if metrics_port:  # on the pod's own address under the local node agent (contract C5)
        metrics.serve(metrics_port, addr=os.environ.get("MODELSHIP_LISTEN_ADDRESS", "0.0.0.0"))
    registry = build_registry(client=client, namespaces=namespaces, workers=workers, resync_seconds=resync_seconds,
                              metrics=metrics, prometheus_url=prometheus_url, election=election)
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness,
    )
    return 0
