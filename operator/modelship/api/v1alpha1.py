"""Pydantic models of `modelship.dev/v1alpha1` ModelService, mirroring the CRD.

The CRD validates in the API server; these models validate the same rules again for
`modelship render -f` (no cluster) and give the operator typed access. Field names are
snake_case in Python and camelCase on the wire (aliases). Unknown fields are errors: the API
server would prune them silently, and a typo a user never hears about is a bug.
`tests/operator/test_api_schema.py` walks both schemas and fails when they drift.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from modelship import modeluri

_CPU = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(m)?$"
_MEMORY = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[kMGTPE])?$"
_INT_OR_PERCENT = r"^([0-9]+%?)$"
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_MIG = re.compile(r"^[1-7]g\.[0-9]+gb(\+me)?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

CpuQuantity = int | Annotated[str, StringConstraints(pattern=_CPU)]
MemoryQuantity = int | Annotated[str, StringConstraints(pattern=_MEMORY)]
IntOrPercent = int | Annotated[str, StringConstraints(pattern=_INT_OR_PERCENT)]
Labels = Annotated[dict[str, str], Field(max_length=16)]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    def wire(self) -> dict[str, Any]:
        """The camelCase dict the API server would hold (unset optionals left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SecretRef(_Model):
    secret_name: Annotated[str, StringConstraints(min_length=1, max_length=253)]


def _check_uri(value: str, field: str) -> str:
    modeluri.parse(value, field=field)  # raises InvalidModelURI (a ValueError) with the message
    return value


def _check_sha256(value: str, field: str) -> str:
    if not _SHA256.match(value):
        raise ValueError(
            f"{field} must be 64 hexadecimal characters (sha256sum output); "
            f"got {len(value)} characters"
        )
    return value


Dims = Annotated[list[Annotated[int, Field(ge=1, le=1_000_000)]], Field(max_length=16)]


class ModelInput(_Model):
    """What one model input typically looks like, for every step that runs the model on inputs
    nobody sent (the optimize Job's search, gate and capacity sweep, apply-variant, warm-up).
    `shape` is one request's whole shape as the model's input has it, batch axis included (as
    1): `[1, 3, 48, 160]`, `[2, 1, 128]` for a state batched on axis 1, `[]` for a scalar
    (default: minShape, else maxShape). minShape/maxShape bound it (the ranges of a TensorRT optimization profile); `value` fills
    the input with a constant (a sample rate), `range` [low, high) bounds generated values (token ids).
    The server checks every rule against the model itself (modelship_server/feeds.py)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    shape: Dims | None = None
    min_shape: Dims | None = None
    max_shape: Dims | None = None
    value: float | None = None
    range: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelInput:
        where = f"spec.model.inputs[{self.name}]"
        if self.value is not None and self.range is not None:
            raise ValueError(f"{where}: value ({self.value:g}) and range ({self.range}) exclude each other; give one")
        if all(v is None for v in (self.shape, self.min_shape, self.max_shape, self.value, self.range)):
            raise ValueError(f"{where} declares nothing; give at least one of shape, minShape/maxShape, value, range")
        if self.range is not None and self.range[0] >= self.range[1]:
            raise ValueError(f"{where}.range must be [low, high) with low < high; got {self.range}")
        for key, bound, below in (("minShape", self.min_shape, True), ("maxShape", self.max_shape, False)):
            if bound is None or self.shape is None:
                continue
            if len(bound) != len(self.shape):
                raise ValueError(f"{where}.{key} {bound} has {len(bound)} dimensions but shape {self.shape} "
                                 f"has {len(self.shape)}")
            if not all((b <= s) if below else (b >= s) for b, s in zip(bound, self.shape)):
                raise ValueError(f"{where}.{key} {bound} must be {'<=' if below else '>='} shape {self.shape} "
                                 "in every dimension")
        if self.min_shape is not None and self.max_shape is not None and (
                len(self.min_shape) != len(self.max_shape)
                or any(lo > hi for lo, hi in zip(self.min_shape, self.max_shape))):
            raise ValueError(f"{where}.minShape {self.min_shape} must have the rank of maxShape and be <= maxShape "
                             f"{self.max_shape} in every dimension")
        return self


class ModelSource(_Model):
    uri: Annotated[str, StringConstraints(max_length=2048)]
    sha256: Annotated[str, StringConstraints(max_length=64)]
    name: Annotated[str, StringConstraints(max_length=63, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")] = "model"
    format: Literal["onnx"] = "onnx"
    credentials: SecretRef | None = None
    inputs: Annotated[list[ModelInput], Field(max_length=64)] | None = None

    @pydantic.field_validator("inputs")
    @classmethod
    def _unique_inputs(cls, value: list[ModelInput] | None) -> list[ModelInput] | None:
        names = [i.name for i in value or []]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"spec.model.inputs declares input(s) {twice} more than once")
        return value

    def inputs_json(self) -> str | None:
        """spec.model.inputs as the compact JSON every step receives (the optimize Job's
        --inputs, config.pbtxt's modelship_inputs), or None when nothing is declared."""
        if not self.inputs:
            return None
        import json

        def plain(value: Any) -> Any:  # 16000.0 -> 16000: what the user wrote, and exact for int64
            if isinstance(value, list):
                return [plain(v) for v in value]
            return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53 else value

        entries = [{k: plain(v) for k, v in i.model_dump(by_alias=True, exclude_none=True, mode="json").items()}
                   for i in self.inputs]
        return json.dumps(entries, separators=(",", ":"), sort_keys=True)

    @pydantic.field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return _check_uri(value, "spec.model.uri")

    @pydantic.field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str) -> str:
        return _check_sha256(value, "spec.model.sha256")


class PullSecret(_Model):
    name: Annotated[str, StringConstraints(min_length=1, max_length=253)]


class Images(_Model):
    server: Annotated[str, StringConstraints(max_length=512)] = "ghcr.io/modelship/modelship-server:0.1.0"
    triton: Annotated[str, StringConstraints(max_length=512)] = "nvcr.io/nvidia/tritonserver:24.08-py3"
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    pull_secrets: Annotated[list[PullSecret], Field(max_length=8)] | None = None


class GPU(_Model):
    count: Annotated[int, Field(ge=0, le=16)] = 0
    product: Annotated[
        str, StringConstraints(max_length=128, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    ] | None = None
    mig_profile: Annotated[str, StringConstraints(max_length=32)] | None = None

    @pydantic.field_validator("mig_profile")
    @classmethod
    def _mig(cls, value: str | None) -> str | None:
        if value is not None and not _MIG.match(value):
            raise ValueError(f"spec.resources.gpu.migProfile must look like 1g.10gb or 3g.40gb; got {value}")
        return value

    @model_validator(mode="after")
    def _needs_count(self) -> GPU:
        if self.product is not None and self.count < 1:
            raise ValueError("spec.resources.gpu.product needs spec.resources.gpu.count of at least 1")
        if self.mig_profile is not None and self.count < 1:
            raise ValueError(
                "spec.resources.gpu.migProfile needs spec.resources.gpu.count of at least 1 "
                "(the number of MIG slices)"
            )
        return self

    @property
    def resource_name(self) -> str | None:
        """The extended resource the pods request, or None on CPU."""
        if self.count < 1:
            return None
        return f"nvidia.com/mig-{self.mig_profile}" if self.mig_profile else "nvidia.com/gpu"


class Resources(_Model):
    cpu: CpuQuantity = "1"
    memory: MemoryQuantity = "2Gi"
    gpu: GPU = Field(default_factory=GPU)


class Toleration(_Model):
    key: Annotated[str, StringConstraints(max_length=317)] | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: Annotated[str, StringConstraints(max_length=63)] | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class Scheduling(_Model):
    node_selector: Annotated[dict[str, Annotated[str, StringConstraints(max_length=63)]], Field(max_length=32)] | None = None
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = None
    affinity: dict[str, Any] | None = None
    priority_class_name: Annotated[str, StringConstraints(max_length=253)] | None = None


class Batching(_Model):
    """Server-side dynamic batching. maxBatchSize and maxQueueDelayMicroseconds left unset mean
    "let the optimize Job decide" (its measured capacity), else DEFAULT_MAX_BATCH_SIZE and
    DEFAULT_MAX_QUEUE_DELAY_MICROSECONDS; a value set here always wins over a measured one."""

    enabled: bool = True
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] | None = None
    max_queue_delay_microseconds: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    preferred_batch_sizes: Annotated[list[Annotated[int, Field(ge=1, le=4096)]], Field(max_length=16)] | None = None

    @model_validator(mode="after")
    def _preferred_fit(self) -> Batching:
        if self.preferred_batch_sizes and self.max_batch_size is not None and any(
                s > self.max_batch_size for s in self.preferred_batch_sizes):
            raise ValueError(
                "every spec.batching.preferredBatchSizes entry must be at most spec.batching.maxBatchSize "
                f"({self.max_batch_size}); got {self.preferred_batch_sizes}"
            )
        return self


DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_QUEUE_DELAY_MICROSECONDS = 1000

AccuracyMetric = Literal["cosine", "top1Agreement", "maxAbs", "maxRel"]
# Similarity metrics pass at or above their bounds; error metrics at or below.
SIMILARITY_METRICS = ("cosine", "top1Agreement")
# Bounds when the spec leaves them out: (mean, worst input).
DEFAULT_ACCURACY_BOUNDS = {"cosine": (0.99, 0.98), "top1Agreement": (0.99, 0.98),
                           "maxAbs": (0.01, 0.05), "maxRel": (0.01, 0.05)}


class Accuracy(_Model):
    """The accuracy gate every variant must pass against the original model's outputs."""

    metric: AccuracyMetric = "cosine"
    mean: Annotated[float, Field(ge=0)] | None = None
    worst: Annotated[float, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Accuracy:
        similarity = self.metric in SIMILARITY_METRICS
        for field, value in (("mean", self.mean), ("worst", self.worst)):
            if similarity and value is not None and value > 1:
                raise ValueError(
                    f"spec.optimization.accuracy.{field} is a similarity bound for metric {self.metric} "
                    f"and must be between 0 and 1; got {value:g}"
                )
        mean, worst = self.bounds()
        if (similarity and worst > mean) or (not similarity and worst < mean):
            relation = "at most" if similarity else "at least"
            raise ValueError(
                f"spec.optimization.accuracy.worst ({worst:g}) must be {relation} spec.optimization.accuracy.mean "
                f"({mean:g}) for metric {self.metric}: the worst input cannot be held to a stricter bound than the mean"
            )
        return self

    def bounds(self) -> tuple[float, float]:
        """(mean, worst) with the metric's defaults filled in."""
        default_mean, default_worst = DEFAULT_ACCURACY_BOUNDS[self.metric]
        return (self.mean if self.mean is not None else default_mean,
                self.worst if self.worst is not None else default_worst)


class Dataset(_Model):
    """The optimize Job's calibration and validation inputs: an .npz with one array per model
    input, batch-first or stacked complete feeds (the first half calibrates, the second half
    gates; docs/optimize.md). Same
    schemes and checks as spec.model, and fetched with spec.model.credentials: one Secret per
    service, since model and data usually live in the same store."""

    uri: Annotated[str, StringConstraints(max_length=2048)]
    sha256: Annotated[str, StringConstraints(max_length=64)]

    @pydantic.field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return _check_uri(value, "spec.optimization.dataset.uri")

    @pydantic.field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str) -> str:
        return _check_sha256(value, "spec.optimization.dataset.sha256")


class Optimization(_Model):
    enabled: bool = False
    accuracy: Accuracy = Field(default_factory=Accuracy)
    dataset: Dataset | None = None  # unset: inputs generated from the model's shapes
    budget_seconds: Annotated[int, Field(ge=60, le=86_400)] = 600
    failure_policy: Literal["FallbackToBaseline", "FailClosed"] = "FallbackToBaseline"


class OnnxRuntimeSettings(_Model):
    intra_op_threads: Annotated[int, Field(ge=0, le=256)] | None = None
    inter_op_threads: Annotated[int, Field(ge=0, le=256)] | None = None
    # GPU (docs/gpu.md): unset, TensorRT runs only where the optimize Job's TensorRT variant
    # passed the gate; true forces it (status says ungated); false keeps it off.
    tensorrt: bool | None = None
    tensorrt_precision: Literal["fp32", "fp16"] | None = None  # forced without a gated variant: fp16


class TritonSettings(_Model):
    instance_count: Annotated[int, Field(ge=1, le=16)] = 1
    tensorrt: bool | None = None
    tensorrt_precision: Literal["fp32", "fp16"] | None = None  # unset: fp16


class SLO(_Model):
    latency_milliseconds: Annotated[int, Field(ge=1, le=600_000)]
    percentile: Literal["p50", "p90", "p95", "p99"] = "p95"


class PrometheusSettings(_Model):
    """Where the autoscaler reads the pods' metrics instead of scraping them itself."""

    url: Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://[^\s]+$")]
    pod_label: Annotated[str, StringConstraints(max_length=128, pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")] = "pod"
    namespace_label: Annotated[str, StringConstraints(max_length=128, pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")] = "namespace"
    rate_window_seconds: Annotated[int, Field(ge=5, le=3600)] = 30


class Autoscaling(_Model):
    enabled: bool = False
    engine: Literal["builtin", "hpa", "keda"] = "builtin"
    min_replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = 4
    # The builtin engine's knobs (docs/autoscaling.md); hpa and keda read the scale-down
    # window and the target utilization too.
    interval_seconds: Annotated[int, Field(ge=1, le=300)] = 2
    scale_down_stabilization_seconds: Annotated[int, Field(ge=0, le=3600)] = 60
    panic_threshold: Annotated[float, Field(ge=1.1, le=10)] = 2.0
    target_utilization: Annotated[float, Field(ge=0.1, le=1)] = 0.8
    capacity_per_replica: Annotated[float, Field(ge=0.001, le=1_000_000)] | None = None
    prometheus: PrometheusSettings | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"spec.autoscaling.minReplicas ({self.min_replicas}) must not exceed "
                f"spec.autoscaling.maxReplicas ({self.max_replicas})"
            )
        if self.enabled and self.engine == "keda" and self.prometheus is None:
            raise ValueError("spec.autoscaling.prometheus.url is required for engine keda "
                             "(its prometheus trigger queries that server)")
        return self


class CanaryStep(_Model):
    """One step of a canary: the share of traffic the canary takes (by replica ratio) and the
    least time it spends there before the next step, if its analysis passes."""

    weight: Annotated[int, Field(ge=1, le=99)]
    pause_seconds: Annotated[int, Field(ge=1, le=86_400)] = 60


class CanaryAnalysis(_Model):
    """When a canary passes or fails, canary against stable over the same window (docs/rollout.md).
    Latency is read at spec.slo's percentile (p95 without an SLO)."""

    interval_seconds: Annotated[int, Field(ge=1, le=300)] = 10
    min_requests: Annotated[int, Field(ge=1, le=1_000_000)] = 50
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    max_shed_rate: Annotated[float, Field(ge=0, le=1)] = 0.05
    max_latency_ratio: Annotated[float, Field(ge=1, le=100)] = 1.5
    latency_slack_milliseconds: Annotated[int, Field(ge=0, le=60_000)] = 10
    # Output agreement (off unless set): the canary's server mirrors `mirror_sample_rate` of its
    # requests to the Service and the step fails when fewer of its answers than this agree.
    min_output_agreement: Annotated[float, Field(ge=0, le=1)] | None = None
    mirror_sample_rate: Annotated[float, Field(ge=0.001, le=1)] = 0.1
    # Where stable answers; unset: the Service (http://<name>.<namespace>.svc:8000).
    mirror_to: Annotated[str, StringConstraints(max_length=512, pattern=r"^https?://[^\s/]+(/.*)?$")] | None = None


def _default_steps() -> list[CanaryStep]:
    return [CanaryStep(weight=25, pause_seconds=60), CanaryStep(weight=50, pause_seconds=60)]


_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class GatewayRef(_Model):
    """The Gateway (Gateway API) the canary's HTTPRoute attaches to: without a parent a route
    routes nothing, so naming one is what turns weighted routing on (docs/rollout.md). The
    checks and their messages are the CRD's CEL rules."""

    name: Annotated[str, StringConstraints(max_length=253)]
    namespace: Annotated[str, StringConstraints(max_length=63)] | None = None
    section_name: Annotated[str, StringConstraints(max_length=253)] | None = None

    @pydantic.field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _DNS1123_SUBDOMAIN.match(value):
            raise ValueError("spec.rollout.canary.gatewayRef.name must be a Gateway name (a DNS-1123 subdomain: "
                             f"lowercase letters, digits, - and .), got {value}")
        return value

    @pydantic.field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and not _DNS1123_LABEL.match(value):
            raise ValueError("spec.rollout.canary.gatewayRef.namespace must be a namespace name (a DNS-1123 label: "
                             f"lowercase letters, digits and -), got {value}")
        return value

    @pydantic.field_validator("section_name")
    @classmethod
    def _section_name(cls, value: str | None) -> str | None:
        if value is not None and not _DNS1123_SUBDOMAIN.match(value):
            raise ValueError("spec.rollout.canary.gatewayRef.sectionName must be a listener name (a DNS-1123 "
                             f"subdomain), got {value}")
        return value


class Canary(_Model):
    steps: Annotated[list[CanaryStep], Field(min_length=1, max_length=20)] = Field(default_factory=_default_steps)
    analysis: CanaryAnalysis = Field(default_factory=CanaryAnalysis)
    # Set: an HTTPRoute on this Gateway splits the traffic by the step's exact weight, where the
    # Gateway API is installed; unset (or not installed): the replica ratio alone.
    gateway_ref: GatewayRef | None = None


class Rollout(_Model):
    max_surge: IntOrPercent = "25%"
    pre_stop_delay_seconds: Annotated[int, Field(ge=0, le=300)] = 10
    termination_grace_period_seconds: Annotated[int, Field(ge=1, le=3600)] = 45
    progress_deadline_seconds: Annotated[int, Field(ge=30, le=7200)] = 600
    strategy: Literal["RollingUpdate", "Canary"] = "RollingUpdate"
    canary: Canary | None = None  # read when strategy is Canary; unset: the defaults above

    @property
    def canary_settings(self) -> Canary:
        return self.canary or Canary()

    @model_validator(mode="after")
    def _grace(self) -> Rollout:
        if self.termination_grace_period_seconds <= self.pre_stop_delay_seconds:
            raise ValueError(
                f"spec.rollout.terminationGracePeriodSeconds ({self.termination_grace_period_seconds}) "
                f"must exceed spec.rollout.preStopDelaySeconds ({self.pre_stop_delay_seconds}) "
                "so in-flight requests can finish"
            )
        return self


class DisruptionBudget(_Model):
    max_unavailable: IntOrPercent = 1


class LabelSelector(_Model):
    match_labels: Labels | None = None


class Peer(_Model):
    namespace_selector: LabelSelector | None = None
    pod_selector: LabelSelector | None = None


class NetworkPolicySettings(_Model):
    enabled: bool = False
    allow_from: Annotated[list[Peer], Field(max_length=16)] | None = None
    allow_metrics_from: Annotated[list[Peer], Field(max_length=16)] | None = None


# -- authentication and TLS of the serving endpoints (docs/security.md) --

_ACCOUNT = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$"


class SecretName(_Model):
    name: Annotated[str, StringConstraints(min_length=1, max_length=253)]


class ServiceAccountAuth(_Model):
    """Callers' ServiceAccount tokens, checked by the server with a TokenReview."""

    audiences: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=253)]],
                         Field(max_length=8)] | None = None
    allowed: Annotated[list[Annotated[str, StringConstraints(pattern=_ACCOUNT, max_length=317)]],
                       Field(max_length=64)] | None = None
    subject_access_review: bool = False
    reviewer_service_account: Annotated[str, StringConstraints(min_length=1, max_length=253)] = "modelship-serving"


