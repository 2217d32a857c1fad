"""The operator's cache of what exists: ModelServices, their children and their pods.

Fed by kopf's watch events (and primed by one LIST per kind at startup), read by the
reconciler, so deciding "is anything to do?" costs no API call. Children and pods are
indexed by the ModelService named in their `modelship.dev/modelservice` label; optimize Jobs
and their pods by the one in `modelship.dev/optimize-for`, and those pods are kept apart
from the serving pods (they never count as serving). Only objects labelled as managed by
modelship are watched, so the cache holds the operator's own Jobs, not every Job.

Our own writes go in only when they create an object the cache does not know yet. An
update's response may reach us after the watch already delivered a newer state of the same
object (a Deployment's status moves while our apply's response travels); storing it would
move the cache back in time with no later event to fix it. The watch always delivers our own
write too, so the cache catches up by itself; until then the reconciler at worst repeats an
apply that changes nothing.

For objects with a `metadata.generation` (which only grows), an event of an older generation
than the cached one is ignored, so a lagging watch never makes the reconciler re-apply an old
spec.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from modelship.contracts import OPTIMIZE_LABEL, SERVICE_LABEL

Key = tuple[str, str]  # (namespace, ModelService name)


class Store:
    def __init__(self) -> None:
        self._msvcs: dict[Key, dict[str, Any]] = {}
        self._children: dict[Key, dict[tuple[str, str], dict[str, Any]]] = {}  # (kind, name) -> body
        self._pods: dict[Key, dict[str, dict[str, Any]]] = {}
        self._job_pods: dict[Key, dict[str, dict[str, Any]]] = {}

    # --- writes from watch events and from our own API responses ------------------------

    def upsert(self, kind: str, body: Mapping[str, Any], *, own_write: bool = False) -> Key | None:
        """Record `body`; return the ModelService key it belongs to (None if none).

        `own_write`: `body` is the response to our own write; kept only if the object is new
        to the cache (see the module docstring)."""
        key = self._key(kind, body)
        if key is None:
            return None
        name = (body.get("metadata") or {}).get("name", "")
        if kind == "ModelService":
            bucket: dict[Any, dict[str, Any]] = self._msvcs
            slot: Any = key
        elif kind == "Pod":
            bucket, slot = self._pod_bucket(body).setdefault(key, {}), name
        else:
            bucket, slot = self._children.setdefault(key, {}), (kind, name)
        cached = bucket.get(slot)
        if own_write and cached is not None and _uid(cached) == _uid(body):
            return key
        if _older(body, cached):
            return key
        bucket[slot] = dict(body)
        return key
    def remove(self, kind: str, body: Mapping[str, Any]) -> Key | None:
        name = (body.get("metadata") or {}).get("name", "")
        key = self._key(kind, body)
        if key is None:
            return None
        if kind == "ModelService":
            self._msvcs.pop(key, None)
        elif kind == "Pod":
            self._pod_bucket(body).get(key, {}).pop(name, None)
        else:
            self._children.get(key, {}).pop((kind, name), None)
        return key

    def forget(self, key: Key) -> None:
        """Drop everything about a deleted ModelService (its children go with it by GC)."""
        self._msvcs.pop(key, None)
        self._children.pop(key, None)
        self._pods.pop(key, None)
        self._job_pods.pop(key, None)

    # --- reads ------------------------------------------------------------------------

    def msvc(self, key: Key) -> dict[str, Any] | None:
        return self._msvcs.get(key)

    def child(self, key: Key, kind: str, name: str) -> dict[str, Any] | None:
        return self._children.get(key, {}).get((kind, name))

    def pods(self, key: Key) -> list[dict[str, Any]]:
        return list(self._pods.get(key, {}).values())

    def children_of_kind(self, key: Key, kind: str) -> list[dict[str, Any]]:
        return [body for (k, _), body in self._children.get(key, {}).items() if k == kind]

    def job_pods(self, key: Key) -> list[dict[str, Any]]:
        """Pods of this ModelService's optimize Jobs."""
        return list(self._job_pods.get(key, {}).values())

    def keys(self) -> Iterator[Key]:
        return iter(list(self._msvcs))

    @staticmethod
    def _key(kind: str, body: Mapping[str, Any]) -> Key | None:
        meta = body.get("metadata") or {}
        namespace = meta.get("namespace", "")
        if kind == "ModelService":
            return (namespace, meta.get("name", ""))
        labels = meta.get("labels") or {}
        owner = labels.get(SERVICE_LABEL) or labels.get(OPTIMIZE_LABEL)
        return (namespace, owner) if owner else None

    def _pod_bucket(self, body: Mapping[str, Any]) -> dict[Key, dict[str, dict[str, Any]]]:
        labels = (body.get("metadata") or {}).get("labels") or {}
        return self._pods if SERVICE_LABEL in labels else self._job_pods


def _older(new: Mapping[str, Any], cached: Mapping[str, Any] | None) -> bool:
    """True when `new` is from an older generation than the cached body of the same object."""
    if cached is None:
        return False
    new_meta, old_meta = new.get("metadata") or {}, cached.get("metadata") or {}
    if new_meta.get("uid") != old_meta.get("uid"):
        return False  # deleted and re-created: a different object
    new_gen, old_gen = new_meta.get("generation"), old_meta.get("generation")
    return isinstance(new_gen, int) and isinstance(old_gen, int) and new_gen < old_gen


def _uid(body: Mapping[str, Any]) -> str | None:
    return (body.get("metadata") or {}).get("uid")
