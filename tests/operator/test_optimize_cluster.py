"""The optimize Job on the real local control plane: one Job per spec that matters, rollout
waits for it, its report reaches status, and a failure falls back or fails closed.

kwok's pods do not run, and kwok would end a Job's pod on its own with an empty report. So the
services here select a node that does not exist: their pods stay Pending, and the test
finishes the optimize pod itself, writing its status through the pods/status subresource as
the kubelet would (a terminated `optimize` container whose termination message is a C1
summary, or an error line). The real Job controller then completes or fails the Job; the
optimizer's real run is the end-to-end issue's to prove.
"""

from __future__ import annotations

import copy
import datetime
import json
import time
from typing import Any

import pytest

from kube_helpers import OperatorProcess, apply, condition, get, wait_for
from modelship.devcluster.errors import DevClusterError
from msvc_samples import SHA

pytestmark = pytest.mark.cluster

NOWHERE = {"modelship.dev/test-node": "none"}  # no node has it: kwok never touches these pods
VARIANT_SHA = "ab" * 32
APPLY_ARGS = ["--apply-recipe", '{"name":"ort-all","kind":"ort_all"}', "--expect-sha256", VARIANT_SHA,
              "--samples", "32", "--seed", "0"]


def manifest(name: str, **optimization: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": name},
        "spec": {
            "model": {"uri": "https://models.example.com/m.onnx", "sha256": SHA, "name": "m"},
            "optimization": {"enabled": True, **optimization},
            "slo": {"latencyMilliseconds": 50},
            "scheduling": {"nodeSelector": NOWHERE},
        },
    }


def summary(outcome: str = "optimized") -> str:
    optimized = outcome == "optimized"
    return json.dumps({
        "schema": "modelship.dev/optimize-report/v1", "outcome": outcome,
        "chosen": "ort-all" if optimized else "original", "sha256": VARIANT_SHA if optimized else SHA,
        "speedup": 1.42 if optimized else None, "spread": 0.031,
        "apply_args": APPLY_ARGS if optimized else [],
        "capacity": {"requests_per_second": 812.0, "percentile": "p95", "latency_ms": 4.1, "slo_ms": 50.0,
                     "max_batch_size": 16, "max_queue_delay_microseconds": 400, "concurrency": 4},
        "gate": "cosine mean>=0.99 worst>=0.98", "inputs": "generated (32 inputs, seed 0)",
        "candidates": [["baseline", "kept", 1.0, 1.0, ""], ["ort-all", "chosen" if optimized else "kept", 1.42, 1.0, ""]],
    }, separators=(",", ":"))