class ApiKeyAuth(_Model):
    secret_ref: SecretName


class AuthSettings(_Model):
    enabled: bool = False
    service_accounts: ServiceAccountAuth | None = None
    api_keys: ApiKeyAuth | None = None
    cache_ttl_seconds: Annotated[int, Field(ge=0, le=3600)] = 10

    @model_validator(mode="after")
    def _source(self) -> AuthSettings:
        if self.enabled and self.service_accounts is None and self.api_keys is None:
            raise ValueError("spec.auth.enabled needs spec.auth.serviceAccounts or spec.auth.apiKeys "
                             "(who may call: ServiceAccount tokens, API keys, or both)")
        return self


class TlsSettings(_Model):
    secret_ref: SecretName  # a kubernetes.io/tls Secret (cert-manager's Certificate writes one)
    client_auth: bool = False  # mTLS: clients need a certificate signed by the Secret's ca.crt


# --- monitoring (spec.monitoring; docs/monitoring.md) ---------------------------------------------

QualityMetric = Literal["accuracy", "precision_micro", "recall_micro", "f1_micro", "precision_macro", "recall_macro",
                        "f1_macro", "mae", "rmse"]  # contracts.QUALITY_METRICS (a test keeps them equal)
_CAPTURE_SINK = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?|pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/[^\s]*)?|emptyDir)$"


