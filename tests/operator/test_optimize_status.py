"""Status while a rollout waits for its optimize Job or is refused, and the status patch."""

from __future__ import annotations

from modelship.api.v1alpha1 import ModelService
from modelship.status import conditions as c
from modelship.status.compute import Observed, compute_status, status_changed, status_patch
from modelship.status.diagnosis import diagnose
from modelship.status.optimization import Wait
from msvc_samples import body
from pods import deployment, pod, terminated, waiting

T0 = "2026-11-23T10:00:00Z"


def _conds(status: dict) -> dict[str, tuple[str, str]]:
    return {x["type"]: (x["status"], x["reason"]) for x in status["conditions"]}


def test_while_the_job_runs_the_previous_deployment_serves_and_ready_says_why() -> None:
    msvc = ModelService.from_body(body(generation=3, spec={"model": {"uri": "https://h/m.onnx", "sha256": "a" * 64},
                                                           "replicas": 2}))
    status, _ = compute_status(
        msvc, observed=Observed(deployment(replicas=2, updated=2, ready=2, available=2, desired_hash="old"), []),
        previous=None, now=T0, desired_hash="new", variant="ort-all",
        wait=Wait("Optimizing", "generation 3 rolls out once optimize Job j has finished (running)"),
    )
    assert _conds(status) == {"Ready": ("False", "Optimizing"), "Progressing": ("True", "Optimizing"),
                              "Degraded": ("False", "AsExpected"), "Stalled": ("False", "AsExpected"),
                              "Reconciling": ("True", "Optimizing")}
    assert c.find(status["conditions"], "Ready")["message"].endswith("; 2 replicas of the previous spec still serve")
    assert status["variant"] == "ort-all"


def test_a_refused_rollout_is_not_ready_not_progressing_and_degraded() -> None:
    msvc = ModelService.from_body(body())
    status, transitions = compute_status(
        msvc, observed=Observed(None, []), previous=None, now=T0, variant=None,
        wait=Wait("OptimizationFailed", "optimize Job j failed: error: x; nothing rolls out", blocked=True),
    )
    assert _conds(status) == {"Ready": ("False", "OptimizationFailed"), "Progressing": ("False", "OptimizationFailed"),
                              "Degraded": ("True", "OptimizationFailed"), "Stalled": ("True", "OptimizationFailed"),
                              "Reconciling": ("False", "OptimizationFailed")}
    assert status["variant"] is None
    assert any(t.warning for t in transitions if t.type == "Ready")


def test_the_status_patch_removes_what_an_object_no_longer_has_and_leaves_other_writers_alone() -> None:
    previous = {"optimization": {"job": "old", "outcome": "optimized", "capacity": {"requestsPerSecond": 1.0}},
                "autoscaling": {"desiredReplicas": 3}, "variant": "ort-all"}
    new = {"optimization": {"job": "new"}, "variant": None}
    assert status_changed(previous, new)
    assert status_patch(previous, new) == {"optimization": {"job": "new", "outcome": None, "capacity": None},
                                           "variant": None}
    settled = {"optimization": {"job": "new"}}
    assert not status_changed(settled, {"optimization": {"job": "new"}, "variant": None})


def test_a_variant_that_cannot_be_rebuilt_is_named() -> None:
    line = "error: rebuilding variant ort-all gave sha256 00.., but the optimize Job measured 11.."
    problem = diagnose([pod(init=[terminated("fetch-model", 0), terminated("apply-variant", 3, line)])])
    assert problem is not None and problem.reason == "VariantRebuildFailed"
    assert "exit code 3" in problem.message and line in problem.message
    looping = diagnose([pod(init=[terminated("fetch-model", 0),
                                  waiting("apply-variant", "CrashLoopBackOff", last={"exitCode": 3, "message": line})])])
    assert looping is not None and looping.reason == "VariantRebuildFailed"
