"""spec.optimization.dataset, rendered and reported: the Job fetches it and passes --dataset, the
Job's name follows its sha256, serving pods fetch it only when the chosen variant's rebuild reads
it, and a dataset that cannot be fetched or does not fit is named in status. Pure, so table tests."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from modelship.api.v1alpha1 import ModelService
from modelship.render import render_children
from modelship.render.artifact import dataset_path, original, variant
from modelship.render.optimize_job import inputs, job_name, render_optimize_job
from modelship.status import optimization as o
from modelship.status.diagnosis import diagnose
from msvc_samples import SHA, body
from pods import pod, terminated, unschedulable
from test_render import assert_restricted

DATA_SHA = "d5" * 32
OTHER_DATA_SHA = "e6" * 32
VARIANT_SHA = "ab" * 32
DATASET = {"uri": "https://data.example/val.npz", "sha256": DATA_SHA}
BASE: dict[str, Any] = {
    "model": {"uri": "https://h.example/m.onnx", "sha256": SHA, "name": "resnet",
              "credentials": {"secretName": "store"}},
    "optimization": {"enabled": True, "dataset": DATASET},
    "slo": {"latencyMilliseconds": 50},
}
RECIPE = '{"name":"static-int8","kind":"static_int8"}'
CALIBRATED = ["--apply-recipe", RECIPE, "--expect-sha256", VARIANT_SHA, "--samples", "32", "--seed", "0",
              "--dataset", "/dataset/dataset.npz"]
UNCALIBRATED = ["--apply-recipe", '{"name":"ort-all","kind":"ort_all"}', "--expect-sha256", VARIANT_SHA,
                "--samples", "32", "--seed", "0"]
JOB = "svc-optimize-0123456789"


def _msvc(spec: dict[str, Any] | None = None) -> ModelService:
    return ModelService.from_body(body("svc", spec=spec or BASE))


def _spec(**optimization: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    spec["optimization"].update(optimization)
    if spec["optimization"].get("dataset") is None:
        spec["optimization"].pop("dataset", None)
    return spec


def _job_pod(msvc: ModelService) -> dict[str, Any]:
    return render_optimize_job(msvc)["spec"]["template"]["spec"]


def _serving_pod(msvc: ModelService, artifact: Any) -> dict[str, Any]:
    objs = {o["kind"]: o for o in render_children(msvc, artifact=artifact).objects}
    return objs["Deployment"]["spec"]["template"]["spec"]


# --- the optimize Job ------------------------------------------------------------------------


def test_the_job_fetches_the_dataset_like_the_model_and_passes_it_to_the_optimizer() -> None:
    job = render_optimize_job(_msvc())
    pod_spec = job["spec"]["template"]["spec"]
    fetch_model, fetch_dataset = pod_spec["initContainers"]
    assert (fetch_model["name"], fetch_dataset["name"]) == ("fetch-model", "fetch-dataset")
    for same in ("image", "command", "resources", "securityContext", "terminationMessagePolicy", "envFrom"):
        assert fetch_dataset[same] == fetch_model[same], same
    assert fetch_dataset["envFrom"] == [{"secretRef": {"name": "store"}}], "fetched with spec.model.credentials"
    assert fetch_dataset["args"][:3] == ["--uri=https://data.example/val.npz", f"--sha256={DATA_SHA}",
                                         "--dest=/dataset/dataset.npz"]
    assert {"name": "dataset", "mountPath": "/dataset"} in fetch_dataset["volumeMounts"]
    optimize = pod_spec["containers"][0]
    assert "--dataset=/dataset/dataset.npz" in optimize["args"]
    assert optimize["args"][-1] == "--termination-log=/dev/termination-log"
    assert {"name": "dataset", "mountPath": "/dataset", "readOnly": True} in optimize["volumeMounts"]
    assert {"name": "dataset", "emptyDir": {"sizeLimit": "2Gi"}} in pod_spec["volumes"]
    assert_restricted(pod_spec)


def test_a_dataset_fetch_failure_or_misfit_fails_the_job_at_once_like_the_models() -> None:
    rules = render_optimize_job(_msvc())["spec"]["podFailurePolicy"]["rules"]
    by_container = {r["onExitCodes"]["containerName"]: r for r in rules if "onExitCodes" in r}
    assert by_container["fetch-dataset"]["action"] == "FailJob"
    assert by_container["fetch-dataset"]["onExitCodes"]["values"] == by_container["fetch-model"]["onExitCodes"]["values"]
    assert by_container["optimize"]["onExitCodes"]["values"] == [2], "exit 2: a dataset that does not fit"
    # a rule must name a container of the pod: none for fetch-dataset without a dataset
    plain = render_optimize_job(_msvc(_spec(dataset=None)))
    assert "fetch-dataset" not in json.dumps(plain["spec"]["podFailurePolicy"])


def test_without_a_dataset_the_job_is_what_it_was() -> None:
    msvc = _msvc(_spec(dataset=None))
    pod_spec = _job_pod(msvc)
    assert [c["name"] for c in pod_spec["initContainers"]] == ["fetch-model"]
    assert not any(a.startswith("--dataset") for a in pod_spec["containers"][0]["args"])
    assert "dataset" not in {v["name"] for v in pod_spec["volumes"]}
    assert "dataset" not in inputs(msvc), "no new key: a spec without a dataset keeps its Job across an upgrade"


def test_the_jobs_name_follows_the_datasets_sha256_not_its_uri() -> None:
    name = job_name(_msvc())
    assert job_name(_msvc(_spec(dataset={**DATASET, "sha256": OTHER_DATA_SHA}))) != name
    assert job_name(_msvc(_spec(dataset=None))) != name
    assert job_name(_msvc(_spec(dataset={**DATASET, "uri": "s3://mirror-1/val.npz"}))) == name
    assert job_name(_msvc(_spec(dataset={**DATASET, "sha256": DATA_SHA.upper()}))) == name
    assert job_name(_msvc()) == name, "the same dataset, the same Job"


def test_a_pvc_dataset_mounts_its_claim_or_reuses_the_models() -> None:
    own = _job_pod(_msvc(_spec(dataset={"uri": "pvc://data/sets/val.npz", "sha256": DATA_SHA})))
    volumes = {v["name"]: v for v in own["volumes"]}
    assert volumes["dataset-source"] == {"name": "dataset-source",
                                         "persistentVolumeClaim": {"claimName": "data", "readOnly": True}}
    fetch = own["initContainers"][1]
    assert "--pvc-mount=/mnt/dataset-source" in fetch["args"]
    assert {"name": "dataset-source", "mountPath": "/mnt/dataset-source", "readOnly": True} in fetch["volumeMounts"]

    spec = _spec(dataset={"uri": "pvc://store/sets/val.npz", "sha256": DATA_SHA})
    spec["model"]["uri"] = "pvc://store/models/m.onnx"
    shared = _job_pod(_msvc(spec))
    assert [v["name"] for v in shared["volumes"]].count("model-source") == 1
    assert "dataset-source" not in {v["name"] for v in shared["volumes"]}
    fetch = shared["initContainers"][1]
    assert "--pvc-mount=/mnt/model-source" in fetch["args"]
    assert {"name": "model-source", "mountPath": "/mnt/model-source", "readOnly": True} in fetch["volumeMounts"]


# --- serving the chosen variant ----------------------------------------------------------------


def test_serving_pods_fetch_the_dataset_when_the_variants_rebuild_reads_it() -> None:
    msvc = _msvc()
    artifact = variant(msvc.spec, "static-int8", CALIBRATED)
    pod_spec = _serving_pod(msvc, artifact)
    assert [c["name"] for c in pod_spec["initContainers"]] == ["fetch-model", "fetch-dataset", "apply-variant",
                                                                "fit-config"]
    fetch = pod_spec["initContainers"][1]
    assert fetch["args"][:3] == ["--uri=https://data.example/val.npz", f"--sha256={DATA_SHA}",
                                 "--dest=/dataset/dataset.npz"], "the path the Job read, verified the same way"
    assert fetch == _job_pod(msvc)["initContainers"][1], "the same step as the Job's"
    apply = pod_spec["initContainers"][2]
    assert apply["args"][-2:] == ["--dataset", "/dataset/dataset.npz"]
    assert {"name": "dataset", "mountPath": "/dataset", "readOnly": True} in apply["volumeMounts"]
    assert not any(m["name"] == "dataset" for m in pod_spec["containers"][0]["volumeMounts"]), \
        "the server never reads the dataset"
    assert {"name": "dataset", "emptyDir": {"sizeLimit": "2Gi"}} in pod_spec["volumes"]
    assert_restricted(pod_spec)


@pytest.mark.parametrize("artifact", ["uncalibrated", "original"])
def test_serving_pods_do_not_fetch_the_dataset_when_nothing_reads_it(artifact: str) -> None:
    msvc = _msvc()
    chosen = variant(msvc.spec, "ort-all", UNCALIBRATED) if artifact == "uncalibrated" else original(msvc.spec)
    pod_spec = _serving_pod(msvc, chosen)
    assert "fetch-dataset" not in [c["name"] for c in pod_spec["initContainers"]]
    assert "dataset" not in {v["name"] for v in pod_spec["volumes"]}


def test_the_dataset_path_is_read_from_apply_args_in_either_spelling() -> None:
    assert dataset_path(CALIBRATED) == "/dataset/dataset.npz"
    assert dataset_path([*UNCALIBRATED, "--dataset=/dataset/x.npz"]) == "/dataset/x.npz"
    assert dataset_path(UNCALIBRATED) is None
    elsewhere = variant(_msvc().spec, "static-int8", [*UNCALIBRATED, "--dataset", "/dataset/other.npz"])
    assert elsewhere.dataset is not None and elsewhere.dataset.path == "/dataset/other.npz"


def test_apply_args_that_read_a_dataset_the_pods_cannot_have_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="spec.optimization.dataset is not set"):
        variant(_msvc(_spec(dataset=None)).spec, "static-int8", CALIBRATED)
    with pytest.raises(ValueError, match="reads its dataset at /tmp/val.npz, but pods place it under /dataset/"):
        variant(_msvc().spec, "static-int8", [*UNCALIBRATED, "--dataset", "/tmp/val.npz"])
    # in status: a failed optimization, not a crash of the reconcile
    summary = {"schema": "modelship.dev/optimize-report/v1", "outcome": "optimized", "chosen": "static-int8",
               "sha256": VARIANT_SHA, "speedup": 2.0, "spread": 0.02, "apply_args": CALIBRATED, "capacity": None,
               "gate": "cosine mean>=0.99 worst>=0.98", "candidates": []}
    result = o.JobResult("succeeded", summary=o.parse_summary(json.dumps(summary)))
    decision = o.decide(_msvc(_spec(dataset=None)), JOB, result)
    assert (decision.condition.status, decision.condition.reason) == ("False", "Failed")
    assert "spec.optimization.dataset is not set" in decision.condition.message
    assert decision.artifact is not None and decision.artifact.variant == "original"
    served = o.decide(_msvc(), JOB, result)
    assert served.artifact is not None and served.artifact.dataset is not None
    assert (served.artifact.dataset.uri, served.artifact.dataset.sha256) == (DATASET["uri"], DATA_SHA)


# --- status: a dataset that cannot be fetched or does not fit ----------------------------------


def _failed_job() -> dict[str, Any]:
    return {"metadata": {"name": JOB, "uid": "job-uid"},
            "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                       "message": "Container fetch-dataset for pod ns/p1 failed with exit code 14"}]}}


def _job_pod_status(*, init: list[dict[str, Any]], optimize: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "p1", "creationTimestamp": "2026-11-23T11:00:00Z",
                         "ownerReferences": [{"kind": "Job", "name": JOB, "uid": "job-uid", "controller": True}]},
            "status": {"phase": "Failed", "initContainerStatuses": init,
                       "containerStatuses": [{"name": "optimize", "state": optimize}]}}


@pytest.mark.parametrize(("code", "line", "words"), [
    (14, "ModelNotFound: https://data.example/val.npz: HTTP 404 Not Found",
     ["HTTP 404 Not Found", "fix spec.optimization.dataset.uri", "remove spec.optimization.dataset"]),
    (12, f"ModelChecksumMismatch: https://data.example/val.npz: sha256 is {OTHER_DATA_SHA}, expected {DATA_SHA} "
         "(80 bytes read)", [f"sha256 is {OTHER_DATA_SHA}", "spec.optimization.dataset.sha256"]),
    (13, "ModelAccessDenied: https://data.example/val.npz: HTTP 403 Forbidden",
     ["HTTP 403", "spec.model.credentials"]),
], ids=["not-found", "digest-mismatch", "access-denied"])
def test_a_dataset_that_cannot_be_fetched_fails_the_optimization_naming_the_dataset(
        code: int, line: str, words: list[str]) -> None:
    init = [terminated("fetch-model", 0), terminated("fetch-dataset", code, line)]
    result = o.observe(_failed_job(), [_job_pod_status(init=init, optimize={"waiting": {"reason": "PodInitializing"}})],
                       now="2026-11-23T12:00:00Z")
    assert result.state == "failed"
    decision = o.decide(_msvc(), JOB, result)
    message = decision.condition.message
    assert (decision.condition.status, decision.condition.reason) == ("False", "Failed")
    assert "fetching spec.optimization.dataset failed" in message and "https://data.example/val.npz" in message
    assert "model fetch" not in message
    for word in words:
        assert word in message, message
    assert "serving the original model" in message and "Traceback" not in message


def test_a_dataset_that_does_not_fit_names_the_field_and_the_fix() -> None:
    line = ("error: dataset /dataset/dataset.npz has no array for input(s) ['INPUT0']; the model expects ['INPUT0'] "
            "(found ['x'])")
    result = o.observe(_failed_job(), [_job_pod_status(
        init=[terminated("fetch-model", 0), terminated("fetch-dataset", 0)],
        optimize={"terminated": {"exitCode": 2, "reason": "Error", "message": line}})], now="2026-11-23T12:00:00Z")
    message = o.decide(_msvc(), JOB, result).condition.message
    assert line in message
    assert "spec.optimization.dataset, https://data.example/val.npz, does not fit the model" in message
    assert "one array per model input" in message and "remove spec.optimization.dataset" in message
    other = "error: model file /models/resnet/1/model.onnx is not a loadable ONNX model (x)"
    assert o.decide(_msvc(), JOB, o.JobResult("failed", detail=other)).condition.message.count("spec.optimization") == 0


@pytest.mark.parametrize(("code", "reason"), [(10, "InvalidDatasetURI"), (11, "DatasetUnreachable"),
                                              (12, "DatasetChecksumMismatch"), (13, "DatasetAccessDenied"),
                                              (14, "DatasetNotFound"), (1, "DatasetFetchFailed")])
def test_serving_pods_whose_dataset_fetch_fails_say_so_in_ready(code: int, reason: str) -> None:
    problem = diagnose([pod(init=[terminated("fetch-model", 0),
                                  terminated("fetch-dataset", code, f"X: https://data.example/val.npz: {code}")])])
    assert problem is not None and problem.reason == reason
    assert "spec.optimization.dataset" in problem.message


def test_a_missing_dataset_claim_is_named_as_the_datasets() -> None:
    scheduler = '0/5 nodes are available: persistentvolumeclaim "data" not found.'
    the_pod = pod(conditions=unschedulable(scheduler))
    the_pod["spec"]["volumes"] = [{"name": "dataset-source", "persistentVolumeClaim": {"claimName": "data"}}]
    problem = diagnose([the_pod])
    assert problem is not None and problem.reason == "DatasetUnreachable"
    assert "PersistentVolumeClaim data of spec.optimization.dataset.uri does not exist" in problem.message
