"""The optimize Job and the serving of its chosen variant, rendered: pure, so table tests."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from modelship.api.v1alpha1 import ModelService
from modelship.render import names, render_children
from modelship.render.artifact import MeasuredBatching, original, variant
from modelship.render.optimize_job import job_name, render_optimize_job
from msvc_samples import SHA, body, example
from test_render import assert_restricted

OTHER_SHA = "fedcba9876543210" * 4
BASE: dict[str, Any] = {
    "model": {"uri": "https://h.example/m.onnx", "sha256": SHA, "name": "resnet"},
    "resources": {"cpu": "2", "memory": "4Gi"},
    "optimization": {"enabled": True},
    "slo": {"latencyMilliseconds": 50, "percentile": "p99"},
}
APPLY_ARGS = ["--apply-recipe", '{"name":"ort-all","kind":"ort_all"}', "--expect-sha256", OTHER_SHA,
              "--samples", "32", "--seed", "0"]


def _msvc(spec: dict[str, Any] | None = None, name: str = "svc", **meta: Any) -> ModelService:
    return ModelService.from_body(body(name, spec=spec or BASE, **meta))


def _with(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = spec
        parts = dotted.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return spec


def test_the_job_is_named_for_its_service_and_digest_and_stable_across_renders() -> None:
    first, second = render_optimize_job(_msvc()), render_optimize_job(_msvc())
    assert first == second
    name = first["metadata"]["name"]
    assert name.startswith("svc-optimize-") and len(name.rsplit("-", 1)[-1]) == 10
    # what does not change the result does not change the name
    for unrelated in (_with(replicas=5), _with(rollout={"preStopDelaySeconds": 2}),
                      _with(model__uri="https://mirror.example/m.onnx"),
                      _with(optimization={"enabled": True, "failurePolicy": "FailClosed"})):
        assert job_name(_msvc(unrelated)) == name
    assert job_name(_msvc(uid="another-uid", generation=7)) == name


@pytest.mark.parametrize("change", [
    {"model__sha256": OTHER_SHA},
    {"optimization": {"enabled": True, "accuracy": {"metric": "maxAbs"}}},
    {"optimization": {"enabled": True, "accuracy": {"mean": 0.995}}},
    {"optimization": {"enabled": True, "budgetSeconds": 1200}},
    {"slo": {"latencyMilliseconds": 20, "percentile": "p99"}},
    {"batching": {"maxBatchSize": 4}},
    {"resources": {"cpu": "4", "memory": "4Gi"}},
    {"resources": {"cpu": "2", "memory": "4Gi", "gpu": {"count": 1}}},
    {"resources": {"cpu": "2", "memory": "4Gi", "gpu": {"count": 1, "product": "NVIDIA-L4"}}},
    {"resources": {"cpu": "2", "memory": "4Gi", "gpu": {"count": 1, "migProfile": "1g.10gb"}}},
    {"scheduling": {"nodeSelector": {"pool": "inference"}}},
    {"scheduling": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}},
    {"images": {"server": "registry.example/modelship-server:0.2.0"}},
], ids=lambda change: next(iter(change)))
def test_a_change_the_result_depends_on_makes_a_new_job(change: dict[str, Any]) -> None:
    assert job_name(_msvc(_with(**change))) != job_name(_msvc())


def test_long_service_names_are_cut_to_a_valid_job_name_and_stay_distinct() -> None:
    a, b = "a" * 50 + "x", "a" * 50 + "y"
    name_a, name_b = job_name(_msvc(name=a)), job_name(_msvc(name=b))
    assert len(name_a) <= 63 and len(name_b) <= 63
    assert name_a != name_b


def test_the_job_runs_the_optimizer_with_the_gate_budget_slo_and_batching_bound() -> None:
    spec = _with(optimization={"enabled": True, "accuracy": {"metric": "top1Agreement", "mean": 0.97, "worst": 0.9},
                               "budgetSeconds": 900}, batching={"maxBatchSize": 16})
    job = render_optimize_job(_msvc(spec))
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    pod = job["spec"]["template"]["spec"]
    optimize = pod["containers"][0]
    assert optimize["name"] == "optimize" and optimize["command"] == ["modelship", "optimize"]
    assert optimize["args"] == [
        "--model=/models/resnet/1/model.onnx", "--output=/models/resnet/optimized", f"--sha256={SHA}",
        "--metric=top1_agreement", "--threshold-mean=0.97", "--threshold-min=0.9", "--budget-seconds=900",
        "--max-batch-size=16", "--slo-ms=50", "--slo-percentile=p99", "--termination-log=/dev/termination-log",
    ]
    assert optimize["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 1
    assert job["spec"]["activeDeadlineSeconds"] == 900 + 300
    assert "ttlSecondsAfterFinished" not in job["spec"]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "optimize", "operator": "In", "values": [2]}} in rules


def test_gate_defaults_follow_the_metric_and_no_slo_means_no_slo_flags() -> None:
    spec = _with(optimization={"enabled": True, "accuracy": {"metric": "maxRel"}})
    del spec["slo"]
    args = render_optimize_job(_msvc(spec))["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--metric=max_rel" in args and "--threshold-mean=0.01" in args and "--threshold-min=0.05" in args
    assert "--max-batch-size=32" in args
    assert not any(a.startswith("--slo") for a in args)
    off = _with(batching={"enabled": False})
    assert "--max-batch-size=1" in render_optimize_job(_msvc(off))["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_job_fetches_like_serving_and_has_the_same_resources_scheduling_and_security() -> None:
    spec = example("gpu-triton.yaml")["spec"]
    spec["optimization"] = {"enabled": True}
    spec["scheduling"]["priorityClassName"] = "inference"
    spec["scheduling"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}
    msvc = _msvc(spec)
    job = render_optimize_job(msvc)
    job_pod = job["spec"]["template"]["spec"]
    serving = {o["kind"]: o for o in render_children(msvc).objects}["Deployment"]["spec"]["template"]["spec"]
    for field in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "securityContext",
                  "automountServiceAccountToken"):
        assert job_pod[field] == serving[field], field
    assert job_pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    optimize = job_pod["containers"][0]
    assert optimize["resources"] == serving["containers"][0]["resources"]
    assert optimize["resources"]["limits"]["nvidia.com/gpu"] == 1, "a GPU service benchmarks on a GPU"
    fetch = job_pod["initContainers"][0]
    assert fetch["name"] == "fetch-model" and fetch["command"] == serving["initContainers"][0]["command"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "model-store"}}]
    assert [a for a in fetch["args"] if not a.startswith("--copy=")] == \
        [a for a in serving["initContainers"][0]["args"] if not a.startswith("--copy=")]
    assert {v["name"]: v for v in job_pod["volumes"]}["model-repository"] == {"name": "model-repository",
                                                                            "emptyDir": {"sizeLimit": "8Gi"}}
    assert {v["name"]: v for v in job_pod["volumes"]}["tmp"] == {"name": "tmp", "emptyDir": {}}
    assert_restricted(job_pod)


def test_the_job_is_owned_by_its_service_and_labelled_apart_from_serving_pods() -> None:
    job = render_optimize_job(_msvc())
    meta = job["metadata"]
    assert meta["ownerReferences"][0]["uid"] == "uid-1" and meta["ownerReferences"][0]["controller"] is True
    for labels in (meta["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels[names.OPTIMIZE_LABEL] == "svc"
        assert names.SERVICE_LABEL not in labels, "the Service must never send traffic to an optimize pod"
        assert labels["app.kubernetes.io/managed-by"] == "modelship"


def test_a_chosen_variant_adds_the_apply_variant_step_after_fetch() -> None:
    msvc = _msvc()
    objs = {o["kind"]: o for o in render_children(msvc, artifact=variant(msvc.spec, "ort-all", APPLY_ARGS)).objects}
    dep = objs["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model", "apply-variant", "fit-config"]
    apply = pod["initContainers"][1]
    assert apply["command"] == ["modelship", "optimize"]
    assert apply["args"] == ["--model=/models/resnet/1/model.onnx", "--output=/models/resnet/1",
                             "--termination-log=/dev/termination-log", *APPLY_ARGS]
    assert f"--sha256={SHA}" in pod["initContainers"][0]["args"], "the pods still fetch and verify the original"
    assert dep["metadata"]["annotations"][names.VARIANT_ANNOTATION] == "ort-all"
    assert_restricted(pod)
    plain = {o["kind"]: o for o in render_children(msvc).objects}["Deployment"]
    assert [c["name"] for c in plain["spec"]["template"]["spec"]["initContainers"]] == ["fetch-model", "fit-config"]
    assert plain["metadata"]["annotations"][names.DESIRED_HASH_ANNOTATION] != \
        dep["metadata"]["annotations"][names.DESIRED_HASH_ANNOTATION]


def _config(msvc: ModelService, batching: MeasuredBatching | None) -> pb.ModelConfig:
    objs = {o["kind"]: o for o in render_children(msvc, artifact=original(msvc.spec, batching=batching)).objects}
    return text_format.Parse(objs["ConfigMap"]["data"]["config.pbtxt"], pb.ModelConfig())


def test_measured_batching_fills_what_the_spec_leaves_unset() -> None:
    measured = MeasuredBatching(max_batch_size=16, max_queue_delay_microseconds=400)
    config = _config(_msvc(), measured)
    assert config.max_batch_size == 16 and config.dynamic_batching.max_queue_delay_microseconds == 400
    config = _config(_msvc(_with(batching={"maxBatchSize": 4})), measured)
    assert config.max_batch_size == 4 and config.dynamic_batching.max_queue_delay_microseconds == 400
    config = _config(_msvc(_with(batching={"maxQueueDelayMicroseconds": 50, "preferredBatchSizes": [4, 32]})),
                     measured)
    assert config.max_batch_size == 16 and config.dynamic_batching.max_queue_delay_microseconds == 50
    assert list(config.dynamic_batching.preferred_batch_size) == [4], "sizes above the measured maximum are dropped"
    config = _config(_msvc(), None)
    assert config.max_batch_size == 8 and config.dynamic_batching.max_queue_delay_microseconds == 1000


def test_a_model_the_job_found_unbatchable_gets_no_batching() -> None:
    config = _config(_msvc(), MeasuredBatching(max_batch_size=0, max_queue_delay_microseconds=0, dynamic=False))
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    config = _config(_msvc(), MeasuredBatching(max_batch_size=8, max_queue_delay_microseconds=0, dynamic=False))
    assert config.max_batch_size == 8 and not config.HasField("dynamic_batching")
