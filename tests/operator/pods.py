"""Pod and Deployment bodies as the kubelet, scheduler and deployment controller write them."""

from __future__ import annotations

from typing import Any


def pod(name: str = "svc-abc", *, init: list[dict[str, Any]] | None = None, containers: list[dict[str, Any]] | None = None,
        conditions: list[dict[str, Any]] | None = None, gpu: int = 0, deleting: bool = False,
        product: str | None = None) -> dict[str, Any]:
    limits = {"memory": "2Gi"}
    if gpu:
        limits["nvidia.com/gpu"] = str(gpu)
    meta: dict[str, Any] = {"name": name, "labels": {"modelship.dev/modelservice": "svc"}}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"containers": [{"name": "server", "resources": {"limits": limits}}],
                 **({"nodeSelector": {"nvidia.com/gpu.product": product}} if product else {})},
        "status": {
            "conditions": conditions or [],
            "initContainerStatuses": init or [],
            "containerStatuses": containers or [],
        },
    }


def waiting(name: str, reason: str, message: str = "", *, image: str = "img:1", last: dict[str, Any] | None = None,
            restarts: int = 0) -> dict[str, Any]:
    status: dict[str, Any] = {"name": name, "image": image, "restartCount": restarts,
                              "state": {"waiting": {"reason": reason, "message": message}}}
    if last:
        status["lastState"] = {"terminated": last}
    return status


def terminated(name: str, code: int, message: str = "") -> dict[str, Any]:
    return {"name": name, "image": "img:1", "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": "Error" if code else "Completed", "message": message}}}


def unschedulable(message: str) -> list[dict[str, Any]]:
    return [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]


def deployment(*, replicas: int = 1, updated: int = 1, ready: int = 1, available: int = 1, total: int | None = None,
               generation: int = 1, observed: int = 1, desired_hash: str = "h1", deadline: bool = False) -> dict[str, Any]:
    conditions = []
    if deadline:
        conditions.append({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                           "message": 'ReplicaSet "svc-1" has timed out progressing.'})
    return {
        "metadata": {"name": "svc", "generation": generation,
                     "annotations": {"modelship.dev/desired-hash": desired_hash}},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": observed, "replicas": updated if total is None else total,
                   "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": available,
                   "conditions": conditions},
    }
