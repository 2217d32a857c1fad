"""Pod parts the serving Deployment and the optimize Job share.

The Job must see what serving sees: the same verified model file (the same fetch step), the
same hardware (resources, GPU included) and the same nodes (scheduling), or the variant it
measures is not the one the pods will rebuild and serve. So both pod specs are built from
these functions, never from copies.

A user dataset (spec.optimization.dataset) is fetched by a second init step, `fetch-dataset`,
running the same `modelship.fetch` as `fetch-model` rather than one step fetching both: the
step's exit code then says which file failed (the Job's pod failure policy and the status name
the dataset, not the model, without parsing messages), and the fetch contract stays one file,
one verified digest, one exit code. The dataset goes to its own emptyDir, outside the model
repository a server scans, and only the steps that read it mount it.

Security: the "restricted" Pod Security Standard for every pod (non-root, no privilege
escalation, all capabilities dropped, RuntimeDefault seccomp); the API token is not mounted.
"""

from __future__ import annotations

from typing import Any

from modelship.api.v1alpha1 import ModelService
from modelship.modeluri import parse as parse_uri

MODEL_REPOSITORY = "/models"
CONFIG_MOUNT = "/etc/modelship/model-config"
PVC_MOUNT = "/mnt/model-source"
DATASET_MOUNT = "/dataset"  # an emptyDir: the optimize Job's and apply-variant's inputs
DATASET_PATH = f"{DATASET_MOUNT}/dataset.npz"  # where the Job reads it, so where apply_args point
DATASET_PVC_MOUNT = "/mnt/dataset-source"
FETCH_MODEL = "fetch-model"
FETCH_DATASET = "fetch-dataset"
# Size caps. One .onnx file cannot pass protobuf's 2 GiB limit (larger models keep their
# weights in external data, which one fetched file cannot carry), so the fetch refuses more.
# The repository also holds the optimizer's output and intermediates (the Job) or the
# rebuilt variant (serving): its emptyDir's sizeLimit leaves room for them, and stops a
# runaway write before it fills the node's disk. The dataset's emptyDir holds the one file.
MODEL_MAX_BYTES = 2 << 30
MODEL_REPOSITORY_SIZE_LIMIT = "8Gi"
DATASET_MAX_BYTES = 2 << 30
DATASET_SIZE_LIMIT = "2Gi"
RUN_AS = 1000  # the non-root user of both modelship's server image and NGC's Triton image
TERMINATION_LOG = "/dev/termination-log"


def model_path(msvc: ModelService) -> str:
    """Where the fetch step puts the verified file (Triton's repository layout, version 1)."""
    return f"{MODEL_REPOSITORY}/{msvc.spec.model.name}/1/model.onnx"


def base_volumes(msvc: ModelService) -> list[dict[str, Any]]:
    """The model repository and /tmp (emptyDirs), plus the claim of a pvc:// model."""
    volumes: list[dict[str, Any]] = [
        {"name": "model-repository", "emptyDir": {"sizeLimit": MODEL_REPOSITORY_SIZE_LIMIT}},
        {"name": "tmp", "emptyDir": {}},
    ]
    source = parse_uri(msvc.spec.model.uri)
    if source.scheme == "pvc":
        volumes.append(
            {"name": "model-source", "persistentVolumeClaim": {"claimName": source.location, "readOnly": True}}
        )
    return volumes


