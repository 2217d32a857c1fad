"""Whose object is it: the guard before the operator applies a child. Pure.

Every child is applied with server-side apply and `force` (the operator owns what it renders),
so applying over an object of the same name that someone else made would take it over: a
user's Service or HTTPRoute rewritten, or ModelService `foo-canary` and `foo`'s canary
Deployment `foo-canary` rewriting each other on every reconcile. The reconciler reads the
live object first where its cache does not show it as ours, and applies only what `claim`
allows; the rest is reported (Degraded=True, reason ChildNameConflict, and an Event) while
every other child keeps reconciling.

Ours: no object yet, one whose controller ownerReference is this ModelService's uid, or an
orphan (no controller at all) that carries this ModelService's own labels (managed by
modelship, `modelship.dev/modelservice: <name>`), which it adopts, as a ReplicaSet adopts
the orphaned pods its selector matches (e.g. children left by `kubectl delete --cascade=orphan`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from modelship.render import names
from modelship.status import conditions as c

CHILD_NAME_CONFLICT = "ChildNameConflict"


@dataclasses.dataclass(frozen=True)
class Conflict:
    """A child's name taken by an object this ModelService does not own."""

    kind: str
    name: str
    owner: str  # who holds it, in words

    @property
    def message(self) -> str:
        return (f"{self.kind} {self.name} exists and is not owned by this ModelService ({self.owner}): it was "
                "left untouched and not applied; delete or rename it, or rename the ModelService")


def claim(live: Mapping[str, Any] | None, *, kind: str, name: str, uid: str | None, msvc_name: str) -> Conflict | None:
    """None when the operator may apply `kind`/`name` over `live` (the object as the API server
    holds it, None when there is none); else the Conflict naming who holds it."""
    if live is None:
        return None
    meta = live.get("metadata") or {}
    refs = meta.get("ownerReferences") or []
    controller = next((ref for ref in refs if ref.get("controller")), None)
    if controller is not None and uid is not None and controller.get("uid") == uid:
        return None
    if controller is None:
        labels = meta.get("labels") or {}
        ours = all(labels.get(k) == v for k, v in names.MANAGED_BY.items())
        if ours and msvc_name in (labels.get(names.SERVICE_LABEL), labels.get(names.OPTIMIZE_LABEL)):
            return None  # our orphan: adopted
        others = ", ".join(f"{ref.get('kind')} {ref.get('name')}" for ref in refs)
        return Conflict(kind, name, f"owned by {others}, not as controller" if others else
                        "it has no owner: made by someone else, not by modelship")
    owner = f"controlled by {controller.get('kind')} {controller.get('name')} (uid {controller.get('uid')})"
    if controller.get("kind") == "ModelService" and controller.get("name") == msvc_name:
        owner += ", an earlier ModelService of this name: the garbage collector removes it"
    return Conflict(kind, name, owner)


# etcd's first write is revision 2, so no object has version "1": an apply that must find it
# creates the object when there is none and is refused (409) when one has appeared since the read.
NONE_YET = "1"


def precondition(live: Mapping[str, Any] | None) -> str:
    """The resourceVersion an apply decided on `live` must find: the one read, or NONE_YET
    when there was no object. Between the read and the apply, someone else may create or
    replace the object; the API server then refuses the apply instead of letting it take over."""
    if live is None:
        return NONE_YET
    return str((live.get("metadata") or {}).get("resourceVersion") or NONE_YET)


def conditions_of(conflicts: Sequence[Conflict], *, msvc_name: str) -> list[c.ConditionSpec]:
    """Degraded=True/ChildNameConflict naming every conflict; Ready=False as well when the one
    that serves (the Deployment or the Service named after the ModelService) is not ours."""
    if not conflicts:
        return []
    message = "; ".join(conflict.message for conflict in sorted(conflicts, key=lambda x: (x.kind, x.name)))
    out = [c.ConditionSpec(c.DEGRADED, c.TRUE, CHILD_NAME_CONFLICT, message, warning=True)]
    if any(conflict.kind in ("Deployment", "Service") and conflict.name == msvc_name for conflict in conflicts):
        out.append(c.ConditionSpec(c.READY, c.FALSE, CHILD_NAME_CONFLICT, message, warning=True))
    return out