class MonitoringDrift(_Model):
    """When an input or output counts as drifted: its population stability index above
    `psiThreshold` and, where the server also runs the two-sample (Kolmogorov-Smirnov) test,
    that test's p-value below `pValue`; both must agree, which keeps false alarms rare."""

    psi_threshold: Annotated[float, Field(ge=0.01, le=10)] = 0.2
    p_value: Annotated[float, Field(ge=1e-12, le=0.5)] = 0.01
    top: Annotated[int, Field(ge=1, le=20)] = 3  # how many tensors status.monitoring.drift lists


class MonitoringQuality(_Model):
    """Online quality from the labels clients send back (POST /v2/models/{m}/feedback).
    `minimum` bounds the metrics where higher is better, `maximum` the error metrics (mae, rmse);
    a window with fewer than `minLabels` labels is not judged."""

    metric: QualityMetric = "accuracy"
    minimum: Annotated[float, Field(ge=0, le=1)] | None = None
    maximum: Annotated[float, Field(ge=0)] | None = None
    min_labels: Annotated[int, Field(ge=1, le=1_000_000)] = 100

    @model_validator(mode="after")
    def _bound(self) -> MonitoringQuality:
        error_metric = self.metric in ("mae", "rmse")
        want, other = ("maximum", "minimum") if error_metric else ("minimum", "maximum")
        if getattr(self, other) is not None:
            raise ValueError(f"spec.monitoring.quality.{other} does not apply to metric {self.metric} "
                             f"({'lower' if error_metric else 'higher'} is better); set {want} instead")
        if getattr(self, want) is None:
            raise ValueError(f"spec.monitoring.quality.{want} is required for metric {self.metric}")
        return self


