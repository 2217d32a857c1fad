"""The optimize Job: `modelship optimize` on the service's own hardware, before it rolls out.

Named `<msvc>-optimize-<digest>`, where the digest covers everything the result depends on:
the model's sha256, the dataset's sha256 (when spec.optimization.dataset is set), the
declared inputs (spec.model.inputs, passed as `--inputs`), the gate,
the budget, the SLO, the batching bounds, the resources (GPU product, count and MIG profile
included), the scheduling and the server image. A spec change that matters makes a new Job; a
re-run, a restart or a change that does not matter (replicas, rollout settings, the model's or
the dataset's URI for the same digest) finds the existing one. The failure policy is not in
the digest: it decides what happens after the Job, not what the Job finds.

The pod is the serving pod's twin where it counts: the same `fetch-model` step, resources,
scheduling and security (`render.pod`). With a dataset, a `fetch-dataset` step (the same fetch
code) places it at `pod.DATASET_PATH` and the optimizer reads it there (`--dataset`); a
calibrated variant's apply_args then name that path, and serving pods fetch it to the same.
The summary of the run (contract C1) comes back as the `optimize` container's termination
message, which the operator reads; so no TTL is set: the operator deletes a Job itself once a
newer one of the same ModelService has finished.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from modelship.api.v1alpha1 import ModelService
from modelship.fetch import outcomes as fetch_outcomes
from modelship.kube.objects import owner_reference
from modelship.render import names, pod

CONTAINER = "optimize"
BACKOFF_LIMIT = 1  # one retry for a crash or an eviction; bad input fails at once (below)
DEADLINE_MARGIN_SECONDS = 300  # the download, and a build or sweep level that overruns the budget
CAPACITY_MAX_BATCH_SIZE = 32  # the optimizer's own default bound, passed explicitly
EXIT_BAD_INPUT = 2  # `modelship optimize`: corrupt model, digest mismatch, dataset that does not fit
# The gate's metric names on the command line.
METRIC_FLAGS = {"cosine": "cosine", "top1Agreement": "top1_agreement", "maxAbs": "max_abs", "maxRel": "max_rel"}
# Fetch failures no retry can fix.
PERMANENT_FETCH_FAILURES = sorted(o.exit_code for o in fetch_outcomes.PERMANENT)
DIGEST_LENGTH = 10


def optimize_args(msvc: ModelService) -> list[str]:
    """The flags of `modelship optimize` (contracts C1 and C3), all explicit so a default
    that moves in the optimizer does not silently change what a Job name stands for."""
    spec = msvc.spec
    model_dir = f"{pod.MODEL_REPOSITORY}/{spec.model.name}"
    mean, worst = spec.optimization.accuracy.bounds()
    args = [
        f"--model={pod.model_path(msvc)}",
        f"--output={model_dir}/optimized",
        f"--sha256={spec.model.sha256.lower()}",
        f"--metric={METRIC_FLAGS[spec.optimization.accuracy.metric]}",
        f"--threshold-mean={mean:g}",
        f"--threshold-min={worst:g}",
        f"--budget-seconds={spec.optimization.budget_seconds}",
        f"--max-batch-size={capacity_max_batch_size(msvc)}",
    ]
    if spec.slo is not None:
        args += [f"--slo-ms={spec.slo.latency_milliseconds}", f"--slo-percentile={spec.slo.percentile}"]
    if spec.optimization.dataset is not None:
        args.append(f"--dataset={pod.DATASET_PATH}")
    inputs = spec.model.inputs_json()
    if inputs is not None:  # spec.model.inputs: the shapes and values every step generates from
        args.append(f"--inputs={inputs}")
    args.append(f"--termination-log={pod.TERMINATION_LOG}")
    return args


def capacity_max_batch_size(msvc: ModelService) -> int:
    """The bound of the capacity search: the user's maxBatchSize when set (serving will use
    it), 1 with batching off, else the optimizer's default."""
    batching = msvc.spec.batching
    if not batching.enabled:
        return 1
    return batching.max_batch_size if batching.max_batch_size is not None else CAPACITY_MAX_BATCH_SIZE


