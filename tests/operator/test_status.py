"""Status from observations: diagnosis reasons, conditions, and lastTransitionTime stability."""

from __future__ import annotations

from typing import Any

import pytest

from modelship.api.v1alpha1 import ModelService
from modelship.status import conditions as c
from modelship.status.compute import Observed, compute_status, status_changed
from modelship.status.diagnosis import diagnose
from msvc_samples import body
from pods import deployment, pod, terminated, unschedulable, waiting

SCHEDULER_GPU = ("0/3 nodes are available: 1 Insufficient nvidia.com/gpu, 2 node(s) didn't match Pod's node "
                 "affinity/selector. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.")


@pytest.mark.parametrize(
    ("the_pod", "reason", "in_message"),
    [
        (pod(init=[terminated("fetch-model", 10, "InvalidModelURI: spec.model.uri has no host")]),
         "InvalidModelURI", "has no host"),
        (pod(init=[waiting("fetch-model", "CrashLoopBackOff", last={
            "exitCode": 11, "message": "ModelUnreachable: https://h/m.onnx: [Errno -2] Name or service not known"})]),
         "ModelUnreachable", "Name or service not known"),
        (pod(init=[terminated("fetch-model", 12, "ModelChecksumMismatch: https://h/m: sha256 is ab, expected cd (3 bytes read)")]),
         "ModelChecksumMismatch", "sha256 is ab, expected cd"),
        (pod(init=[terminated("fetch-model", 13, "ModelAccessDenied: https://h/m: HTTP 403 Forbidden")]),
         "ModelAccessDenied", "HTTP 403"),
        (pod(init=[terminated("fetch-model", 14, "ModelNotFound: https://h/m: HTTP 404 Not Found")]),
         "ModelNotFound", "HTTP 404"),
        (pod(init=[terminated("fetch-model", 1, "Traceback ...")]), "ModelFetchFailed", "exit code 1"),
        (pod(init=[waiting("fetch-model", "ImagePullBackOff", 'Back-off pulling image "ghcr.io/x:1"', image="ghcr.io/x:1")]),
         "ImagePullFailed", "ghcr.io/x:1"),
        (pod(containers=[waiting("server", "ErrImagePull", "manifest unknown", image="nvcr.io/t:bad")]),
         "ImagePullFailed", "nvcr.io/t:bad"),
        (pod(containers=[waiting("server", "CrashLoopBackOff", "back-off 40s", restarts=4,
                                 last={"exitCode": 137, "reason": "OOMKilled"})]),
         "CrashLoop", "4 restarts); last exit code 137 (OOMKilled)"),
        (pod(containers=[waiting("server", "CreateContainerConfigError", 'secret "s3" not found')]),
         "ContainerConfigError", 'secret "s3" not found'),
        (pod(conditions=unschedulable(SCHEDULER_GPU), gpu=1), "InsufficientGPU", "no node has 1 nvidia.com/gpu free"),
        (pod(conditions=unschedulable("0/2 nodes are available: 2 Insufficient nvidia.com/mig-1g.10gb."), gpu=0),
         "InsufficientGPU", "nvidia.com/mig-1g.10gb"),
        (pod(conditions=unschedulable("0/2 nodes are available: 2 Insufficient cpu.")), "Unschedulable", "insufficient cpu"),
        (pod(conditions=unschedulable("0/5 nodes are available: 5 node(s) didn't match Pod's node affinity/selector."),
             gpu=1, product="NVIDIA-H100-80GB-HBM3"),
         "InsufficientGPU", "no node with nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3 has 1 nvidia.com/gpu free"),
        (pod(conditions=unschedulable("0/5 nodes are available: 5 node(s) didn't match Pod's node affinity/selector.")),
         "Unschedulable", "no node fits"),
        (pod(conditions=unschedulable('0/5 nodes are available: persistentvolumeclaim "model-store" not found.')),
         "ModelUnreachable", "PersistentVolumeClaim model-store of spec.model.uri does not exist"),
    ],
)
def test_diagnosis_names_the_problem(the_pod: dict[str, Any], reason: str, in_message: str) -> None:
    problem = diagnose([the_pod])
    assert problem is not None
    assert problem.reason == reason
    assert in_message in problem.message
    assert problem.message.startswith("pod svc-abc: ")