class MonitoringCapture(_Model):
    """Sampled request/response records, written in batches to `sink`: `s3://bucket/prefix`
    (with `credentials`, else spec.model.credentials), `pvc://claim/path`, or `emptyDir` (the
    pod's own scratch volume, lost with the pod: for trying it out)."""

    sink: Annotated[str, StringConstraints(max_length=2048, pattern=_CAPTURE_SINK)]
    sample_rate: Annotated[float, Field(ge=0.0001, le=1)] = 0.1
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 100
    credentials: SecretRef | None = None

    @pydantic.field_validator("sink")
    @classmethod
    def _no_parent(cls, value: str) -> str:
        if value.startswith("pvc://") and ".." in value.split("/"):
            raise ValueError(f"spec.monitoring.capture.sink must stay inside its claim (no '..'); got {value}")
        return value


class MonitoringReference(_Model):
    """What drift is measured against. `fromDataset` (default: true when
    spec.optimization.dataset is set) profiles that dataset in an init step of each pod; else
    each pod freezes its first `firstRequests` sampled requests after it starts."""

    from_dataset: bool | None = None
    first_requests: Annotated[int, Field(ge=100, le=1_000_000)] = 1000


class Monitoring(_Model):
    """Profiles of the inputs and outputs, drift against a reference, online quality from
    labels, and request capture, all inside modelship-server (runtime onnxruntime).
    `enabled: true` alone gives drift against the first requests (or the dataset)."""

    enabled: bool = False
    sample_rate: Annotated[float, Field(ge=0.0001, le=1)] = 1.0
    window: Annotated[int, Field(ge=100, le=1_000_000)] = 1000
    drift: MonitoringDrift = Field(default_factory=MonitoringDrift)
    quality: MonitoringQuality | None = None
    capture: MonitoringCapture | None = None
    reference: MonitoringReference = Field(default_factory=MonitoringReference)


