"""The names other programs rely on, written once: the API's identity, the labels that find a
ModelService's objects, the serving ports, the metrics the autoscaler reads, and the optimize
summary that the Job hands to the operator.

Both packages import this module: the operator (`modelship`) and the server image's
`modelship_server`, which installs the same wheel without the operator's dependencies. So it
imports the standard library only (`tests/test_layers.py` checks that importing it pulls in
nothing else), and it holds names and shapes, never behaviour. Changing a value here changes
a contract: the CRD, the chart, dashboards and running pods of the other side read it too.
"""

from __future__ import annotations

from typing import Any, TypedDict

# --- the API (crds/modelservices.modelship.dev.yaml) ------------------------------------------

GROUP = "modelship.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelService"
PLURAL = "modelservices"
SHORT_NAME = "msvc"
# The one field manager for everything the operator writes (server-side apply, status, scale).
FIELD_MANAGER = "modelship"

# --- labels that tie objects to their ModelService --------------------------------------------

SERVICE_LABEL = "modelship.dev/modelservice"
# On optimize Jobs and their pods instead of SERVICE_LABEL: those pods must never match the
# Service's or the Deployment's selector, nor count as serving pods in status.
OPTIMIZE_LABEL = "modelship.dev/optimize-for"

# --- ports (Triton's defaults, so tools and habits carry over) --------------------------------

HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002

# --- the serving metrics the autoscaler, the HPA/KEDA queries and dashboards read --------------

# A counter: Prometheus' text format exposes it as `<name>_total`.
REQUESTS_METRIC = "modelship_inference_requests"
REQUEST_DURATION_METRIC = "modelship_request_duration_seconds"  # a histogram, seconds
QUEUE_DURATION_METRIC = "modelship_queue_duration_seconds"  # a histogram, seconds
INFLIGHT_METRIC = "modelship_inflight_requests"  # a gauge
# The `outcome` label of REQUESTS_METRIC, one per way a request can end.
OUTCOMES = ("success", "invalid", "not_found", "unavailable", "shed", "timeout", "error")
# Outcomes that are demand on the replica. `invalid` and `not_found` are the client's
# mistakes, answered before any compute; counting them would let a buggy client scale a service.
DEMAND_OUTCOMES = ("success", "unavailable", "shed", "timeout", "error")
# Requests/s per pod as prometheus-adapter serves it to the HPA (the chart's optional rule).
POD_RATE_METRIC = "modelship_requests_per_second"

# --- the optimize summary: the Job's termination message (at most 4 KiB of JSON) ----------------

SUMMARY_SCHEMA = "modelship.dev/optimize-report/v1"
SUMMARY_LIMIT = 4096  # bytes: Kubernetes' cap on a termination message
# optimized: a variant beat the original; baseline: none did beyond the measured spread;
# accuracy_gate_failed: every variant that was built failed the gate.
OPTIMIZE_OUTCOMES = ("optimized", "baseline", "accuracy_gate_failed")


class SummarySession(TypedDict, total=False):
    intra_op_threads: int | None
    graph_optimization_level: str | None


class SummaryTensorRT(TypedDict, total=False):
    """The TensorRT settings the chosen variant was gated and timed with: the serving pods run
    the original file on TensorRT with the same (config.pbtxt's tensorrt accelerator)."""

    precision: str  # one of TENSORRT_PRECISIONS
    profile: dict[str, str]  # ORT's trt_profile_{min,opt,max}_shapes -> "input:1x3x224x224,..."; {}: none


# --- GPU: TensorRT is served only where gated (docs/gpu.md) -------------------------------------

TENSORRT_PRECISIONS = ("fp32", "fp16")
# Where the serving pods keep TensorRT engines (an emptyDir volume of that name), so a container
# restart reuses them instead of building again; the config's accelerator names the same path.
TENSORRT_CACHE_VOLUME = "tensorrt-cache"
TENSORRT_CACHE_PATH = "/var/cache/modelship/tensorrt"


