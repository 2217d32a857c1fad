"""kopf handlers, kept thin: every watch event updates the cache and queues the ModelService
it concerns. No handler writes anything; the reconciler decides what to do.

Only `on.event` handlers are used, on purpose: they need no finalizers and no kopf state
annotations, so the operator never writes to a user's ModelService except its status, a
ModelService can be deleted while the operator is down, and GitOps tools see no drift.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import kopf

from modelship import api
from modelship.controller.queue import WorkQueue
from modelship.kube.cache import Store
from modelship.render.names import MANAGED_BY

# (group, version, plural, kind) of every watched kind besides ModelService.
WATCHED: tuple[tuple[str, str, str, str], ...] = (
    ("", "v1", "pods", "Pod"),
    ("apps", "v1", "deployments", "Deployment"),
    ("batch", "v1", "jobs", "Job"),  # optimize Jobs
    ("", "v1", "configmaps", "ConfigMap"),
    ("", "v1", "services", "Service"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
)


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf builds a deep-copied "essence" of every object on every event to detect changes
    for change handlers (on.create/update). This operator has none, so the copy is pure cost:
    about half of the operator's CPU at 500 ModelServices. Nothing is stored, nothing is read."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:  # noqa: ARG002 - kopf's signature
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:  # noqa: ARG002
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:  # noqa: ARG002
        return None


def register(registry: kopf.OperatorRegistry, *, store: Store, queue: WorkQueue,
             on_relist: Callable[[], None] | None = None) -> None:
    """Declare the watches on `registry`; `store` and `queue` are where events go.
    `on_relist`: called when kopf lists ModelServices (event type None: at start, and after a
    watch gap), whose listing says nothing about objects deleted meanwhile (kube/relist.py)."""

    def on_event(kind: str) -> Callable[..., Awaitable[None]]:  # a kopf handler
        # async: kopf runs sync handlers in a thread pool, a hop this dict update does not need
        async def handler(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
            if event.get("type") is None and kind == api.KIND and on_relist is not None:
                on_relist()
            if event.get("type") == "DELETED":
                key = store.remove(kind, body)
                if kind == api.KIND and key is not None:
                    store.forget(key)
                    return
            else:
                key = store.upsert(kind, body)
            if key is not None:
                queue.add(key)

        return handler

    kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, id="modelservices", registry=registry)(on_event(api.KIND))
    for group, version, plural, kind in WATCHED:
        kopf.on.event(
            group, version, plural, id=plural, labels=dict(MANAGED_BY), registry=registry,
        )(on_event(kind))
