"""The agent's main loop: register the nodes, watch the pods bound to them, and give each pod
a worker; stop everything on SIGTERM.

One list-then-watch per node (field selector spec.nodeName), relisting whenever a watch ends
badly, so a missed event heals on the next list. Pods that finished before this agent started
are left as they are; pods the API server no longer has are stopped and cleaned up.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from modelship.devcluster.agent.admission import admit
from modelship.devcluster.agent.addresses import AddressPool, remove_route, routed_pool
from modelship.devcluster.agent.backoff import BackoffPolicy
from modelship.devcluster.agent.kube import ApiError, Kube
from modelship.devcluster.agent.node import CAPACITY, NodeKeeper
from modelship.devcluster.agent.podworker import PodWorker
from modelship.devcluster.agent.process import sweep

log = logging.getLogger("modelship.agent")

SHUTDOWN_GRACE = 3.0  # `dev-cluster down` tears the whole cluster down: no need for full grace periods


class Agent:
    def __init__(self, kube: Kube, agent_dir: Path, node_names: tuple[str, ...], backoff: BackoffPolicy) -> None:
        self.kube = kube
        self.dir = Path(agent_dir).resolve()
        self.node_names = node_names
        self.backoff = backoff
        self.pool: AddressPool | None = None
        self.nodes = NodeKeeper(kube, node_names)
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    @property
    def pods_dir(self) -> Path:
        return self.dir / "pods"

    def run(self) -> None:
        """Until `stop`: clean up what a previous run left, register, watch."""
        leftovers = sweep(self.dir)
        if leftovers:
            log.info("stopped %d process(es) left by a previous agent run", len(leftovers))
        shutil.rmtree(self.pods_dir, ignore_errors=True)
        self.pods_dir.mkdir(parents=True)
        self.pool, how = routed_pool(str(self.dir), self.dir)
        log.info("%s", how)
        while not self.stopping.is_set():
            try:
                self.nodes.register()
                break
            except ApiError as exc:
                log.warning("registering nodes failed (%s); retrying", exc)
                self.stopping.wait(1.0)
        self.nodes.start()
        watchers = [threading.Thread(target=self._watch, args=(n,), name=f"watch-{n}", daemon=True)
                    for n in self.node_names]
        for thread in watchers:
            thread.start()
        log.info("agent ready: nodes %s", ", ".join(self.node_names))
        self.stopping.wait()
        self._shutdown()

    def stop(self) -> None:
        self.stopping.set()

    def _shutdown(self) -> None:
        self.nodes.stopped.set()
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.stop(SHUTDOWN_GRACE, delete=False)
        deadline = time.monotonic() + SHUTDOWN_GRACE + 2
        for worker in workers:
            worker.thread.join(max(0.1, deadline - time.monotonic()))
        sweep(self.dir, grace=0.5)
        remove_route(self.dir)

    def _watch(self, node: str) -> None:
        path = f"/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"
        while not self.stopping.is_set():
            try:
                listing = self.kube.call("GET", path)
                seen = set()
                for pod in listing.get("items", []):
                    seen.add(pod["metadata"]["uid"])
                    self._observe(pod)
                with self.lock:
                    lost = [w for w in self.workers.values()
                            if w.pod.get("spec", {}).get("nodeName") == node and w.uid not in seen]
                for worker in lost:
                    worker.stop(0, delete=False, gone=True)
                version = listing["metadata"]["resourceVersion"]
                for event in self.kube.watch(path, version):
                    if self.stopping.is_set():
                        return
                    kind, obj = event.get("type"), event.get("object", {})
                    if kind == "ERROR":
                        break
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if kind in ("ADDED", "MODIFIED"):
                        self._observe(obj)
                    elif kind == "DELETED":
                        self._forget(obj)
            except ApiError as exc:
                if not self.stopping.is_set():
                    log.warning("watching pods on %s: %s; relisting", node, exc)
                    self.stopping.wait(1.0)
            except Exception:
                log.exception("watching pods on %s failed; relisting", node)
                self.stopping.wait(1.0)

    def _observe(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        with self.lock:
            worker = self.workers.get(meta["uid"])
            if worker is not None:
                worker.update(pod)
                return
            if self.stopping.is_set():
                return
            phase = pod.get("status", {}).get("phase")
            if meta.get("deletionTimestamp") or phase in ("Succeeded", "Failed"):
                if meta.get("deletionTimestamp"):
                    self._delete_now(pod)  # never started here (or finished before this agent ran)
                return
            node = pod.get("spec", {}).get("nodeName")
            rejected = admit(pod, [w.pod for w in self.workers.values() if w.pod.get("spec", {}).get("nodeName") == node
                                   and not w.finished], CAPACITY)
            if rejected is not None:
                self._reject(pod, *rejected)
                return
            assert self.pool is not None, "run() sets the pool before any pod"
            address = self.pool.allocate()
            worker = PodWorker(kube=self.kube, pod=pod, pod_ip=address, pod_dir=self.pods_dir / meta["uid"],
                               agent_dir=self.dir, backoff=self.backoff, api_address=(self.kube.host, self.kube.port),
                               on_exit=self._worker_exited)
            self.workers[meta["uid"]] = worker
        log.info("pod %s/%s: starting at %s", meta["namespace"], meta["name"], address)
        worker.start()

    def _forget(self, pod: dict[str, Any]) -> None:
        with self.lock:
            worker = self.workers.get(pod["metadata"]["uid"])
        if worker is not None:
            worker.stop(0, delete=False, gone=True)

    def _worker_exited(self, worker: PodWorker) -> None:
        with self.lock:
            self.workers.pop(worker.uid, None)
        if self.pool is not None:
            self.pool.release(worker.pod_ip)
        worker.cleanup()
        log.info("pod %s: stopped and cleaned up", worker.key)

    def _reject(self, pod: dict[str, Any], reason: str, message: str) -> None:
        """Like a kubelet's admission failure: the pod ends Failed before anything runs."""
        meta = pod["metadata"]
        log.info("pod %s/%s: rejected: %s", meta["namespace"], meta["name"], message)
        try:
            self.kube.call("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                           {"status": {"phase": "Failed", "reason": reason, "message": message}},
                           content_type="application/merge-patch+json")
        except ApiError as exc:
            log.warning("pod %s/%s: rejecting failed: %s", meta["namespace"], meta["name"], exc)

    def _delete_now(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            self.kube.call("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                           {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}})
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("pod %s/%s: delete failed: %s", meta["namespace"], meta["name"], exc)