OTLP_ENDPOINT = r"^(https?://)?[A-Za-z0-9.\[\]:_-]+(/\S*)?$"


class Tracing(_Model):
    """OpenTelemetry traces of inference requests, exported by OTLP (docs/tracing.md); off by default.

    A root request is sampled at `sampling_ratio`; a caller's sampled `traceparent` is always
    followed (runtime onnxruntime). Without an endpoint the exporter's default is used
    (localhost:4317 for gRPC, localhost:4318/v1/traces for HTTP): a collector sidecar.
    """

    enabled: bool = False
    # host:port or a URL; http/protobuf without a path gets /v1/traces
    endpoint: Annotated[str, StringConstraints(max_length=2048, pattern=OTLP_ENDPOINT)] | None = None
    sampling_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    protocol: Literal["grpc", "http/protobuf"] = "grpc"


Runtime = Literal["onnxruntime", "triton"]


class ModelServiceSpec(_Model):
    model: ModelSource
    runtime: Runtime = "onnxruntime"
    images: Images = Field(default_factory=Images)
    replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    resources: Resources = Field(default_factory=Resources)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    batching: Batching = Field(default_factory=Batching)
    optimization: Optimization = Field(default_factory=Optimization)
    onnxruntime: OnnxRuntimeSettings | None = None
    triton: TritonSettings | None = None
    slo: SLO | None = None
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    rollout: Rollout = Field(default_factory=Rollout)
    disruption_budget: DisruptionBudget = Field(default_factory=DisruptionBudget)
    network_policy: NetworkPolicySettings = Field(default_factory=NetworkPolicySettings)
    # -- authentication and TLS (docs/security.md) --
    auth: AuthSettings = Field(default_factory=AuthSettings)
    tls: TlsSettings | None = None
    monitoring: Monitoring = Field(default_factory=Monitoring)
    tracing: Tracing = Field(default_factory=Tracing)

    @model_validator(mode="after")
    def _cross_field(self) -> ModelServiceSpec:
        if self.tls is not None and self.runtime != "onnxruntime":
            raise ValueError(f"spec.tls applies only to runtime onnxruntime, but spec.runtime is {self.runtime}")
        if self.auth.enabled and self.runtime != "onnxruntime":
            raise ValueError(f"spec.auth applies only to runtime onnxruntime, but spec.runtime is {self.runtime}")
        if self.onnxruntime is not None and self.runtime != "onnxruntime":
            raise ValueError(f"spec.onnxruntime applies only to runtime onnxruntime, but spec.runtime is {self.runtime}")
        if self.triton is not None and self.runtime != "triton":
            raise ValueError(f"spec.triton applies only to runtime triton, but spec.runtime is {self.runtime}")
        if self.triton is not None and self.triton.tensorrt and self.resources.gpu.count < 1:
            raise ValueError(
                "spec.triton.tensorrt needs a GPU: set spec.resources.gpu.count to at least 1, or drop tensorrt"
            )
        if self.onnxruntime is not None and self.onnxruntime.tensorrt and self.resources.gpu.count < 1:
            raise ValueError(
                "spec.onnxruntime.tensorrt needs a GPU: set spec.resources.gpu.count to at least 1, or drop tensorrt"
            )
        if self.autoscaling.enabled and self.autoscaling.engine == "builtin" and self.slo is None:
            raise ValueError(
                "spec.slo.latencyMilliseconds is required when spec.autoscaling uses the builtin engine, "
                "which scales on latency"
            )
        if self.monitoring.enabled and self.runtime != "onnxruntime":
            raise ValueError(
                f"spec.monitoring needs runtime onnxruntime (modelship-server computes the profiles, drift and "
                f"quality; Triton does not), but spec.runtime is {self.runtime}"
            )
        if self.monitoring.reference.from_dataset and self.optimization.dataset is None:
            raise ValueError("spec.monitoring.reference.fromDataset needs spec.optimization.dataset "
                             "(the dataset the reference is profiled from)")
        return self

    @model_validator(mode="after")
    def _tracing_runtime(self) -> ModelServiceSpec:
        if self.tracing.enabled and self.runtime == "triton" and self.tracing.protocol != "http/protobuf":
            raise ValueError(
                "spec.tracing.protocol must be http/protobuf for runtime triton (the OpenTelemetry exporter "
                f"of Triton speaks OTLP over HTTP only), got {self.tracing.protocol}"
            )
        return self

    @property
    def monitoring_reference_from_dataset(self) -> bool:
        """Whether the reference is profiled from spec.optimization.dataset (the default when
        one is set) rather than frozen from each pod's first requests."""
        ref = self.monitoring.reference.from_dataset
        return self.optimization.dataset is not None if ref is None else ref

    @property
    def autoscaler_owns_replicas(self) -> bool:
        """True when an autoscaler, not the operator, sets the Deployment's replicas."""
        return self.autoscaling.enabled


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads; everything else passes through."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[str, StringConstraints(min_length=1)]
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None

    @pydantic.field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if len(value) > 52 or not _DNS1035.match(value):
            raise ValueError(
                "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting "
                f"with a letter) of at most 52 characters; got {value!r} ({len(value)} characters)"
            )
        return value


