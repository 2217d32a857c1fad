"""Pure helpers on Kubernetes object bodies that more than one layer needs: who controls an
object, the controller reference a ModelService's children carry, and the Event body about a
ModelService. Written once so the reconciler and the autoscaler agree on them."""

from __future__ import annotations

from typing import Any, Mapping

from modelship import contracts


def controlled_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """True when `obj` has a controller ownerReference to the object with `uid`."""
    return any(ref.get("controller") and ref.get("uid") == uid
               for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def owner_reference(name: str, uid: str | None) -> dict[str, Any]:
    """The controller reference to the ModelService `name`: the garbage collector deletes the
    child with it, and a re-run adopts the child instead of creating a second one."""
    return {
        "apiVersion": contracts.API_VERSION,
        "kind": contracts.KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def event(msvc: Mapping[str, Any], *, reason: str, message: str, now: str, component: str,
          reporting_component: str, reporting_instance: str, warning: bool = False) -> dict[str, Any]:
    """A core/v1 Event about the ModelService body `msvc` (`kubectl describe msvc` shows it);
    `now` is an RFC 3339 time, the message is cut to the API's 1024 characters."""
    meta = msvc.get("metadata") or {}
    involved = {"apiVersion": contracts.API_VERSION, "kind": contracts.KIND, "name": meta.get("name"),
                "namespace": meta.get("namespace"), "uid": meta.get("uid")}
    if meta.get("resourceVersion"):
        involved["resourceVersion"] = meta["resourceVersion"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
        "involvedObject": involved,
        "type": "Warning" if warning else "Normal",
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "reportingComponent": reporting_component,
        "reportingInstance": reporting_instance[:128],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
