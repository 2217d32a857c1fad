"""Batching that follows the model, on the operator's side (issue 12): which serving pods get
the fit-config step and in which mode, how its outcome and the server's load failures reach
the ModelService's status. The step itself runs on real models in tests/server/test_model_fit.py."""

from __future__ import annotations

from typing import Any

import pytest

from modelship.api.v1alpha1 import ModelService
from modelship.render import render_children
from modelship.render.artifact import MeasuredBatching, original, variant
from modelship.render.model_config import batching_mode
from modelship.status import batching
from modelship.status import conditions as c
from modelship.status.compute import Observed, compute_status
from modelship.status.diagnosis import diagnose
from msvc_samples import SHA, body
from pods import deployment, pod, terminated, waiting

T0 = "2026-01-01T00:00:00Z"
APPLY_ARGS = ["--apply-recipe", '{"name":"ort-all","kind":"ort_all"}', "--expect-sha256", "ab" * 32]
NOT_BATCHABLE = ("ModelNotBatchable: input 'state' has dims [2, -1, 128]: its first dimension is fixed at 2, not a "
                 "variable batch dimension; max_batch_size 8 -> 0, requests run one at a time")
REFUSED = ("BatchingNotSupported: spec.batching asks the server to batch up to 16 requests, but the model cannot "
           "batch: input 'state' has dims [2, -1, 128]: its first dimension is fixed at 2, not a variable batch "
           "dimension. Set spec.batching.enabled: false, or leave spec.batching's sizes unset so batching follows "
           "the model")


def _msvc(batching_spec: dict[str, Any] | None = None, **spec: Any) -> ModelService:
    full: dict[str, Any] = {"model": {"uri": "https://h.example/m.onnx", "sha256": SHA, "name": "vad"}, **spec}
    if batching_spec is not None:
        full["batching"] = batching_spec
    return ModelService.from_body(body(spec=full))


def _pod_spec(msvc: ModelService, artifact=None) -> dict[str, Any]:  # noqa: ANN001
    objs = {o["kind"]: o for o in render_children(msvc, artifact=artifact).objects}
    return objs["Deployment"]["spec"]["template"]["spec"]


@pytest.mark.parametrize(("batching_spec", "mode"), [
    (None, "auto"),
    ({"enabled": True}, "auto"),
    ({"maxBatchSize": 16}, "required"),
    ({"maxQueueDelayMicroseconds": 500}, "required"),
    ({"preferredBatchSizes": [4]}, "required"),
    ({"enabled": False}, None),
    ({"enabled": False, "maxBatchSize": 16}, None),
])
def test_batching_mode_follows_the_model_unless_the_user_set_a_size(batching_spec, mode) -> None:  # noqa: ANN001
    assert batching_mode(_msvc(batching_spec).spec) == mode