class ModelService(BaseModel):
    """A whole ModelService object; `status` stays a plain dict (the operator computes it)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["modelship.dev/v1alpha1"] = Field("modelship.dev/v1alpha1", alias="apiVersion")
    kind: Literal["ModelService"] = "ModelService"
    metadata: ObjectMeta
    spec: ModelServiceSpec
    status: dict[str, Any] | None = None

    @classmethod
    def from_body(cls, body: Any) -> ModelService:
        """Validate a ModelService from a kopf body, a dict, or parsed YAML."""
        return cls.model_validate(dict(body))


# --- status -----------------------------------------------------------------------------


class Condition(_Model):
    type: Annotated[str, StringConstraints(max_length=316)]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, StringConstraints(max_length=1024)]
    message: Annotated[str, StringConstraints(max_length=32768)]
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    last_transition_time: str


class Endpoints(_Model):
    http: str | None = None
    grpc: str | None = None


class Latency(_Model):
    percentile: str | None = None
    observed_milliseconds: float | None = None
    target_milliseconds: int | None = None


class CapacityStatus(_Model):
    requests_per_second: float | None = None
    percentile: str | None = None
    latency_milliseconds: float | None = None
    slo_milliseconds: float | None = None
    max_batch_size: int | None = None
    max_queue_delay_microseconds: int | None = None
    concurrency: int | None = None


class OptimizationStatus(_Model):
    job: str | None = None
    outcome: str | None = None
    variant: str | None = None
    sha256: str | None = None
    speedup: float | None = None
    spread: float | None = None
    capacity: CapacityStatus | None = None
    gate: str | None = None
    inputs: str | None = None
    tensorrt: str | None = None  # "gated: ...", "ungated: ..." or "off: ..." (render/model_config.tensorrt_choice)


class AutoscalingStatus(_Model):
    engine: str | None = None
    desired_replicas: int | None = None
    current_replicas: int | None = None
    observed_requests_per_second: float | None = None
    capacity_per_replica: float | None = None
    capacity_source: str | None = None
    reason: str | None = None
    last_scale_time: str | None = None


class BatchingStatus(_Model):
    max_batch_size: int | None = None
    reason: str | None = None
    message: str | None = None


class DriftStatus(_Model):
    tensor: str | None = None
    psi: float | None = None
    p_value: float | None = None
    drifted: bool | None = None


class QualityStatus(_Model):
    metric: str | None = None
    value: float | None = None
    labels: int | None = None


class CaptureStatus(_Model):
    sink: str | None = None
    written: int | None = None
    dropped: int | None = None


class MonitoringStatus(_Model):
    reference: str | None = None
    reference_ready_pods: str | None = None
    drift: list[DriftStatus] | None = None
    quality: QualityStatus | None = None
    capture: CaptureStatus | None = None


class CanaryTrackStatus(_Model):
    requests: int | None = None
    error_rate: float | None = None
    shed_rate: float | None = None
    latency_milliseconds: float | None = None
    mirrored: int | None = None  # answers compared with stable's (output agreement)
    output_agreement: float | None = None


class RouteBackend(_Model):
    name: str | None = None
    weight: int | None = None


class CanaryRouteStatus(_Model):
    """The HTTPRoute (or GRPCRoute) of spec.rollout.canary.gatewayRef: whether it carries the split,
    and its weights."""

    name: str | None = None
    traffic: str | None = None  # "route": the route's weights; "replicas": the replica ratio
    backends: list[RouteBackend] | None = None
    message: str | None = None


class CanaryStatus(_Model):
    revision: str | None = None
    generation: int | None = None
    phase: str | None = None
    step: int | None = None
    steps: int | None = None
    step_summary: str | None = None
    weight: int | None = None
    canary_replicas: int | None = None
    stable_replicas: int | None = None
    step_started_at: str | None = None
    message: str | None = None
    canary: CanaryTrackStatus | None = None
    stable: CanaryTrackStatus | None = None
    online_speedup: float | None = None
    route: CanaryRouteStatus | None = None
    grpc_route: CanaryRouteStatus | None = None  # the GRPCRoute, installed or not apart from the HTTPRoute


class ModelServiceStatus(_Model):
    observed_generation: int | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    updated_replicas: int | None = None
    replica_summary: str | None = None
    variant: str | None = None
    endpoints: Endpoints | None = None
    latency: Latency | None = None
    optimization: OptimizationStatus | None = None
    autoscaling: AutoscalingStatus | None = None
    batching: BatchingStatus | None = None
    monitoring: MonitoringStatus | None = None
    conditions: list[Condition] | None = None
    canary: CanaryStatus | None = None