class OptimizeSummary(TypedDict, total=False):
    """The summary's keys and their types. The optimizer writes it, the operator reads it;
    unknown keys are ignored on reading, so new keys are added here first."""

    schema: str  # SUMMARY_SCHEMA
    outcome: str  # one of OPTIMIZE_OUTCOMES
    chosen: str  # "original" or a variant's name
    sha256: str | None  # of the chosen file
    speedup: float | None
    spread: float
    apply_args: list[str]  # `modelship optimize apply` flags that rebuild the chosen file
    session: SummarySession
    # requests_per_second, percentile, latency_ms, slo_ms, max_batch_size,
    # max_queue_delay_microseconds, concurrency, dynamic_batching, ...
    capacity: dict[str, Any] | None
    gate: str  # the accuracy gate as a sentence: "cosine mean>=0.99 worst>=0.98"
    inputs: str  # what the gate judged on: "dataset <path>" or "generated (...)"
    candidates: list[list[Any]]  # [name, status, speedup, gate mean, reason]
    truncated: bool  # candidates were dropped to fit SUMMARY_LIMIT
    tensorrt: SummaryTensorRT | None  # set only when the chosen variant is a TensorRT one (it passed the gate)

# --- declared inputs (spec.model.inputs) ------------------------------------------------------

# The config.pbtxt parameter that carries spec.model.inputs (as JSON) to the serving pods,
# where modelship-server warms up on it and the triton-warmup step writes model_warmup from it.
INPUTS_CONFIG_PARAMETER = "modelship_inputs"
# The first words of the optimize Job's one-line error when generated inputs would be
# meaningless (a dynamic dim beyond the batch axis, a scalar, strings, nothing declared):
# the operator gives that line a reason of its own in `Optimized` (InputsUndeclared).
INPUTS_UNDECLARED_PREFIX = "inputs need declaring:"

# --- monitoring (spec.monitoring): what the server measures and the operator reads --------------

# Gauges per pod, scraped from the metrics port like the autoscaler's signals. The operator takes,
# over the pods whose window is full, the largest drift score per tensor and the label-weighted
# quality; alerts and dashboards read the same series.
DRIFT_SCORE_METRIC = "modelship_drift_score"  # labels model, tensor, test ("psi" or "ks")
DRIFT_WINDOW_METRIC = "modelship_drift_window_samples"  # labels model, tensor: samples in the current window
DRIFT_REFERENCE_METRIC = "modelship_drift_reference_samples"  # labels model: 0 while no reference is loaded or frozen
QUALITY_METRIC = "modelship_quality"  # labels model, metric (one of QUALITY_METRICS): the current window's value
QUALITY_LABELS_METRIC = "modelship_quality_window_labels"  # labels model: labels joined in the current window
# Counters (`_total` on the wire).
FEEDBACK_METRIC = "modelship_feedback"  # labels model, outcome (one of FEEDBACK_OUTCOMES)
CAPTURE_METRIC = "modelship_capture_records"  # labels model, outcome ("written" or "dropped")
FEEDBACK_OUTCOMES = ("joined", "unknown_id", "expired", "invalid")
# Classifiers (the predicted class is the argmax of the output's last axis, or an integer output)
# and regression. spec.monitoring.quality.metric names one; the server exports all of its kind.
QUALITY_METRICS = (
    "accuracy", "precision_micro", "recall_micro", "f1_micro", "precision_macro", "recall_macro", "f1_macro",
    "mae", "rmse",
)
# Lower is better for these; higher for the others.
QUALITY_ERROR_METRICS = ("mae", "rmse")


# --- canary output agreement (docs/rollout.md): the canary's server mirrors a sample of its requests ---
# to stable (--mirror-to) and counts how its answers compare. A counter (`_total` on the wire),
# labels model and outcome; the canary analysis reads agreed / (agreed + disagreed).
MIRROR_METRIC = "modelship_mirror_requests"
# skipped: the request reached another mirroring server (a canary pod), which refuses it.
MIRROR_OUTCOMES = ("agreed", "disagreed", "failed", "dropped", "skipped")
