"""status.batching: why a ModelService serves without batching, when the model is why.

The operator renders config.pbtxt without opening the model; the serving pod's `fit-config`
init step opens the file actually served (the chosen variant included) and turns batching off
for a model that cannot batch (a state with the batch on axis 1, a scalar input, a batch fixed
at 1), writing `ModelNotBatchable: <which tensor, its dims>` as its termination message. That
line is the one source of the field, whether or not an optimize Job ran: the Job's capacity
says what batching is worth, the pod says what the model allows. A refusal (spec.batching set
against the model) is not here but in Ready, as a problem (diagnosis.BATCHING_NOT_SUPPORTED).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from modelship.status.diagnosis import FIT_CONFIG_CONTAINER

MODEL_NOT_BATCHABLE = "ModelNotBatchable"


def fit_outcome(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """The fit-config line of the newest live pod whose step completed, or None when no pod
    has one yet (then the status keeps what it said before)."""
    done: list[tuple[str, str, str]] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        for container in (pod.get("status") or {}).get("initContainerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if container.get("name") == FIT_CONFIG_CONTAINER and terminated.get("exitCode") == 0:
                line = " ".join((terminated.get("message") or "").split())
                done.append((meta.get("creationTimestamp") or "", meta.get("name") or "", line))
    return max(done)[2] if done else None


def batching_status(line: str) -> dict[str, Any] | None:
    """status.batching for one fit-config line: set only when the model turned batching off."""
    reason, _, message = line.partition(": ")
    if reason != MODEL_NOT_BATCHABLE:
        return None
    return {"maxBatchSize": 0, "reason": reason, "message": message}


def compute(pods: Iterable[Mapping[str, Any]], previous: Mapping[str, Any] | None, *,
            batching_enabled: bool) -> dict[str, Any] | None:
    """The field to write: None when the spec turns batching off itself (the spec says why),
    the newest pod's word when one has it, else the previous value (no pod yet, or scaled to
    zero: nothing new was learned, and steady state writes nothing)."""
    if not batching_enabled:
        return None
    line = fit_outcome(pods)
    if line is None:
        return dict(previous) if previous else None
    return batching_status(line)
