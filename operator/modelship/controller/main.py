"""Run the operator: configure the Kubernetes client and kopf, prime the cache, start workers.

kopf does the watching (with its reconnects and backoffs); the workers here do the
reconciling. Everything is created here and handed down as arguments, never read from
module globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sys
import time
from typing import Any, Sequence

import kopf

from modelship import api
from modelship.autoscale.loop import Autoscaler
from modelship.controller import handlers
from modelship.controller.metrics import OperatorMetrics
from modelship.controller.queue import WorkQueue
from modelship.controller.reconcile import Reconciler
from modelship.kube.cache import Store
from modelship.kube.client import KubeClient, KubeError
from modelship.kube.kinds import PLURALS
from modelship.render import AUTOSCALER_KINDS
from modelship.render.names import MANAGED_BY

log = logging.getLogger("modelship.operator")

RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 300.0


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
            for item in await kube.list(path, label_selector=label_selector):
                item.setdefault("apiVersion", f"{group}/{version}" if group else version)
                item.setdefault("kind", kind)
                store.upsert(kind, item)
    # HPAs and ScaledObjects are not watched (KEDA may not be installed: 404, skipped); one
    # LIST tells the reconciler which exist, so switching engines removes the old autoscaler.
    for api_version, kind in AUTOSCALER_KINDS:
        plural = PLURALS[(api_version, kind)]
        paths = [f"/apis/{api_version}/{plural}"] if not namespaces else [
            f"/apis/{api_version}/namespaces/{ns}/{plural}" for ns in namespaces]
        for path in paths:
            try:
                items = await kube.list(path, label_selector=selector)
            except KubeError as error:
                if error.status == 404:
                    break
                raise
            for item in items:
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
                store.upsert(kind, item)


async def worker(reconciler: Reconciler, queue: WorkQueue, failures: dict[Any, int],
                 metrics: OperatorMetrics | None = None) -> None:
    while True:
        key = await queue.get()
        started = time.perf_counter()
        try:
            await reconciler.reconcile(key)
            failures.pop(key, None)
        except KubeError as error:
            if metrics is not None:
                metrics.reconcile_errors.labels("api").inc()
            count = failures[key] = failures.get(key, 0) + 1
            delay = min(RETRY_MAX_SECONDS, RETRY_MIN_SECONDS * 2 ** (count - 1)) * random.uniform(0.8, 1.2)
            log.warning("reconcile of %s/%s failed (%s); retrying in %.0fs", *key, error, delay)
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


async def resync(store: Store, queue: WorkQueue, every: float) -> None:
    """Look at every ModelService now and then even without events (a missed watch event,
    a Deployment's progress deadline): cheap, because reconciles without changes write nothing."""
    while True:
        await asyncio.sleep(every)
        for key in store.keys():  # noqa: SIM118 - Store.keys() is a method, not a dict's
            queue.add(key)


def build_registry(*, client: Any, namespaces: Sequence[str], workers: int, resync_seconds: float,
                   metrics: OperatorMetrics | None = None, prometheus_url: str | None = None) -> kopf.OperatorRegistry:
    """The operator's kopf registry; `client` is the Kubernetes ApiClient its writes go through."""
    registry = kopf.OperatorRegistry()
    store = Store()
    queue = WorkQueue()
    handlers.register(registry, store=store, queue=queue)
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
        autoscaler = Autoscaler(kube=kube, store=store, wake=queue.add, metrics=metrics, prometheus_url=prometheus_url)
        reconciler = Reconciler(kube=kube, store=store, extra_status=autoscaler.status_for)
        failures: dict[Any, int] = {}
        tasks.extend(asyncio.create_task(worker(reconciler, queue, failures, metrics)) for _ in range(workers))
        tasks.append(asyncio.create_task(autoscaler.supervise()))
        tasks.append(asyncio.create_task(resync(store, queue, resync_seconds)))
        for key in store.keys():  # noqa: SIM118 - Store.keys() is a method, not a dict's
            queue.add(key)
        log.info("modelship operator started: %d ModelServices cached, %d workers", len(list(store.keys())), workers)

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
    metrics_port: int = 0, prometheus_url: str | None = None,
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
                              metrics=metrics, prometheus_url=prometheus_url)
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness,
    )
    return 0