def test_healthy_pods_and_a_succeeded_fetch_are_no_problem() -> None:
    ok = pod(init=[terminated("fetch-model", 0, "Fetched: ...")],
             containers=[{"name": "server", "state": {"running": {}}, "ready": True}])
    assert diagnose([ok]) is None


def test_a_fetch_retry_in_progress_keeps_reporting_the_last_failure() -> None:
    retrying = pod(init=[{"name": "fetch-model", "state": {"running": {}},
                          "lastState": {"terminated": {"exitCode": 12, "message": "ModelChecksumMismatch: x"}}}])
    assert diagnose([retrying]).reason == "ModelChecksumMismatch"


def test_the_most_actionable_problem_wins_and_terminating_pods_are_ignored() -> None:
    pods = [
        pod("a", conditions=unschedulable(SCHEDULER_GPU), gpu=1),
        pod("b", init=[terminated("fetch-model", 12, "ModelChecksumMismatch: x")]),
        pod("c", containers=[waiting("server", "CrashLoopBackOff")], deleting=True),
    ]
    assert diagnose(pods).reason == "ModelChecksumMismatch"
    assert diagnose([pods[2]]) is None


def _msvc(generation: int = 1, **spec: Any) -> ModelService:
    b = body(generation=generation)
    b["spec"].update(spec)
    return ModelService.from_body(b)