def fetch_container(msvc: ModelService, *, uri: str, sha256: str, config_copy: str | None) -> dict[str, Any]:
    """The `fetch-model` init step: download, verify the sha256, place the file.

    `config_copy`: a mounted config.pbtxt to copy next to the model (serving), or None (the
    optimize Job, which needs only the model)."""
    mounts: list[dict[str, Any]] = [
        {"name": "model-repository", "mountPath": MODEL_REPOSITORY},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    args = [f"--uri={uri}", f"--sha256={sha256}", f"--dest={model_path(msvc)}", f"--pvc-mount={PVC_MOUNT}",
            f"--max-bytes={MODEL_MAX_BYTES}"]
    if config_copy is not None:
        mounts.insert(1, {"name": "model-config", "mountPath": CONFIG_MOUNT, "readOnly": True})
        args.append(f"--copy={CONFIG_MOUNT}/config.pbtxt:{config_copy}")
    if parse_uri(uri).scheme == "pvc":
        mounts.append({"name": "model-source", "mountPath": PVC_MOUNT, "readOnly": True})
    return _fetch_step(msvc, FETCH_MODEL, args, mounts)


def fetch_dataset_container(msvc: ModelService, *, uri: str, sha256: str, dest: str = DATASET_PATH) -> dict[str, Any]:
    """The `fetch-dataset` init step: the same fetch, verify and place as `fetch-model`, for
    the .npz of spec.optimization.dataset, with the same credentials."""
    volume, mount = dataset_claim(msvc, uri) or (None, PVC_MOUNT)
    mounts: list[dict[str, Any]] = [
        {"name": "dataset", "mountPath": DATASET_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if volume is not None:
        mounts.append({"name": volume["name"], "mountPath": mount, "readOnly": True})
    args = [f"--uri={uri}", f"--sha256={sha256}", f"--dest={dest}", f"--pvc-mount={mount}",
            f"--max-bytes={DATASET_MAX_BYTES}"]
    return _fetch_step(msvc, FETCH_DATASET, args, mounts)


def dataset_volumes(msvc: ModelService, uri: str) -> list[dict[str, Any]]:
    """The dataset's emptyDir, plus the claim of a pvc:// dataset unless the model's claim
    (already a volume of the pod) holds it."""
    volumes: list[dict[str, Any]] = [{"name": "dataset", "emptyDir": {"sizeLimit": DATASET_SIZE_LIMIT}}]
    claim = dataset_claim(msvc, uri)
    if claim is not None and claim[0]["name"] != "model-source":
        volumes.append(claim[0])
    return volumes


def dataset_claim(msvc: ModelService, uri: str) -> tuple[dict[str, Any], str] | None:
    """(volume, mount path) of a pvc:// dataset's claim, or None for other schemes. The
    model's claim is reused when it is the same one: one claim, one volume, one mount."""
    source = parse_uri(uri, field="spec.optimization.dataset.uri")
    if source.scheme != "pvc":
        return None
    model = parse_uri(msvc.spec.model.uri)
    shared = model.scheme == "pvc" and model.location == source.location
    name, mount = ("model-source", PVC_MOUNT) if shared else ("dataset-source", DATASET_PVC_MOUNT)
    return {"name": name, "persistentVolumeClaim": {"claimName": source.location, "readOnly": True}}, mount


def dataset_mount() -> dict[str, Any]:
    """The dataset as the steps that read it see it (the optimizer, apply-variant)."""
    return {"name": "dataset", "mountPath": DATASET_MOUNT, "readOnly": True}


def _fetch_step(msvc: ModelService, name: str, args: list[str], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    spec = msvc.spec
    fetch: dict[str, Any] = {
        "name": name,
        "image": spec.images.server,
        "imagePullPolicy": spec.images.pull_policy,
        "command": ["python", "-m", "modelship.fetch"],
        "args": args,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": container_security(read_only_root=True),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    if spec.model.credentials is not None:
        fetch["envFrom"] = [{"secretRef": {"name": spec.model.credentials.secret_name}}]
    return fetch


def resources(msvc: ModelService) -> dict[str, Any]:
    """The server's requests and limits: CPU and memory requested, memory and GPUs limited
    (no CPU limit: CFS throttling shows up as tail latency)."""
    spec = msvc.spec
    requests: dict[str, Any] = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    limits: dict[str, Any] = {"memory": spec.resources.memory}
    gpu = spec.resources.gpu
    if gpu.resource_name:
        requests[gpu.resource_name] = gpu.count
        limits[gpu.resource_name] = gpu.count
    return {"requests": requests, "limits": limits}


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security(*, read_only_root: bool) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only_root,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def base_pod_spec(msvc: ModelService) -> dict[str, Any]:
    """Security, scheduling and pull secrets; the caller adds containers and volumes."""
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security(),
    }
    pod_spec.update(scheduling(msvc))
    if msvc.spec.images.pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in msvc.spec.images.pull_secrets]
    return pod_spec


def scheduling(msvc: ModelService) -> dict[str, Any]:
    """nodeSelector, tolerations, affinity and priority; GPU services also pin the product
    and tolerate the usual `nvidia.com/gpu` taint of GPU nodes."""
    spec = msvc.spec
    out: dict[str, Any] = {}
    node_selector = dict(spec.scheduling.node_selector or {})
    tolerations = [t.wire() for t in spec.scheduling.tolerations or []]
    gpu = spec.resources.gpu
    if gpu.count > 0:
        if gpu.product:
            node_selector["nvidia.com/gpu.product"] = gpu.product
        gpu_toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        if gpu_toleration not in tolerations:
            tolerations.append(gpu_toleration)
    if node_selector:
        out["nodeSelector"] = node_selector
    if tolerations:
        out["tolerations"] = tolerations
    if spec.scheduling.affinity:
        out["affinity"] = spec.scheduling.affinity
    if spec.scheduling.priority_class_name:
        out["priorityClassName"] = spec.scheduling.priority_class_name
    return out