def inputs(msvc: ModelService) -> dict[str, Any]:
    """Everything the Job's result depends on (and nothing else: see the module docstring).
    The dataset's key is there only when one is set, so a spec without one keeps the name its
    Job had before datasets existed (an operator upgrade re-runs no Job)."""
    out: dict[str, Any] = {
        "modelservice": msvc.metadata.name,
        "model": msvc.spec.model.sha256.lower(),
        "args": optimize_args(msvc),
        "image": msvc.spec.images.server,
        "resources": pod.resources(msvc),
        "scheduling": pod.scheduling(msvc),
    }
    if msvc.spec.optimization.dataset is not None:
        out["dataset"] = msvc.spec.optimization.dataset.sha256.lower()
    return out


def digest(msvc: ModelService) -> str:
    canonical = json.dumps(inputs(msvc), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:DIGEST_LENGTH]


def job_name(msvc: ModelService) -> str:
    return names.optimize_job(msvc.metadata.name, digest(msvc))


def active_deadline_seconds(msvc: ModelService) -> int:
    """The optimizer's budget bounds its whole run (search, timing, capacity sweep); the
    download comes before it, and the last step started may overrun a little."""
    return msvc.spec.optimization.budget_seconds + DEADLINE_MARGIN_SECONDS


def failure_rules(msvc: ModelService) -> list[dict[str, Any]]:
    """Fail the Job at once on what no retry can fix: the optimizer's bad input (a corrupt
    model, a dataset that does not fit) and a fetch step's permanent failure, the dataset's
    included; its rule is there only with a dataset (a rule must name a container of the pod)."""
    fetch_steps = [pod.FETCH_MODEL] + ([pod.FETCH_DATASET] if msvc.spec.optimization.dataset is not None else [])
    return [
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                              "values": [EXIT_BAD_INPUT]}},
        *({"action": "FailJob", "onExitCodes": {"containerName": step, "operator": "In",
                                                "values": PERMANENT_FETCH_FAILURES}} for step in fetch_steps),
        # preemption or a drain is not the optimizer's fault: retry without counting it
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    ]


def render_optimize_job(msvc: ModelService) -> dict[str, Any]:
    """The Job for `msvc`'s current spec, with labels and (when the ModelService has a uid)
    a controller ownerReference, so deleting the ModelService deletes its Jobs."""
    spec = msvc.spec
    labels = names.optimize_labels(msvc.metadata.name)
    dataset = spec.optimization.dataset
    optimize: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.images.server,
        "imagePullPolicy": spec.images.pull_policy,
        "command": ["modelship", "optimize"],
        "args": optimize_args(msvc),
        "resources": pod.resources(msvc),
        "securityContext": pod.container_security(read_only_root=True),
        "terminationMessagePath": pod.TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "model-repository", "mountPath": pod.MODEL_REPOSITORY},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    init = [pod.fetch_container(msvc, uri=spec.model.uri, sha256=spec.model.sha256.lower(), config_copy=None)]
    volumes = pod.base_volumes(msvc)
    if dataset is not None:
        init.append(pod.fetch_dataset_container(msvc, uri=dataset.uri, sha256=dataset.sha256.lower()))
        volumes += pod.dataset_volumes(msvc, dataset.uri)
        optimize["volumeMounts"].append(pod.dataset_mount())
    pod_spec = pod.base_pod_spec(msvc)
    pod_spec.update({
        "restartPolicy": "Never",
        "initContainers": init,
        "containers": [optimize],
        "volumes": volumes,
    })
    metadata: dict[str, Any] = {"name": job_name(msvc), "namespace": msvc.metadata.namespace, "labels": labels}
    if msvc.metadata.uid:
        metadata["ownerReferences"] = [owner_reference(msvc.metadata.name, msvc.metadata.uid)]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "activeDeadlineSeconds": active_deadline_seconds(msvc),
            "podFailurePolicy": {"rules": failure_rules(msvc)},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
