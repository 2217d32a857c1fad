"""Compute a ModelService's status from its observed Deployment and pods.

Ready means "every replica the spec asks for runs the current spec and is ready", so Ready
is False while a rollout is under way (the previous version keeps serving; the message says
so) and False during a crash loop even when the Deployment still counts the pod as
available. Progressing is True while a rollout is under way; Degraded is True when a
problem needs attention. A problem found on the pods (diagnosis) names the reason of all
three.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from modelship.api.v1alpha1 import ModelService
from modelship.render import names
from modelship.status import batching
from modelship.status import conditions as c
from modelship.status.diagnosis import Problem, diagnose, replica_failure
from modelship.status.optimization import Wait

AVAILABLE = "Available"
ROLLOUT_IN_PROGRESS = "RolloutInProgress"
ROLLOUT_COMPLETE = "RolloutComplete"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
SCALED_TO_ZERO = "ScaledToZero"
APPLY_FAILED = "ApplyFailed"
AS_EXPECTED = "AsExpected"


@dataclasses.dataclass(frozen=True)
class Observed:
    """What the operator saw: its Deployment (None if absent) and that Deployment's pods."""

    deployment: Mapping[str, Any] | None
    pods: Sequence[Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Rollout:
    desired: int
    current: bool  # the Deployment holds this spec's template and its controller saw it
    updated: int
    ready: int  # ready replicas of the current template
    total: int
    available: int
    deadline_message: str | None

    @property
    def complete(self) -> bool:
        return (
            self.current
            and self.updated >= self.desired
            and self.total == self.updated
            and self.available >= self.desired
        )


def rollout_of(msvc: ModelService, deployment: Mapping[str, Any] | None, desired_hash: str | None) -> Rollout:
    spec = msvc.spec
    if deployment is None:
        return Rollout(spec.replicas if not spec.autoscaler_owns_replicas else 1, False, 0, 0, 0, 0, None)
    d_spec = deployment.get("spec") or {}
    d_status = deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    if spec.autoscaler_owns_replicas:
        desired = int(d_spec.get("replicas", 1))
    else:
        desired = spec.replicas
    annotations = meta.get("annotations") or {}
    current = (
        (desired_hash is None or annotations.get(names.DESIRED_HASH_ANNOTATION) == desired_hash)
        and int(d_status.get("observedGeneration", 0)) >= int(meta.get("generation", 1))
    )
    deadline = None
    for condition in d_status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == PROGRESS_DEADLINE_EXCEEDED:
            deadline = condition.get("message") or "the rollout made no progress within its deadline"
    updated = int(d_status.get("updatedReplicas", 0)) if current else 0
    return Rollout(
        desired=desired,
        current=current,
        updated=updated,
        ready=min(int(d_status.get("readyReplicas", 0)), updated),
        total=int(d_status.get("replicas", 0)),
        available=int(d_status.get("availableReplicas", 0)),
        deadline_message=deadline if current else None,
    )


def compute_conditions(
    msvc: ModelService, rollout: Rollout, problem: Problem | None, *, apply_error: str | None,
    wait: Wait | None = None,
) -> list[c.ConditionSpec]:
    generation = msvc.metadata.generation
    if apply_error is not None:
        message = f"cannot apply the children of generation {generation}: {apply_error}"
        return [
            c.ConditionSpec(c.READY, c.FALSE, APPLY_FAILED, message, warning=True),
            c.ConditionSpec(c.PROGRESSING, c.FALSE, APPLY_FAILED, message),
            c.ConditionSpec(c.DEGRADED, c.TRUE, APPLY_FAILED, message, warning=True),
        ]
    endpoint = names.endpoints(msvc.metadata.name, msvc.metadata.namespace)["http"]
    if rollout.desired == 0 and rollout.complete:
        return [
            # Ready, as Knative and KServe say of a service scaled to zero: it is as asked, and
            # kstatus (Flux) would otherwise wait on it forever.
            c.ConditionSpec(c.READY, c.TRUE, SCALED_TO_ZERO, "0 replicas requested: no pod serves"),
            c.ConditionSpec(c.PROGRESSING, c.FALSE, ROLLOUT_COMPLETE, "0 replicas requested"),
            c.ConditionSpec(c.DEGRADED, c.FALSE, AS_EXPECTED, "no problem found"),
        ]
    progress = f"{rollout.ready}/{rollout.desired} replicas of generation {generation} ready"
    old_serving = rollout.available - rollout.ready if rollout.total > rollout.updated else 0
    if old_serving > 0:
        progress += f"; {old_serving} replicas of the previous spec still serve"
    if wait is not None:
        return _waiting(wait, problem, old_serving)

    if problem is not None:
        ready = c.ConditionSpec(c.READY, c.FALSE, problem.reason, problem.message, warning=True)
        degraded = c.ConditionSpec(c.DEGRADED, c.TRUE, problem.reason, problem.message, warning=True)
    elif rollout.deadline_message is not None:
        message = f"{progress}: {rollout.deadline_message}"
        ready = c.ConditionSpec(c.READY, c.FALSE, PROGRESS_DEADLINE_EXCEEDED, message, warning=True)
        degraded = c.ConditionSpec(c.DEGRADED, c.TRUE, PROGRESS_DEADLINE_EXCEEDED, message, warning=True)
    elif rollout.complete:
        ready = c.ConditionSpec(c.READY, c.TRUE, AVAILABLE, f"{progress}; serving at {endpoint}")
        degraded = c.ConditionSpec(c.DEGRADED, c.FALSE, AS_EXPECTED, "no problem found")
    else:
        ready = c.ConditionSpec(c.READY, c.FALSE, ROLLOUT_IN_PROGRESS, progress)
        degraded = c.ConditionSpec(c.DEGRADED, c.FALSE, AS_EXPECTED, "no problem found")

    if rollout.complete:
        progressing = c.ConditionSpec(c.PROGRESSING, c.FALSE, ROLLOUT_COMPLETE, f"generation {generation} rolled out")
    elif rollout.deadline_message is not None:
        progressing = c.ConditionSpec(c.PROGRESSING, c.FALSE, PROGRESS_DEADLINE_EXCEEDED, rollout.deadline_message)
    else:
        reason = problem.reason if problem is not None else ROLLOUT_IN_PROGRESS
        progressing = c.ConditionSpec(c.PROGRESSING, c.TRUE, reason, progress)
    return [ready, progressing, degraded]


def _waiting(wait: Wait, problem: Problem | None, old_serving: int) -> list[c.ConditionSpec]:
    """This generation does not roll out yet (its optimize Job runs) or at all (it failed
    under FailClosed); the Deployment of the previous spec, if any, keeps serving."""
    message = wait.message
    if old_serving > 0:
        message += f"; {old_serving} replicas of the previous spec still serve"
    ready = c.ConditionSpec(c.READY, c.FALSE, wait.reason, message, warning=wait.blocked)
    if wait.blocked:
        return [ready, c.ConditionSpec(c.PROGRESSING, c.FALSE, wait.reason, message),
                c.ConditionSpec(c.DEGRADED, c.TRUE, wait.reason, message, warning=True)]
    if problem is not None:  # on the pods of the previous spec
        degraded = c.ConditionSpec(c.DEGRADED, c.TRUE, problem.reason, problem.message, warning=True)
    else:
        degraded = c.ConditionSpec(c.DEGRADED, c.FALSE, AS_EXPECTED, "no problem found")
    return [ready, c.ConditionSpec(c.PROGRESSING, c.TRUE, wait.reason, message), degraded]


def compute_status(
    msvc: ModelService,
    *,
    observed: Observed,
    previous: Mapping[str, Any] | None,
    now: str,
    variant: str | None = "original",
    desired_hash: str | None = None,
    apply_error: str | None = None,
    extra_conditions: Sequence[c.ConditionSpec] = (),
    wait: Wait | None = None,
    extra_fields: Mapping[str, Any] | None = None,
    overrides: Sequence[c.ConditionSpec] = (),
) -> tuple[dict[str, Any], list[c.Transition]]:
    """The status to write and the condition transitions since `previous`.

    `desired_hash` is the Deployment's rendered hash; a Deployment carrying another one
    does not yet hold this spec. `extra_conditions` and `extra_fields` are the seams for
    other components' conditions (Optimized, ScalingLimited) and fields (optimization,
    autoscaling); a field set to None is removed. `wait` holds Ready back while this spec's
    rollout waits (for its optimize Job) or is refused. `variant` None: nothing serves yet.
    `overrides` replace the computed conditions of their types (a canary's Progressing, say).
    """
    previous = previous or {}
    rollout = rollout_of(msvc, observed.deployment, desired_hash)
    problem = diagnose(observed.pods) or replica_failure(observed.deployment)
    replaced = {o.type: o for o in overrides}
    computed = c.with_kstatus([replaced.pop(cond.type, cond)
                               for cond in compute_conditions(msvc, rollout, problem, apply_error=apply_error, wait=wait)])
    computed += list(replaced.values()) + list(extra_conditions)
    merged, transitions = c.merge(
        previous.get("conditions"), computed, generation=msvc.metadata.generation, now=now
    )
    status: dict[str, Any] = {
        "observedGeneration": msvc.metadata.generation,
        "replicas": rollout.total,
        "readyReplicas": rollout.ready,
        "updatedReplicas": rollout.updated,
        "replicaSummary": f"{rollout.ready}/{rollout.desired}",
        "variant": variant,
        "endpoints": names.endpoints(msvc.metadata.name, msvc.metadata.namespace),
        "conditions": merged,
        # why batching is off when the model is why (the pods' fit-config step); None: absent
        "batching": batching.compute(observed.pods, previous.get("batching"),
                                     batching_enabled=msvc.spec.batching.enabled),
    }
    status.update(extra_fields or {})
    return status, transitions


def status_changed(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when writing `new` would change any field the operator owns (None: absent)."""
    previous = previous or {}
    return any(previous.get(key) != value for key, value in new.items())


def status_patch(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that turns `previous` into `new` for the keys of `new`: a merge patch
    merges nested objects, so keys an object no longer has are sent as null. Top-level keys
    not in `new` belong to other writers and are left alone."""
    previous = previous or {}
    return {key: _object_patch(previous.get(key), value) for key, value in new.items()}


def _object_patch(old: Any, new: Any) -> Any:
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    patch.update({key: _object_patch(old.get(key), value) for key, value in new.items()})
    return patch