def jobs(cluster: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    return get(cluster, "jobs", "-n", namespace, "-l", f"modelship.dev/optimize-for={name}")["items"]


def job_names(cluster: Any, namespace: str, name: str) -> list[str]:
    return sorted(j["metadata"]["name"] for j in jobs(cluster, namespace, name))


def msvc(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    return get(cluster, "msvc", "-n", namespace, name)


def deployments(cluster: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    return get(cluster, "deployments", "-n", namespace, "-l", f"modelship.dev/modelservice={name}")["items"]


def finish_pod(cluster: Any, namespace: str, job: str, *, exit_code: int, message: str,
               failed_init: str | None = None) -> None:
    """Stand in for the kubelet (kwok's pods don't run): end the Job's pod with this exit code
    and termination message, written through the pods/status subresource. `failed_init`: the
    init step that ends with them instead, so the optimizer never starts."""
    for attempt in range(5):
        pod = wait_for(lambda: next(iter(get(cluster, "pods", "-n", namespace, "-l",
                                             f"batch.kubernetes.io/job-name={job}")["items"]), None),
                       timeout=30, what=f"a pod of Job {job}")
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        image = pod["spec"]["containers"][0]["image"]
        done = {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}
        pod["status"] = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "startTime": now,
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                           {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                           {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}],
            "initContainerStatuses": [{"name": c["name"], "image": image, "imageID": "", "ready": True,
                                       "restartCount": 0, "state": {"terminated": done}}
                                      for c in pod["spec"]["initContainers"]],
            "containerStatuses": [{"name": "optimize", "image": image, "imageID": "", "ready": False, "restartCount": 0,
                                   "state": {"terminated": {**done, "exitCode": exit_code,
                                                            "reason": "Completed" if exit_code == 0 else "Error",
                                                            "message": message}}}],
        }
        if failed_init is not None:
            for status in pod["status"]["initContainerStatuses"]:
                if status["name"] == failed_init:
                    status["ready"] = False
                    status["state"] = {"terminated": {**done, "exitCode": exit_code, "reason": "Error", "message": message}}
            pod["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "PodInitializing"}}
        meta = pod["metadata"]
        try:
            cluster.api("PUT", f"/api/v1/namespaces/{namespace}/pods/{meta['name']}/status", pod)
            return
        except DevClusterError as exc:  # another writer (kwok, the scheduler) moved the pod: read it again
            if "HTTP 409" not in str(exc) or attempt == 4:
                raise


def optimized_condition(cluster: Any, namespace: str, name: str) -> dict[str, Any] | None:
    return condition(msvc(cluster, namespace, name), "Optimized")


def test_one_job_per_spec_rollout_waits_and_the_report_reaches_status(
        cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    m = manifest("opt")
    apply(cluster, m, namespace)
    first = wait_for(lambda: job_names(cluster, namespace, "opt"), timeout=30, what="the optimize Job")
    assert len(first) == 1 and first[0].startswith("opt-optimize-")
    job = jobs(cluster, namespace, "opt")[0]
    owner = job["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ModelService" and owner["controller"] is True
    pending = wait_for(lambda: optimized_condition(cluster, namespace, "opt"), timeout=30, what="Optimized condition")
    assert pending["status"] == "Unknown" and pending["reason"] in ("Pending", "Running"), pending
    status = msvc(cluster, namespace, "opt")["status"]
    assert condition(msvc(cluster, namespace, "opt"), "Ready")["reason"] == "Optimizing"
    assert status["optimization"] == {"job": first[0]}

    # re-applying the same spec, or changing what the result does not depend on, makes no second Job
    apply(cluster, m, namespace)
    same = copy.deepcopy(m)
    same["spec"]["replicas"] = 2
    apply(cluster, same, namespace)
    time.sleep(3)
    assert job_names(cluster, namespace, "opt") == first
    assert deployments(cluster, namespace, "opt") == [], "no rollout before the Job has finished"

    # a change that matters makes a new Job; the unfinished one of the old spec goes
    changed = manifest("opt", budgetSeconds=900)
    apply(cluster, changed, namespace)
    second = wait_for(lambda: (n := job_names(cluster, namespace, "opt")) != first and len(n) == 1 and n,
                      timeout=30, what="the Job of the new spec, alone")
    assert deployments(cluster, namespace, "opt") == []

    finish_pod(cluster, namespace, second[0], exit_code=0, message=summary())
    done = wait_for(lambda: (s := msvc(cluster, namespace, "opt")["status"]).get("optimization", {}).get("outcome")
                    == "optimized" and s, timeout=60, what="the report in status")
    assert done["optimization"] == {
        "job": second[0], "outcome": "optimized", "variant": "ort-all", "sha256": VARIANT_SHA, "speedup": 1.42,
        "spread": 0.031, "capacity": {"requestsPerSecond": 812.0, "percentile": "p95", "latencyMilliseconds": 4.1,
                                      "sloMilliseconds": 50.0, "maxBatchSize": 16, "maxQueueDelayMicroseconds": 400,
                                      "concurrency": 4},
        "gate": "cosine mean>=0.99 worst>=0.98", "inputs": "generated (32 inputs, seed 0)"}
    assert done["variant"] == "ort-all"
    optimized = condition({"status": done}, "Optimized")
    assert (optimized["status"], optimized["reason"]) == ("True", "Succeeded")
    assert "ort-all" in optimized["message"] and "1.42x" in optimized["message"]
    assert "inputs generated from the model's shapes" in optimized["message"]
    dep = wait_for(lambda: deployments(cluster, namespace, "opt"), timeout=30, what="the Deployment")[0]
    init = dep["spec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["fetch-model", "apply-variant", "fit-config"]
    assert init[1]["args"][-len(APPLY_ARGS):] == APPLY_ARGS
    config = get(cluster, "configmap", "-n", namespace, "opt-model-config")["data"]["config.pbtxt"]
    assert "max_batch_size: 16" in config and "max_queue_delay_microseconds: 400" in config

    # the next spec change: the Deployment keeps serving ort-all until the new Job has finished
    third_spec = manifest("opt", budgetSeconds=1200)
    apply(cluster, third_spec, namespace)
    third = wait_for(lambda: [n for n in job_names(cluster, namespace, "opt") if n != second[0]], timeout=30,
                     what="a third Job")
    assert second[0] in job_names(cluster, namespace, "opt"), "a finished Job stays until its successor has finished"
    time.sleep(2)
    assert deployments(cluster, namespace, "opt")[0]["metadata"]["annotations"]["modelship.dev/variant"] == "ort-all"
    assert msvc(cluster, namespace, "opt")["status"]["variant"] == "ort-all"
    finish_pod(cluster, namespace, third[0], exit_code=0, message=summary("baseline"))
    wait_for(lambda: job_names(cluster, namespace, "opt") == third, timeout=30, what="the superseded Job deleted")
    status = wait_for(lambda: (s := msvc(cluster, namespace, "opt")["status"]).get("variant") == "original" and s,
                      timeout=30, what="the original served")
    assert condition({"status": status}, "Optimized")["reason"] == "NoFasterVariant"
    assert status["optimization"]["outcome"] == "baseline" and "speedup" not in status["optimization"]
    dep = wait_for(lambda: (d := deployments(cluster, namespace, "opt")) and
                   len(d[0]["spec"]["template"]["spec"]["initContainers"]) == 2 and d, timeout=30,
                   what="the Deployment without apply-variant")


def test_a_failed_job_falls_back_to_the_original(cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    apply(cluster, manifest("fallback"), namespace)
    job = wait_for(lambda: job_names(cluster, namespace, "fallback"), timeout=30, what="the optimize Job")[0]
    line = "error: model file /models/m/1/model.onnx is not a loadable ONNX model (protobuf parsing failed)"
    finish_pod(cluster, namespace, job, exit_code=2, message=line)
    optimized = wait_for(lambda: (c := optimized_condition(cluster, namespace, "fallback")) and c["reason"] == "Failed"
                         and c, timeout=60, what="Optimized=False/Failed")
    assert optimized["status"] == "False" and line in optimized["message"]
    dep = wait_for(lambda: deployments(cluster, namespace, "fallback"), timeout=30, what="the baseline Deployment")[0]
    assert [c["name"] for c in dep["spec"]["template"]["spec"]["initContainers"]] == ["fetch-model", "fit-config"]
    status = msvc(cluster, namespace, "fallback")["status"]
    assert status["variant"] == "original" and status["optimization"] == {"job": job, "outcome": "failed"}
    failed = get(cluster, "job", "-n", namespace, job)
    assert any(c["type"] == "Failed" and c["status"] == "True" for c in failed["status"]["conditions"]), \
        "exit code 2 (bad input) fails the Job at once, without a retry"
    assert len(get(cluster, "pods", "-n", namespace, "-l", f"batch.kubernetes.io/job-name={job}")["items"]) == 1

    # settled: the finished Job, its pod and the status cause no further writes
    time.sleep(3)
    audit_size = cluster.audit_log.stat().st_size
    time.sleep(20)
    with open(cluster.audit_log, "rb") as f:
        f.seek(audit_size)
        writes = [json.loads(line) for line in f if line.strip()]
    ours = [w for w in writes if "modelship" in w.get("user", {}).get("username", "")
            and (w.get("objectRef") or {}).get("namespace") == namespace and w.get("verb") not in ("get", "list", "watch")]
    assert ours == [], [(w["verb"], w.get("requestURI")) for w in ours]


def test_a_failed_job_with_fail_closed_rolls_out_nothing_and_says_why(
        cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    apply(cluster, manifest("closed", failurePolicy="FailClosed"), namespace)
    job = wait_for(lambda: job_names(cluster, namespace, "closed"), timeout=30, what="the optimize Job")[0]
    finish_pod(cluster, namespace, job, exit_code=2, message="error: --sha256 mismatch")
    ready = wait_for(lambda: (c := condition(msvc(cluster, namespace, "closed"), "Ready")) and
                     c["reason"] == "OptimizationFailed" and c, timeout=60, what="Ready=False/OptimizationFailed")
    assert ready["status"] == "False" and "FailClosed" in ready["message"] and "error: --sha256 mismatch" in ready["message"]
    assert condition(msvc(cluster, namespace, "closed"), "Degraded")["status"] == "True"
    time.sleep(3)
    assert deployments(cluster, namespace, "closed") == []
    assert get(cluster, "configmaps", "-n", namespace, "-l", "modelship.dev/modelservice=closed")["items"] == []


DATASET = {"uri": "https://data.example.com/val.npz", "sha256": "d5" * 32}


def test_a_dataset_is_fetched_by_the_one_job_and_by_serving_pods_that_rebuild_from_it(
        cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    """The contract with the API server and the real Job controller: one Job per dataset, a
    fetch-dataset step and --dataset in the pod spec the Job controller accepted, and a
    calibrated variant's Deployment fetching the same file to the same path."""
    m = manifest("data", dataset=DATASET)
    apply(cluster, m, namespace)
    names = wait_for(lambda: job_names(cluster, namespace, "data"), timeout=30, what="the optimize Job")
    apply(cluster, m, namespace)
    time.sleep(2)
    assert job_names(cluster, namespace, "data") == names and len(names) == 1, "the same dataset, the same Job"
    pod_spec = jobs(cluster, namespace, "data")[0]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod_spec["initContainers"]] == ["fetch-model", "fetch-dataset"]
    fetch = pod_spec["initContainers"][1]
    assert fetch["command"] == ["python", "-m", "modelship.fetch"]
    assert f"--uri={DATASET['uri']}" in fetch["args"] and f"--sha256={DATASET['sha256']}" in fetch["args"]
    assert "--dest=/dataset/dataset.npz" in fetch["args"]
    assert "--dataset=/dataset/dataset.npz" in pod_spec["containers"][0]["args"]
    # its pod, created by the real Job controller from that template, is what gets finished
    calibrated = [*APPLY_ARGS, "--dataset", "/dataset/dataset.npz"]
    finish_pod(cluster, namespace, names[0], exit_code=0,
               message=summary().replace(json.dumps(APPLY_ARGS, separators=(",", ":")),
                                         json.dumps(calibrated, separators=(",", ":"))))
    dep = wait_for(lambda: deployments(cluster, namespace, "data"), timeout=60, what="the Deployment")[0]
    init = dep["spec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["fetch-model", "fetch-dataset", "apply-variant", "fit-config"]
    assert init[1]["args"] == fetch["args"] and init[2]["args"][-2:] == ["--dataset", "/dataset/dataset.npz"]

    changed = manifest("data", dataset={**DATASET, "sha256": "e6" * 32})
    apply(cluster, changed, namespace)
    wait_for(lambda: (n := job_names(cluster, namespace, "data")) != names and len(n) == 2, timeout=30,
             what="a new Job for the new dataset")


def test_a_dataset_that_cannot_be_fetched_fails_the_job_at_once_and_says_so(
        cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    apply(cluster, manifest("nodata", dataset=DATASET), namespace)
    job = wait_for(lambda: job_names(cluster, namespace, "nodata"), timeout=30, what="the optimize Job")[0]
    finish_pod(cluster, namespace, job, exit_code=14, failed_init="fetch-dataset",
               message=f"ModelNotFound: {DATASET['uri']}: HTTP 404 Not Found")
    optimized = wait_for(lambda: (c := optimized_condition(cluster, namespace, "nodata")) and c["reason"] == "Failed"
                         and c, timeout=60, what="Optimized=False/Failed")
    assert "fetching spec.optimization.dataset failed" in optimized["message"], optimized
    assert DATASET["uri"] in optimized["message"] and "HTTP 404" in optimized["message"]
    failed = get(cluster, "job", "-n", namespace, job)
    assert any(c["type"] == "Failed" and c["status"] == "True" and c["reason"] == "PodFailurePolicy"
               for c in failed["status"]["conditions"]), failed["status"]
    assert len(get(cluster, "pods", "-n", namespace, "-l", f"batch.kubernetes.io/job-name={job}")["items"]) == 1
