"""Diagnosis: the one problem with a ModelService's pods that its status should name.

Reads what the kubelet and the scheduler wrote on the pods: the fetch step's exit code and
termination message, image pull and crash-loop waiting reasons, and the scheduler's
Unschedulable message (which names the short resource, e.g. `Insufficient nvidia.com/gpu`).
When several pods have problems, the most actionable one wins (see PRIORITY). Text taken
from a container (a termination message, or the log tail the kubelet falls back to) has its
URIs redacted again before it reaches status and Events: the fetch step redacts its own, but
an older image or another step may not.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Mapping

from modelship.fetch.outcomes import FetchOutcome
from modelship.modeluri import redact_text

FETCH_CONTAINER = "fetch-model"
FETCH_DATASET_CONTAINER = "fetch-dataset"
APPLY_VARIANT_CONTAINER = "apply-variant"
FIT_CONFIG_CONTAINER = "fit-config"
BUILD_REFERENCE_CONTAINER = "build-reference"  # spec.monitoring's reference, from the dataset
SERVER_CONTAINER = "server"

IMAGE_PULL_FAILED = "ImagePullFailed"
CRASH_LOOP = "CrashLoop"
CONTAINER_CONFIG_ERROR = "ContainerConfigError"
INSUFFICIENT_GPU = "InsufficientGPU"
UNSCHEDULABLE = "Unschedulable"
FETCH_FAILED = "ModelFetchFailed"  # the fetch step failed with an exit code outside the table
DATASET_FETCH_FAILED = "DatasetFetchFailed"  # the same, for the dataset's fetch step


def dataset_reason(outcome: FetchOutcome) -> str:
    """The reason of a dataset fetch failure: the model's, with Dataset for Model
    (DatasetNotFound, DatasetChecksumMismatch, InvalidDatasetURI, ...)."""
    return outcome.reason.replace("Model", "Dataset")


# What to do about each dataset fetch failure: the message says it, the field named.
DATASET_FIXES = {
    FetchOutcome.INVALID_URI: "fix spec.optimization.dataset.uri",
    FetchOutcome.CHECKSUM_MISMATCH: "the file is not the one spec.optimization.dataset.sha256 names: fix the digest "
                                    "or the file",
    FetchOutcome.ACCESS_DENIED: "the dataset is fetched with spec.model.credentials: give that Secret access to it",
    FetchOutcome.NOT_FOUND: "fix spec.optimization.dataset.uri, or remove spec.optimization.dataset to optimize "
                            "on inputs generated from the model",
    FetchOutcome.UNREACHABLE: "check that the store is reachable from the cluster (a pvc:// claim must exist)",
    FetchOutcome.TOO_LARGE: "the dataset is over the fetch step's size cap (2 GiB): use a smaller calibration set",
    FetchOutcome.REDIRECT_REFUSED: "the store redirects somewhere the fetch step does not follow: use the final URI",
}
# Rebuilding the optimize Job's chosen variant failed, e.g. its sha256 differs on this node.
VARIANT_REBUILD_FAILED = "VariantRebuildFailed"

# Profiling spec.optimization.dataset as monitoring's drift reference failed (a dataset that
# does not fit the model's inputs); the step's last line says why.
REFERENCE_BUILD_FAILED = "ReferenceBuildFailed"

# spec.batching asks to batch a model that cannot (the fit-config step refused it).
BATCHING_NOT_SUPPORTED = "BatchingNotSupported"
CONFIG_FIT_FAILED = "ConfigFitFailed"  # the fit-config step failed otherwise (its log says why)
# Why modelship-server exited on a model that failed to load: the first word of its
# termination message (modelship_server.errors, the ModelLoadError reasons).
MODEL_LOAD_FAILED = "ModelLoadFailed"
WARMUP_FAILED = "WarmupFailed"
# spec.tls / spec.auth: the server refused to start with its Secret's files (docs/security.md).
TLS_CERTIFICATE_INVALID = "TLSCertificateInvalid"
AUTH_CONFIG_INVALID = "AuthConfigInvalid"
SERVER_REASONS = (BATCHING_NOT_SUPPORTED, WARMUP_FAILED, MODEL_LOAD_FAILED, TLS_CERTIFICATE_INVALID,
                  AUTH_CONFIG_INVALID)
_SERVER_WHAT = {
    TLS_CERTIFICATE_INVALID: "the server cannot use the TLS Secret of spec.tls.secretRef",
    AUTH_CONFIG_INVALID: "the server cannot start authentication as spec.auth asks",
}

# The Deployment cannot create pods at all (a missing ServiceAccount, a quota, an admission
# webhook): no pod exists to diagnose, the Deployment's ReplicaFailure condition says why.
POD_CREATION_FAILED = "PodCreationFailed"


# Most actionable first: a wrong URI or checksum will never heal on its own.
_FETCH_ORDER = (FetchOutcome.INVALID_URI, FetchOutcome.CHECKSUM_MISMATCH, FetchOutcome.ACCESS_DENIED,
                FetchOutcome.NOT_FOUND, FetchOutcome.TOO_LARGE, FetchOutcome.REDIRECT_REFUSED,
                FetchOutcome.UNREACHABLE)
PRIORITY = [
    *(outcome.reason for outcome in _FETCH_ORDER),
    FETCH_FAILED,
    *(dataset_reason(outcome) for outcome in _FETCH_ORDER),
    DATASET_FETCH_FAILED,
    VARIANT_REBUILD_FAILED,
    REFERENCE_BUILD_FAILED,
    BATCHING_NOT_SUPPORTED,
    CONFIG_FIT_FAILED,
    WARMUP_FAILED,
    MODEL_LOAD_FAILED,
    TLS_CERTIFICATE_INVALID,
    AUTH_CONFIG_INVALID,
    POD_CREATION_FAILED,
    IMAGE_PULL_FAILED,
    CONTAINER_CONFIG_ERROR,
    CRASH_LOOP,
    INSUFFICIENT_GPU,
    UNSCHEDULABLE,
]

_IMAGE_PULL = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_CONFIG = {"CreateContainerConfigError", "CreateContainerError"}
_INSUFFICIENT = re.compile(r"Insufficient ([A-Za-z0-9./_-]+)")
_MISSING_CLAIM = re.compile(r'persistentvolumeclaim "([^"]+)" not found')


@dataclasses.dataclass(frozen=True)
class Problem:
    reason: str
    message: str
    pod: str


def diagnose(pods: Iterable[Mapping[str, Any]]) -> Problem | None:
    """The most actionable problem among live pods, or None when none has one."""
    found: list[Problem] = []
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("name", "")):
        if pod.get("metadata", {}).get("deletionTimestamp"):
            continue  # on its way out; its successor tells the current story
        problem = diagnose_pod(pod)
        if problem is not None:
            found.append(problem)
    if not found:
        return None
    return min(found, key=lambda p: PRIORITY.index(p.reason))


def replica_failure(deployment: Mapping[str, Any] | None) -> Problem | None:
    """The Deployment's ReplicaFailure condition as a problem, or None."""
    for condition in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            message = " ".join(str(condition.get("message") or condition.get("reason") or "").split())
            hint = ""
            if "serviceaccount" in message.lower():
                hint = ("; create the ServiceAccount (spec.auth.serviceAccounts.reviewerServiceAccount, "
                        "docs/security.md) or fix the name")
            return Problem(POD_CREATION_FAILED, f"the Deployment cannot create pods: {redact_text(message)}{hint}", "")
    return None


