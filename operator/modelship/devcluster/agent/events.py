"""Events about a pod, like the kubelet's (`kubectl describe pod` and `kubectl get events` show
them): a pull failure, a crash loop, a failed probe, a kill. Best effort: a failed write is logged,
never fatal."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any, Mapping

from modelship.devcluster.agent.kube import ApiError, Kube

log = logging.getLogger("modelship.agent")


def event_manifest(pod: Mapping[str, Any], *, reason: str, message: str, kind: str, container: str,
                   node: str, now: str) -> dict[str, Any]:
    meta = pod["metadata"]
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "namespace": meta["namespace"],
                           "uid": meta["uid"], "fieldPath": f"spec.containers{{{container}}}"},
        "reason": reason, "message": message[:1024], "type": kind,
        "source": {"component": "modelship-agent", "host": node},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "reportingComponent": "modelship-agent", "reportingInstance": node,
    }


def emit(kube: Kube, pod: Mapping[str, Any], *, reason: str, message: str, container: str,
         kind: str = "Warning") -> None:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = event_manifest(pod, reason=reason, message=message, kind=kind, container=container,
                          node=pod.get("spec", {}).get("nodeName", ""), now=now)
    try:
        kube.call("POST", f"/api/v1/namespaces/{body['metadata']['namespace']}/events", body)
    except ApiError as exc:
        log.warning("event %s for %s: %s", reason, pod["metadata"]["name"], exc)
