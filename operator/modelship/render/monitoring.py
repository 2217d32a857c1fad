"""spec.monitoring in the serving pod: modelship-server's monitoring flags, the reference, and
the capture sink (docs/monitoring.md).

- The reference: with `fromDataset` (the default when spec.optimization.dataset is set) a
  `build-reference` init step profiles the dataset's inputs, checked against the model file
  about to be served (after apply-variant), into a small emptyDir the server reads with
  `--monitoring-reference`; a dataset that does not fit fails the step (ReferenceBuildFailed).
  The dataset is fetched and verified by the same `fetch-dataset` step the optimize Job uses,
  or reused when the variant's rebuild already fetched it. Without it, each pod freezes its
  first `firstRequests` sampled requests (`--monitoring-reference-size`).
  Profiling in each pod, rather than once in the optimize Job, keeps the reference working with
  optimization off, and needs no store the operator would have to manage.
- Capture: `emptyDir` and `pvc://claim/path` are mounted at /capture (`--capture-dir`);
  `s3://` goes to `--capture-uri` with the Secret's keys as environment variables
  (capture.credentials, else spec.model.credentials, the model's own style).

Runtime triton never gets here: the API refuses monitoring with it (Triton has no profiles).
"""

from __future__ import annotations

from typing import Any

from modelship.api.v1alpha1 import ModelService
from modelship.render import pod
from modelship.render.artifact import ModelArtifact

BUILD_REFERENCE = "build-reference"
MONITORING_MOUNT = "/monitoring"
REFERENCE_PATH = f"{MONITORING_MOUNT}/reference.json"
CAPTURE_MOUNT = "/capture"
CAPTURE_EMPTYDIR_LIMIT = "1Gi"
POD_IP_ENV = "MODELSHIP_POD_IP"


def enabled(msvc: ModelService) -> bool:
    return msvc.spec.monitoring.enabled and msvc.spec.runtime == "onnxruntime"


def reference_dataset(msvc: ModelService) -> bool:
    return enabled(msvc) and msvc.spec.monitoring_reference_from_dataset and msvc.spec.optimization.dataset is not None


def server_args(msvc: ModelService) -> list[str]:
    """modelship-server's monitoring flags ([] with monitoring off)."""
    if not enabled(msvc):
        return []
    mon = msvc.spec.monitoring
    args = ["--monitoring", "--monitoring-sample-rate", f"{mon.sample_rate:g}", "--monitoring-window", str(mon.window),
            "--drift-psi-threshold", f"{mon.drift.psi_threshold:g}", "--drift-p-value", f"{mon.drift.p_value:g}"]
    if reference_dataset(msvc):
        args += ["--monitoring-reference", REFERENCE_PATH]
    else:
        args += ["--monitoring-reference-size", str(mon.reference.first_requests)]
    capture = mon.capture
    if capture is not None:
        args += ["--capture-sample-rate", f"{capture.sample_rate:g}", "--capture-batch-size", str(capture.batch_size)]
        if capture.sink.startswith("s3://"):
            args += ["--capture-uri", capture.sink]
        else:
            args += ["--capture-dir", capture_dir(msvc)]
    return args


def capture_dir(msvc: ModelService) -> str:
    capture = msvc.spec.monitoring.capture
    assert capture is not None
    if capture.sink.startswith("pvc://"):
        sub = _claim(capture.sink)[1]
        return f"{CAPTURE_MOUNT}/{sub}" if sub else CAPTURE_MOUNT
    return CAPTURE_MOUNT


def server_mounts(msvc: ModelService) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = []
    if reference_dataset(msvc):
        mounts.append({"name": "monitoring", "mountPath": MONITORING_MOUNT, "readOnly": True})
    capture = msvc.spec.monitoring.capture
    if enabled(msvc) and capture is not None and not capture.sink.startswith("s3://"):
        mounts.append({"name": "capture", "mountPath": CAPTURE_MOUNT})
    return mounts


def server_env(msvc: ModelService) -> list[dict[str, Any]]:
    """The pod's IP as MODELSHIP_POD_IP: the server puts it in the request ids it makes, so a
    label sent to another replica (through the Service) is forwarded to the one that predicted."""
    if not enabled(msvc):
        return []
    return [{"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]


def server_env_from(msvc: ModelService) -> list[dict[str, Any]]:
    """The S3 credentials of an s3:// capture sink, for the server container."""
    capture = msvc.spec.monitoring.capture
    if not enabled(msvc) or capture is None or not capture.sink.startswith("s3://"):
        return []
    secret = capture.credentials or msvc.spec.model.credentials
    return [{"secretRef": {"name": secret.secret_name}}] if secret is not None else []


def volumes(msvc: ModelService, artifact: ModelArtifact) -> list[dict[str, Any]]:
    """The reference's emptyDir (and the dataset's, unless the variant's rebuild brings it),
    and the capture volume."""
    out: list[dict[str, Any]] = []
    if reference_dataset(msvc):
        out.append({"name": "monitoring", "emptyDir": {"sizeLimit": "64Mi"}})
        if artifact.dataset is None:
            dataset = msvc.spec.optimization.dataset
            assert dataset is not None
            out += pod.dataset_volumes(msvc, dataset.uri)
    capture = msvc.spec.monitoring.capture
    if enabled(msvc) and capture is not None:
        if capture.sink == "emptyDir":
            out.append({"name": "capture", "emptyDir": {"sizeLimit": CAPTURE_EMPTYDIR_LIMIT}})
        elif capture.sink.startswith("pvc://"):
            claim = _claim(capture.sink)[0]
            out.append({"name": "capture", "persistentVolumeClaim": {"claimName": claim}})
    return out


def fetch_dataset(msvc: ModelService, artifact: ModelArtifact) -> list[dict[str, Any]]:
    """The `fetch-dataset` step the reference needs, unless the variant's rebuild fetches it."""
    if not reference_dataset(msvc) or artifact.dataset is not None:
        return []
    dataset = msvc.spec.optimization.dataset
    assert dataset is not None
    return [pod.fetch_dataset_container(msvc, uri=dataset.uri, sha256=dataset.sha256)]


def dataset_file(artifact: ModelArtifact) -> str:
    return artifact.dataset.path if artifact.dataset is not None else pod.DATASET_PATH


def build_reference_container(msvc: ModelService, artifact: ModelArtifact) -> dict[str, Any]:
    """The init step that profiles the dataset's inputs for the model about to be served. A
    dataset that does not fit the model fails here, with the reason in the termination
    message (status: ReferenceBuildFailed), rather than as a silently useless reference."""
    model_file = pod.model_path(msvc)
    return {
        "name": BUILD_REFERENCE,
        "image": msvc.spec.images.server,
        "imagePullPolicy": msvc.spec.images.pull_policy,
        "command": ["python", "-m", "modelship_server.monitoring"],
        "args": ["reference", "--dataset", dataset_file(artifact), "--model", model_file, "--output", REFERENCE_PATH],
        "resources": pod.resources(msvc),  # it holds the whole dataset in memory
        "securityContext": pod.container_security(read_only_root=True),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "model-repository", "mountPath": pod.MODEL_REPOSITORY, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            pod.dataset_mount(),
            {"name": "monitoring", "mountPath": MONITORING_MOUNT},
        ],
    }


def _claim(sink: str) -> tuple[str, str]:
    """pvc://claim/sub/path -> (claim, sub/path); the API's pattern has checked the shape."""
    claim, _, sub = sink.removeprefix("pvc://").partition("/")
    return claim, sub.strip("/")
