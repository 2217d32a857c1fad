"""A pod's status from its containers' states: phase, conditions and container statuses.

Pure, so every rule a kubelet follows here (when a pod is Pending, Running, Succeeded or
Failed; when it is Ready; which reason a condition carries) is tested without processes.
lastTransitionTime moves only when a condition's status moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


@dataclass
class ContainerView:
    """What the agent knows about one container, in the API's shape."""

    name: str
    image: str
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    container_id: str = ""
    image_id: str = ""

    @property
    def terminated(self) -> dict[str, Any] | None:
        return self.state.get("terminated")

    @property
    def succeeded(self) -> bool:
        terminated = self.terminated
        return terminated is not None and terminated.get("exitCode") == 0

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "image": self.image, "imageID": self.image_id,
            "state": self.state, "lastState": self.last_state,
            "ready": self.ready, "restartCount": self.restart_count,
            "started": self.started,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def phase(restart_policy: str, init: Sequence[ContainerView], containers: Sequence[ContainerView]) -> str:
    """The kubelet's getPhase, for the states this agent produces."""
    for view in init:
        if view.succeeded:
            continue
        if view.terminated and restart_policy == "Never":
            return "Failed"
        return "Pending"
    running = stopped = failed = waiting_first = 0
    for view in containers:
        if "running" in view.state:
            running += 1
        elif view.terminated:
            stopped += 1
            failed += view.terminated.get("exitCode") != 0
        elif view.last_state.get("terminated"):
            stopped += 1  # waiting to restart (CrashLoopBackOff): it has run
            failed += view.last_state["terminated"].get("exitCode") != 0
        else:
            waiting_first += 1
    if waiting_first:
        return "Pending"
    if running:
        return "Running"
    if restart_policy == "Always":
        return "Running"
    if any("waiting" in v.state for v in containers):
        return "Running"  # a failed container waiting to restart (OnFailure)
    if restart_policy == "Never" and failed:
        return "Failed"
    return "Succeeded" if not failed else "Running"


def conditions(pod_phase: str, *, sandbox_ready: bool, init: Sequence[ContainerView],
               containers: Sequence[ContainerView], previous: Sequence[Mapping[str, Any]], now: str,
               ) -> list[dict[str, Any]]:
    """PodScheduled, PodReadyToStartContainers, Initialized, ContainersReady, Ready."""
    def condition(kind: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {"type": kind, "status": "True" if ok else "False"}
        if not ok and reason:
            out["reason"] = reason
        if not ok and message:
            out["message"] = message
        return out

    pending_init = [v.name for v in init if not v.succeeded]
    initialized = not pending_init or pod_phase == "Succeeded"
    unready = [v.name for v in containers if not v.ready]
    terminal = pod_phase in ("Succeeded", "Failed")
    if terminal:
        containers_ready = condition("ContainersReady", False, "PodCompleted")
        ready = condition("Ready", False, "PodCompleted")
    elif not initialized:
        message = f"containers with incomplete status: [{' '.join(pending_init)}]"
        containers_ready = condition("ContainersReady", False, "ContainersNotInitialized", message)
        ready = condition("Ready", False, "ContainersNotInitialized", message)
    elif unready:
        message = f"containers with unready status: [{' '.join(unready)}]"
        containers_ready = condition("ContainersReady", False, "ContainersNotReady", message)
        ready = condition("Ready", False, "ContainersNotReady", message)
    else:
        containers_ready = condition("ContainersReady", True)
        ready = condition("Ready", True)
    fresh = [
        condition("PodReadyToStartContainers", sandbox_ready),
        condition("Initialized", initialized, "ContainersNotInitialized",
                  f"containers with incomplete status: [{' '.join(pending_init)}]" if pending_init else ""),
        ready, containers_ready,
        condition("PodScheduled", True),
    ]
    before = {c.get("type"): c for c in previous}
    for item in fresh:
        old = before.get(item["type"])
        item["lastTransitionTime"] = (old.get("lastTransitionTime") if old and old.get("status") == item["status"]
                                      and old.get("lastTransitionTime") else now)
        item["lastProbeTime"] = None
    return fresh


def pod_status(pod: Mapping[str, Any], *, init: Sequence[ContainerView], containers: Sequence[ContainerView],
               sandbox_ready: bool, pod_ip: str, host_ip: str, start_time: str, now: str) -> dict[str, Any]:
    """The whole status the agent writes through pods/status."""
    restart_policy = pod.get("spec", {}).get("restartPolicy", "Always")
    current = phase(restart_policy, init, containers)
    status: dict[str, Any] = {
        "phase": current,
        "conditions": conditions(current, sandbox_ready=sandbox_ready, init=init, containers=containers,
                                 previous=pod.get("status", {}).get("conditions", []), now=now),
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start_time,
        "containerStatuses": [v.wire() for v in containers],
        "qosClass": pod.get("status", {}).get("qosClass", "BestEffort"),
    }
    if init:
        status["initContainerStatuses"] = [v.wire() for v in init]
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return status


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"reason": reason}
    if message:
        body["message"] = message
    return {"waiting": body}


def terminated(exit_code: int, *, started_at: str, finished_at: str, message: str = "",
               container_id: str = "", reason: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": started_at, "finishedAt": finished_at,
    }
    if exit_code < 0:
        body["signal"] = -exit_code
        body["exitCode"] = 128 - exit_code
    if message:
        body["message"] = message
    if container_id:
        body["containerID"] = container_id
    return {"terminated": body}