def _conds(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {x["type"]: (x["status"], x["reason"]) for x in status["conditions"]}


T0, T1, T2 = "2024-05-01T10:00:00Z", "2024-05-01T10:01:00Z", "2024-05-01T10:02:00Z"


def test_a_complete_rollout_is_ready_with_endpoints_and_counts() -> None:
    status, transitions = compute_status(
        _msvc(replicas=2), observed=Observed(deployment(replicas=2, updated=2, ready=2, available=2), []),
        previous=None, now=T0, desired_hash="h1",
    )
    assert _conds(status) == {"Ready": ("True", "Available"), "Progressing": ("False", "RolloutComplete"),
                              "Degraded": ("False", "AsExpected"), "Stalled": ("False", "AsExpected"),
                              "Reconciling": ("False", "Available")}
    assert status["observedGeneration"] == 1 and status["replicaSummary"] == "2/2"
    assert status["endpoints"] == {"http": "http://svc.ns.svc:8000", "grpc": "svc.ns.svc:8001"}
    assert all(x["observedGeneration"] == 1 and x["lastTransitionTime"] == T0 for x in status["conditions"])
    assert {t.type for t in transitions} == {"Ready", "Progressing", "Degraded", "Stalled", "Reconciling"}


def test_a_rollout_in_progress_is_progressing_and_not_ready_and_says_the_old_version_serves() -> None:
    status, _ = compute_status(
        _msvc(generation=2, replicas=2),
        observed=Observed(deployment(replicas=2, updated=1, ready=1, available=3, total=3), []),
        previous=None, now=T0, desired_hash="h1",
    )
    assert _conds(status)["Ready"] == ("False", "RolloutInProgress")
    assert _conds(status)["Progressing"] == ("True", "RolloutInProgress")
    ready = c.find(status["conditions"], "Ready")
    assert ready["message"] == "1/2 replicas of generation 2 ready; 2 replicas of the previous spec still serve"


def test_a_deployment_with_an_older_template_is_not_yet_current() -> None:
    status, _ = compute_status(_msvc(), observed=Observed(deployment(desired_hash="old"), []),
                               previous=None, now=T0, desired_hash="new")
    assert _conds(status)["Ready"] == ("False", "RolloutInProgress")


def test_a_crash_loop_is_not_ready_even_when_the_deployment_counts_the_pod_available() -> None:
    crashing = pod(containers=[waiting("server", "CrashLoopBackOff", restarts=3, last={"exitCode": 1})])
    status, transitions = compute_status(_msvc(), observed=Observed(deployment(), [crashing]),
                                         previous=None, now=T0, desired_hash="h1")
    assert _conds(status)["Ready"] == ("False", "CrashLoop")
    assert _conds(status)["Degraded"] == ("True", "CrashLoop")
    assert any(t.type == "Ready" and t.warning for t in transitions)


def test_gpu_shortage_then_capacity_arrives() -> None:
    waiting_pod = pod(conditions=unschedulable(SCHEDULER_GPU), gpu=1)
    msvc = _msvc(resources={"gpu": {"count": 1}})
    s1, _ = compute_status(msvc, observed=Observed(deployment(updated=1, ready=0, available=0), [waiting_pod]),
                           previous=None, now=T0, desired_hash="h1")
    # not Stalled: the rollout still moves (capacity may arrive), so kstatus keeps waiting
    assert _conds(s1) == {"Ready": ("False", "InsufficientGPU"), "Progressing": ("True", "InsufficientGPU"),
                          "Degraded": ("True", "InsufficientGPU"), "Stalled": ("False", "AsExpected"),
                          "Reconciling": ("True", "InsufficientGPU")}
    assert "nvidia.com/gpu" in c.find(s1["conditions"], "Ready")["message"]
    s2, transitions = compute_status(msvc, observed=Observed(deployment(), [pod()]), previous=s1, now=T1, desired_hash="h1")
    assert _conds(s2)["Ready"] == ("True", "Available")
    assert c.find(s2["conditions"], "Ready")["lastTransitionTime"] == T1
    assert [(t.type, t.old_status, t.new_status) for t in transitions] == [
        ("Ready", "False", "True"), ("Progressing", "True", "False"), ("Degraded", "True", "False"),
        ("Reconciling", "True", "False")]


def test_progress_deadline_exceeded_stops_progressing() -> None:
    status, _ = compute_status(_msvc(), observed=Observed(deployment(updated=1, ready=0, available=0, deadline=True), []),
                               previous=None, now=T0, desired_hash="h1")
    assert _conds(status) == {"Ready": ("False", "ProgressDeadlineExceeded"),
                              "Progressing": ("False", "ProgressDeadlineExceeded"),
                              "Degraded": ("True", "ProgressDeadlineExceeded"),
                              "Stalled": ("True", "ProgressDeadlineExceeded"),
                              "Reconciling": ("False", "ProgressDeadlineExceeded")}


def test_steady_state_changes_nothing_and_transition_times_hold() -> None:
    observed = Observed(deployment(), [pod()])
    s1, _ = compute_status(_msvc(), observed=observed, previous=None, now=T0, desired_hash="h1")
    s2, transitions = compute_status(_msvc(), observed=observed, previous=s1, now=T2, desired_hash="h1")
    assert s2 == s1 and not transitions and not status_changed(s1, s2)


def test_transition_time_moves_only_when_status_moves() -> None:
    previous = [{"type": "Ready", "status": "False", "reason": "RolloutInProgress", "message": "0/1",
                 "lastTransitionTime": T0, "observedGeneration": 1}]
    merged, transitions = c.merge(previous, [c.ConditionSpec("Ready", "False", "CrashLoop", "boom")], generation=2, now=T1)
    assert merged[0]["lastTransitionTime"] == T0 and merged[0]["reason"] == "CrashLoop"
    assert merged[0]["observedGeneration"] == 2
    assert [(t.reason, t.old_status, t.new_status) for t in transitions] == [("CrashLoop", "False", "False")]
    merged, _ = c.merge(merged, [c.ConditionSpec("Ready", "True", "Available", "ok")], generation=2, now=T2)
    assert merged[0]["lastTransitionTime"] == T2


def test_conditions_owned_by_others_are_kept() -> None:
    previous = [{"type": "Optimized", "status": "True", "reason": "VariantChosen", "message": "fp16",
                 "lastTransitionTime": T0}]
    merged, _ = c.merge(previous, [c.ConditionSpec("Ready", "True", "Available", "ok")], generation=1, now=T1)
    assert [x["type"] for x in merged] == ["Ready", "Optimized"]


def test_apply_failure_is_reported() -> None:
    status, _ = compute_status(_msvc(), observed=Observed(None, []), previous=None, now=T0,
                               apply_error="forbidden: cannot create networkpolicies")
    assert _conds(status)["Degraded"] == ("True", "ApplyFailed")
    assert "cannot create networkpolicies" in c.find(status["conditions"], "Ready")["message"]


def test_autoscaler_owned_replicas_come_from_the_deployment() -> None:
    msvc = _msvc(autoscaling={"enabled": True, "engine": "hpa"})
    status, _ = compute_status(msvc, observed=Observed(deployment(replicas=3, updated=3, ready=3, available=3), []),
                               previous=None, now=T0, desired_hash="h1")
    assert status["replicaSummary"] == "3/3" and _conds(status)["Ready"] == ("True", "Available")
