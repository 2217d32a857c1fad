"""Prometheus metrics (prometheus-client), served on the metrics port (8002).

Names follow the project contract: prefix `modelship_`, durations in seconds,
labels `model`, `version`, `protocol`. docs/server.md lists each metric and
what a dashboard or an autoscaler should read from it. Label children are
resolved once per model so the request path only calls observe()/inc().
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PROTOCOLS = ("http", "grpc")
OUTCOMES = ("success", "invalid", "not_found", "unavailable", "shed", "timeout", "error")


class Metrics:
    """All server metrics on one registry (a fresh one per server, so tests can run several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "modelship_inference_requests", "Inference requests by model, protocol and outcome.",
            ["model", "version", "protocol", "outcome"], registry=r,
        )
        self.request_duration = Histogram(
            "modelship_request_duration_seconds",
            "Time from a decoded request to its encoded response (queue + compute + codec).",
            ["model", "version", "protocol"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_duration = Histogram(
            "modelship_queue_duration_seconds", "Time a request waited in the model's queue.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.compute_duration = Histogram(
            "modelship_compute_duration_seconds", "Time of one ONNX Runtime run (one batch).",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "modelship_batch_size", "Samples per ONNX Runtime run (after dynamic batching).",
            ["model", "version"], buckets=BATCH_BUCKETS, registry=r,
        )
        self.inflight = Gauge(
            "modelship_inflight_requests", "Inference requests being served now (queued or running).",
            ["model", "version"], registry=r,
        )
        self.queue_depth = Gauge(
            "modelship_queue_depth", "Requests waiting in the model's queue now.",
            ["model", "version"], registry=r,
        )
        self.load_duration = Gauge(
            "modelship_model_load_duration_seconds", "Seconds to load and warm up the model.",
            ["model", "version"], registry=r,
        )
        self.model_ready = Gauge(
            "modelship_model_ready", "1 when the model version is ready to serve, else 0.",
            ["model", "version"], registry=r,
        )

    def for_model(self, model: str, version: str) -> "ModelMetrics":
        return ModelMetrics(self, model, version)

    def serve(self, port: int, addr: str = "0.0.0.0"):
        """Start the /metrics HTTP endpoint in a daemon thread; OSError if the port is taken."""
        return start_http_server(port, addr=addr, registry=self.registry)


class ModelMetrics:
    """The label children of one model version, resolved once."""

    __slots__ = (
        "requests", "request_duration", "queue_duration", "compute_duration", "batch_size",
        "inflight", "queue_depth", "load_duration", "ready",
    )

    def __init__(self, m: Metrics, model: str, version: str) -> None:
        self.requests = {
            (p, o): m.requests.labels(model, version, p, o) for p in PROTOCOLS for o in OUTCOMES
        }
        self.request_duration = {p: m.request_duration.labels(model, version, p) for p in PROTOCOLS}
        self.queue_duration = m.queue_duration.labels(model, version)
        self.compute_duration = m.compute_duration.labels(model, version)
        self.batch_size = m.batch_size.labels(model, version)
        self.inflight = m.inflight.labels(model, version)
        self.queue_depth = m.queue_depth.labels(model, version)
        self.load_duration = m.load_duration.labels(model, version)
        self.ready = m.model_ready.labels(model, version)