def diagnose_pod(pod: Mapping[str, Any]) -> Problem | None:
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status") or {}
    candidates: list[Problem] = []
    for container in status.get("initContainerStatuses") or []:
        problem = _container_problem(container, init=True)
        if problem:
            candidates.append(Problem(problem[0], f"pod {name}: {redact_text(problem[1])}", name))
    for container in status.get("containerStatuses") or []:
        problem = _container_problem(container, init=False)
        if problem:
            candidates.append(Problem(problem[0], f"pod {name}: {redact_text(problem[1])}", name))
    unschedulable = _unschedulable(pod)
    if unschedulable:
        candidates.append(Problem(unschedulable[0], f"pod {name}: {unschedulable[1]}", name))
    if not candidates:
        return None
    return min(candidates, key=lambda p: PRIORITY.index(p.reason))


def _container_problem(container: Mapping[str, Any], *, init: bool) -> tuple[str, str] | None:
    cname = container.get("name", "?")
    state = container.get("state") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or {}
    last = (container.get("lastState") or {}).get("terminated") or {}
    waiting_reason = waiting.get("reason", "")
    image = container.get("image", "")

    if waiting_reason in _IMAGE_PULL:
        detail = waiting.get("message") or waiting_reason
        return IMAGE_PULL_FAILED, f"cannot pull image {image} for container {cname}: {detail}"
    if waiting_reason in _CONFIG:
        return CONTAINER_CONFIG_ERROR, f"container {cname}: {waiting.get('message') or waiting_reason}"

    succeeded = terminated.get("exitCode") == 0
    # A failed init step is retried by the kubelet: between tries (waiting) and during one
    # (running) the last failure is still the story, until a try succeeds.
    failed = terminated if terminated.get("exitCode") not in (None, 0) else (
        last if last.get("exitCode") not in (None, 0) and not succeeded else {}
    )
    if init and cname == FETCH_CONTAINER and failed:
        code = failed.get("exitCode")
        detail = (failed.get("message") or "").strip()
        outcome = FetchOutcome.from_exit_code(code)
        if outcome is not None:
            # the message is "<Reason>: <detail>"; keep the detail, the reason is in the condition
            prefix = f"{outcome.reason}: "
            detail = detail[len(prefix):] if detail.startswith(prefix) else detail
            return outcome.reason, f"model fetch failed: {detail or f'exit code {code}'}"
        return FETCH_FAILED, f"model fetch failed with exit code {code}: {detail or failed.get('reason', '')}".rstrip(": ")
    if init and cname == FETCH_DATASET_CONTAINER and failed:
        return _dataset_fetch_problem(failed)
    if init and cname == APPLY_VARIANT_CONTAINER and failed:
        detail = (failed.get("message") or "").strip().splitlines()
        return (VARIANT_REBUILD_FAILED,
                f"rebuilding the optimized variant failed (exit code {failed.get('exitCode')}): "
                f"{detail[-1] if detail else failed.get('reason', '')}")
    if init and cname == BUILD_REFERENCE_CONTAINER and failed:
        detail = (failed.get("message") or "").strip().splitlines()
        return (REFERENCE_BUILD_FAILED,
                f"profiling spec.optimization.dataset as the monitoring reference failed (exit code "
                f"{failed.get('exitCode')}): {detail[-1] if detail else failed.get('reason', '')}; fix the dataset, or "
                "set spec.monitoring.reference.fromDataset: false to use the first requests")
    if init and cname == FIT_CONFIG_CONTAINER and failed:
        return _reasoned(failed, known=(BATCHING_NOT_SUPPORTED,), fallback=CONFIG_FIT_FAILED,
                         what="fitting config.pbtxt to the model failed")
    if not init and cname == SERVER_CONTAINER and failed:
        line = (failed.get("message") or "").strip()
        first = line.split(":", 1)[0]
        if first in SERVER_REASONS:  # modelship-server's own line (Triton's logs are not)
            return _reasoned(failed, known=SERVER_REASONS, fallback=MODEL_LOAD_FAILED,
                             what=_SERVER_WHAT.get(first, "the server could not load the model"))
    if waiting_reason == "CrashLoopBackOff" or (waiting_reason == "RunContainerError"):
        restarts = container.get("restartCount", 0)
        why = ""
        if last:
            why = f"; last exit code {last.get('exitCode')}"
            if last.get("reason"):
                why += f" ({last['reason']})"
            if last.get("message"):
                why += f": {str(last['message']).strip()[:300]}"
        return CRASH_LOOP, f"container {cname} is crash-looping ({restarts} restarts){why}"
    return None


