"""The agent's Node objects and their heartbeats, like a kubelet: a Lease in kube-node-lease
renewed every few seconds, and the Ready condition's heartbeat in the node's status.

The nodes carry the label `node.modelship.dev/agent: local` (what a ModelService selects to
run for real) and a NoSchedule taint with the same key and value, which such a pod tolerates
(`AGENT_TOLERATION`). The taint is hard on purpose: a pod that did not ask for these nodes
must never land here when kwok's nodes are full, because here it would really run (and, with
a made-up model URI, never become Ready), where on kwok it would simply wait.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from modelship.devcluster.agent.kube import ApiError, Kube

log = logging.getLogger("modelship.agent")

AGENT_LABEL = "node.modelship.dev/agent"
AGENT_LABEL_VALUE = "local"
AGENT_TAINT = {"key": AGENT_LABEL, "value": AGENT_LABEL_VALUE, "effect": "NoSchedule"}
AGENT_TOLERATION = {"key": AGENT_LABEL, "operator": "Equal", "value": AGENT_LABEL_VALUE, "effect": "NoSchedule"}
DEFAULT_NODE_NAMES = ("local-0", "local-1")
CAPACITY = {"cpu": "4", "memory": "8Gi", "pods": "16", "ephemeral-storage": "20Gi"}
LEASE_SECONDS = 40
RENEW_EVERY = 10.0
STATUS_EVERY = 60.0


def _now(micro: bool = False) -> str:
    now = dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if micro else now.strftime("%Y-%m-%dT%H:%M:%SZ")


def node_status(now: str, since: str) -> dict[str, Any]:
    """The status the agent reports: fixed capacity, loopback address, healthy conditions."""
    def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {"type": kind, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": since}

    return {
        "capacity": dict(CAPACITY), "allocatable": dict(CAPACITY),
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": "localhost"}],
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "enough PIDs"),
            condition("Ready", "True", "KubeletReady", "the modelship local node agent is running"),
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "modelship-agent",
                     "kubeProxyVersion": "", "containerRuntimeVersion": "local-process://1",
                     "osImage": "", "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
    }


def node_manifest(name: str, now: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "cpu", AGENT_LABEL: AGENT_LABEL_VALUE, "type": "local",
        }},
        "spec": {"taints": [dict(AGENT_TAINT)]},
        "status": node_status(now, now),
    }


class NodeKeeper:
    """Registers the nodes and keeps them Ready until stopped."""

    def __init__(self, kube: Kube, names: tuple[str, ...]) -> None:
        self.kube = kube
        self.names = names
        self.since = _now()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="node-heartbeat", daemon=True)

    def register(self) -> None:
        for name in self.names:
            manifest = node_manifest(name, self.since)
            existing = self.kube.get(f"/api/v1/nodes/{name}")
            if existing is None:
                self.kube.call("POST", "/api/v1/nodes", manifest)
            else:
                self.kube.call("PATCH", f"/api/v1/nodes/{name}",
                               {"metadata": {"labels": manifest["metadata"]["labels"]}, "spec": manifest["spec"]},
                               content_type="application/merge-patch+json")
            self._report(name)
            self._renew(name)

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        last_status = 0.0
        elapsed = 0.0
        while not self.stopped.wait(RENEW_EVERY):
            elapsed += RENEW_EVERY
            for name in self.names:
                try:
                    self._renew(name)
                    if elapsed - last_status >= STATUS_EVERY:
                        self._report(name)
                except ApiError as exc:
                    log.warning("node %s: heartbeat failed: %s", name, exc)
            if elapsed - last_status >= STATUS_EVERY:
                last_status = elapsed

    def _report(self, name: str) -> None:
        self.kube.call("PATCH", f"/api/v1/nodes/{name}/status", {"status": node_status(_now(), self.since)},
                       content_type="application/merge-patch+json")

    def _renew(self, name: str) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": _now(micro=True)}
        if self.kube.get(path) is None:
            node = self.kube.get(f"/api/v1/nodes/{name}") or {}
            owner = [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}] if node else []
            self.kube.call("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease", "ownerReferences": owner}, "spec": spec})
        else:
            self.kube.call("PATCH", path, {"spec": spec}, content_type="application/merge-patch+json")
