"""Conditions per the Kubernetes API conventions, and their transitions.

lastTransitionTime changes only when a condition's status changes; a new reason or message
with the same status keeps it. A change of status or reason is a transition worth an Event.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
OPTIMIZED = "Optimized"  # set by the optimize issue; kept by merge when given
STALLED = "Stalled"  # kstatus (Flux, kpt, cli-utils): True = stuck until the spec or the cluster changes
RECONCILING = "Reconciling"  # kstatus: True = not yet Ready, still working on it

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"


@dataclasses.dataclass(frozen=True)
class ConditionSpec:
    """A condition as computed, before its lastTransitionTime is known."""

    type: str
    status: str
    reason: str
    message: str
    # Warning Events for conditions that are bad when True (Degraded) or False (Ready).
    warning: bool = False


@dataclasses.dataclass(frozen=True)
class Transition:
    type: str
    old_status: str | None
    new_status: str
    reason: str
    message: str
    warning: bool


def merge(
    previous: Iterable[Mapping[str, Any]] | None,
    computed: Iterable[ConditionSpec],
    *,
    generation: int | None,
    now: str,
) -> tuple[list[dict[str, Any]], list[Transition]]:
    """New conditions list (computed types first, then previous types not computed, which
    keeps conditions other components own) and the transitions between old and new."""
    old = {c["type"]: c for c in previous or [] if "type" in c}
    out: list[dict[str, Any]] = []
    transitions: list[Transition] = []
    seen: set[str] = set()
    for spec in computed:
        seen.add(spec.type)
        before = old.get(spec.type)
        unchanged_status = before is not None and before.get("status") == spec.status
        condition = {
            "type": spec.type,
            "status": spec.status,
            "reason": spec.reason,
            "message": spec.message,
            "lastTransitionTime": before.get("lastTransitionTime", now) if unchanged_status and before else now,
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        out.append(condition)
        if before is None or before.get("status") != spec.status or before.get("reason") != spec.reason:
            transitions.append(
                Transition(
                    type=spec.type,
                    old_status=before.get("status") if before else None,
                    new_status=spec.status,
                    reason=spec.reason,
                    message=spec.message,
                    warning=spec.warning,
                )
            )
    out.extend(dict(c) for t, c in old.items() if t not in seen)
    return out, transitions


def with_kstatus(computed: Iterable[ConditionSpec]) -> list[ConditionSpec]:
    """Add kstatus's `Reconciling` and `Stalled` conditions, derived from Ready, Progressing and Degraded.

    kstatus (sigs.k8s.io/cli-utils, what Flux waits on) calls a custom resource whose
    observedGeneration is current InProgress only while `Reconciling` is True, Failed while
    `Stalled` is True, and Current otherwise: it does not read Ready. Without these two, a
    ModelService would be Current the moment the operator saw its spec, pods or not. So:
    Stalled is True when something needs attention (Degraded) and nothing moves towards a fix
    (not Progressing), with Degraded's reason; Reconciling is True whenever Ready is not True
    and it is not stalled. Current therefore means Ready. Both restate other conditions, so
    they have no Events of their own (controller/reconcile.py).
    """
    out = list(computed)
    by_type = {s.type: s for s in out}
    ready, degraded, progressing = by_type.get(READY), by_type.get(DEGRADED), by_type.get(PROGRESSING)
    if ready is None or RECONCILING in by_type or STALLED in by_type:
        return out
    stalled = degraded is not None and degraded.status == TRUE and (progressing is None or progressing.status != TRUE)
    if stalled and degraded is not None:
        out.append(ConditionSpec(RECONCILING, FALSE, degraded.reason, "stalled: " + degraded.message))
        out.append(ConditionSpec(STALLED, TRUE, degraded.reason, degraded.message))
        return out
    if ready.status == TRUE:
        out.append(ConditionSpec(RECONCILING, FALSE, ready.reason, "the current generation is served"))
    else:
        reason = progressing.reason if progressing is not None and progressing.status == TRUE else ready.reason
        out.append(ConditionSpec(RECONCILING, TRUE, reason, ready.message))
    out.append(ConditionSpec(STALLED, FALSE, "AsExpected", "not stalled"))
    return out


def find(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for condition in conditions or []:
        if condition.get("type") == type_:
            return condition
    return None