def _reasoned(failed: Mapping[str, Any], *, known: tuple[str, ...], fallback: str, what: str) -> tuple[str, str]:
    """A termination message `<Reason>: <why>` (fit-config's, modelship-server's) as the
    problem: the reason when it is one we know, the why as the message."""
    line = " ".join((failed.get("message") or "").split())
    reason, _, detail = line.partition(": ")
    if reason not in known:
        reason, detail = fallback, line
    return reason, f"{what} (exit code {failed.get('exitCode')}): {detail or failed.get('reason', '')}"


def _dataset_fetch_problem(failed: Mapping[str, Any]) -> tuple[str, str]:
    """A failed `fetch-dataset` step: the reason, the fetch's own line, and what to do."""
    code = failed.get("exitCode")
    detail = (failed.get("message") or "").strip()
    outcome = FetchOutcome.from_exit_code(code)
    if outcome is None:
        return (DATASET_FETCH_FAILED, f"fetching spec.optimization.dataset failed with exit code {code}: "
                                      f"{detail or failed.get('reason', '')}; read the logs of container "
                                      f"{FETCH_DATASET_CONTAINER}")
    prefix = f"{outcome.reason}: "
    detail = detail[len(prefix):] if detail.startswith(prefix) else detail
    return (dataset_reason(outcome), f"fetching spec.optimization.dataset failed: {detail or f'exit code {code}'}; "
                                     f"{DATASET_FIXES[outcome]}")