def test_serving_pods_fit_the_config_last_with_the_servers_resources() -> None:
    msvc = _msvc()
    pod_spec = _pod_spec(msvc)
    assert [i["name"] for i in pod_spec["initContainers"]] == ["fetch-model", "fit-config"]
    fit = pod_spec["initContainers"][1]
    assert fit["command"] == ["python", "-m", "modelship_server.fit_config"]
    assert fit["args"] == ["--config=/models/vad/config.pbtxt", "--model=/models/vad/1/model.onnx",
                           "--batching=auto", "--termination-log=/dev/termination-log"]
    assert fit["image"] == pod_spec["containers"][0]["image"], "the server image: it has ONNX Runtime"
    assert fit["resources"] == pod_spec["containers"][0]["resources"]
    assert fit["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "model-repository", "mountPath": "/models"} in fit["volumeMounts"]


def test_the_step_comes_after_apply_variant_so_it_reads_the_served_file() -> None:
    msvc = _msvc({"maxBatchSize": 16})
    pod_spec = _pod_spec(msvc, variant(msvc.spec, "ort-all", APPLY_ARGS))
    assert [i["name"] for i in pod_spec["initContainers"]] == ["fetch-model", "apply-variant", "fit-config"]
    assert "--batching=required" in pod_spec["initContainers"][2]["args"]


def test_triton_pods_fit_the_config_too() -> None:
    pod_spec = _pod_spec(_msvc(runtime="triton"))
    assert [i["name"] for i in pod_spec["initContainers"]] == ["fetch-model", "fit-config"]
    assert pod_spec["containers"][0]["command"][0] == "tritonserver"


def test_no_step_when_the_spec_turns_batching_off() -> None:
    assert [i["name"] for i in _pod_spec(_msvc({"enabled": False}))["initContainers"]] == ["fetch-model"]


def test_a_measured_max_batch_size_of_zero_still_gets_the_step_so_the_model_reason_is_reported() -> None:
    msvc = _msvc()
    measured = original(msvc.spec, batching=MeasuredBatching(0, 0, dynamic=False))
    assert [i["name"] for i in _pod_spec(msvc, measured)["initContainers"]] == ["fetch-model", "fit-config"]


def test_our_server_writes_why_a_model_failed_to_its_termination_log() -> None:
    command = _pod_spec(_msvc())["containers"][0]["command"]
    assert command[command.index("--termination-log") + 1] == "/dev/termination-log"


# --- from the pods to the status -----------------------------------------------------------

@pytest.mark.parametrize(("the_pod", "reason", "in_message"), [
    (pod(init=[terminated("fetch-model", 0), terminated("fit-config", 3, REFUSED)]),
     "BatchingNotSupported", "input 'state' has dims [2, -1, 128]"),
    (pod(init=[terminated("fetch-model", 0), waiting("fit-config", "CrashLoopBackOff", restarts=2,
                                                     last={"exitCode": 3, "message": REFUSED})]),
     "BatchingNotSupported", "Set spec.batching.enabled: false"),
    (pod(init=[terminated("fit-config", 1, "Traceback (most recent call last): ...")]),
     "ConfigFitFailed", "Traceback"),
    (pod(containers=[waiting("server", "CrashLoopBackOff", restarts=2, last={
        "exitCode": 1, "message": "WarmupFailed: model 'm' version 1: warm-up inference failed on generated inputs "
                                  "(x [1, 4]): InvalidArgument: indices element out of data bounds"})]),
     "WarmupFailed", "indices element out of data bounds"),
    (pod(containers=[terminated("server", 1, "ModelLoadFailed: model 'm': ONNX Runtime cannot load the model")]),
     "ModelLoadFailed", "ONNX Runtime cannot load the model"),
    (pod(containers=[waiting("server", "CrashLoopBackOff", restarts=1, last={
        "exitCode": 1, "message": "E1130 model_lifecycle.cc:626] failed to load 'm' version 1"})]),
     "CrashLoop", "failed to load 'm'"),  # Triton's log lines: no reason of ours to read
])
def test_diagnosis_reads_the_fit_step_and_the_servers_reasons(the_pod, reason, in_message) -> None:  # noqa: ANN001
    problem = diagnose([the_pod])
    assert problem is not None
    assert problem.reason == reason
    assert in_message in problem.message


def test_a_warm_up_failure_is_ready_false_with_its_reason() -> None:
    crashing = pod(init=[terminated("fetch-model", 0), terminated("fit-config", 0, "BatchingFits: max_batch_size 8")],
                   containers=[waiting("server", "CrashLoopBackOff", restarts=3, last={
                       "exitCode": 1, "message": "WarmupFailed: model 'm' version 1: warm-up inference failed"})])
    status, _ = compute_status(_msvc(), observed=Observed(deployment(), [crashing]), previous=None, now=T0,
                               desired_hash="h1")
    ready = c.find(status["conditions"], "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "WarmupFailed")
    assert "warm-up inference failed" in ready["message"]


def _fitted(name: str, line: str, created: str = T0) -> dict[str, Any]:
    p = pod(name, init=[terminated("fetch-model", 0), terminated("fit-config", 0, line)])
    p["metadata"]["creationTimestamp"] = created
    return p


def test_status_batching_says_which_input_turned_batching_off() -> None:
    status, _ = compute_status(_msvc(), observed=Observed(deployment(), [_fitted("svc-a", NOT_BATCHABLE)]),
                               previous=None, now=T0, desired_hash="h1")
    assert status["batching"] == {
        "maxBatchSize": 0, "reason": "ModelNotBatchable",
        "message": "input 'state' has dims [2, -1, 128]: its first dimension is fixed at 2, not a variable batch "
                   "dimension; max_batch_size 8 -> 0, requests run one at a time"}
    assert c.find(status["conditions"], "Ready")["status"] == "True", "it serves, one request at a time"


def test_status_batching_follows_the_newest_pod_and_is_kept_while_no_pod_says() -> None:
    older, newer = _fitted("svc-a", NOT_BATCHABLE), _fitted("svc-b", "BatchingFits: max_batch_size 8",
                                                            "2026-01-01T00:05:00Z")
    assert batching.compute([older, newer], None, batching_enabled=True) is None
    assert batching.compute([newer, older], None, batching_enabled=True) is None
    before = batching.batching_status(NOT_BATCHABLE)
    assert batching.compute([], before, batching_enabled=True) == before
    starting = pod("svc-c", init=[terminated("fetch-model", 0), waiting("fit-config", "PodInitializing")])
    assert batching.compute([starting], before, batching_enabled=True) == before
    assert batching.compute([_fitted("svc-a", NOT_BATCHABLE)], before, batching_enabled=False) is None
    deleting = _fitted("svc-d", NOT_BATCHABLE)
    deleting["metadata"]["deletionTimestamp"] = T0
    assert batching.compute([deleting], None, batching_enabled=True) is None