def _unschedulable(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            scheduler = condition.get("message", "").strip()
            claim = _MISSING_CLAIM.search(scheduler)
            if claim and _claim_volume(pod, claim.group(1)) == "dataset-source":
                return (
                    dataset_reason(FetchOutcome.UNREACHABLE),
                    f"PersistentVolumeClaim {claim.group(1)} of spec.optimization.dataset.uri does not exist "
                    f"(scheduler: {scheduler})",
                )
            if claim:  # the pvc:// of spec.model.uri names a claim that does not exist
                return (
                    FetchOutcome.UNREACHABLE.reason,
                    f"PersistentVolumeClaim {claim.group(1)} of spec.model.uri does not exist (scheduler: {scheduler})",
                )
            short = sorted(set(_INSUFFICIENT.findall(scheduler)))
            gpus = [r for r in short if r.startswith("nvidia.com/")]
            if gpus:
                wanted = _requested(pod, gpus)
                return (
                    INSUFFICIENT_GPU,
                    f"waiting for GPU capacity: no node has {wanted} free (scheduler: {scheduler})",
                )
            gpu_request = _gpu_request(pod)
            product = ((pod.get("spec") or {}).get("nodeSelector") or {}).get("nvidia.com/gpu.product")
            if gpu_request and "didn't match Pod's node affinity/selector" in scheduler:
                where = f"with nvidia.com/gpu.product={product}" if product else "that the pod's node selector admits"
                return (
                    INSUFFICIENT_GPU,
                    f"waiting for GPU capacity: no node {where} has {gpu_request} free (scheduler: {scheduler})",
                )
            if short:
                return UNSCHEDULABLE, f"insufficient {', '.join(short)} (scheduler: {scheduler})"
            return UNSCHEDULABLE, f"no node fits (scheduler: {scheduler})"
    return None


def _claim_volume(pod: Mapping[str, Any], claim: str) -> str | None:
    """The name of the pod's volume that mounts `claim` (model-source, dataset-source)."""
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if ((volume.get("persistentVolumeClaim") or {}).get("claimName")) == claim:
            return volume.get("name")
    return None


def _gpu_request(pod: Mapping[str, Any]) -> str | None:
    """'1 nvidia.com/gpu' when the pod asks for NVIDIA GPUs or MIG slices, else None."""
    names = sorted({
        resource
        for container in (pod.get("spec") or {}).get("containers") or []
        for resource in ((container.get("resources") or {}).get("limits") or {})
        if resource.startswith("nvidia.com/")
    })
    return _requested(pod, names) if names else None


def _requested(pod: Mapping[str, Any], resources: list[str]) -> str:
    """'1 nvidia.com/gpu' for each short GPU resource, from the pod's own requests."""
    totals: dict[str, int] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        limits = (container.get("resources") or {}).get("limits") or {}
        for resource in resources:
            if resource in limits:
                try:
                    totals[resource] = totals.get(resource, 0) + int(str(limits[resource]))
                except ValueError:
                    pass
    return " and ".join(f"{totals[r]} {r}" if r in totals else r for r in resources)
