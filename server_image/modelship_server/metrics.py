"""Prometheus metrics, served on the metrics port (8002) by prometheus-client.

Names follow the project contract: prefix `modelship_`, durations in seconds,
labels `model`, `version`, `protocol`; docs/server.md lists each metric and
what a dashboard or an autoscaler should read from it.

Why not prometheus-client's Counter/Histogram objects on the request path: each
observe() takes a lock and a request makes about a dozen of them (~15 µs, a
twentieth of the whole latency budget). All updates happen on the event-loop
thread, so plain integers and lists are enough; a Collector turns them into
metric families only when Prometheus scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Callable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from modelship.contracts import INFLIGHT_METRIC, OUTCOMES, QUEUE_DURATION_METRIC, REQUEST_DURATION_METRIC, REQUESTS_METRIC

if TYPE_CHECKING:
    from .budget import ByteBudget

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PROTOCOLS = ("http", "grpc")


class Histogram:
    """Counts per bucket (upper bounds inclusive, as Prometheus' `le`) and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, c in zip(self.bounds, self.counts):
            total += c
            out.append((floatToGoString(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


class ModelMetrics:
    """Every metric of one model version; updated on the event-loop thread only."""

    __slots__ = ("model", "version", "requests", "request_duration", "queue_duration", "compute_duration",
                 "batch_size", "inflight", "queue_depth", "load_duration", "ready")

    def __init__(self, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self.requests = {(p, o): 0 for p in PROTOCOLS for o in OUTCOMES}
        self.request_duration = {p: Histogram(LATENCY_BUCKETS) for p in PROTOCOLS}
        self.queue_duration = Histogram(LATENCY_BUCKETS)
        self.compute_duration = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.inflight = 0
        self.queue_depth: Callable[[], int] = lambda: 0
        self.load_duration = 0.0
        self.ready = 0


class Metrics:
    """The server's metrics, one registry per server (so tests can run several)."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str], ModelMetrics] = {}
        self.budget: ByteBudget | None = None  # set by the server: bytes in flight and requests shed
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))

    def for_model(self, model: str, version: str) -> ModelMetrics:
        key = (model, version)
        m = self.models.get(key)
        if m is None:
            m = self.models[key] = ModelMetrics(model, version)
        return m

    def serve(self, port: int, addr: str = "0.0.0.0"):
        """Start the /metrics endpoint in a daemon thread; OSError if the port is taken."""
        return start_http_server(port, addr=addr, registry=self.registry)


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self) -> Iterator:
        models = list(self.metrics.models.values())
        req = CounterMetricFamily(REQUESTS_METRIC, "Inference requests by model, protocol and outcome.",
                                  labels=["model", "version", "protocol", "outcome"])
        dur = HistogramMetricFamily(REQUEST_DURATION_METRIC,
                                    "Time from a decoded request to its response (queue + compute + codec).",
                                    labels=["model", "version", "protocol"])
        queue = HistogramMetricFamily(QUEUE_DURATION_METRIC, "Time a request waited in the model's queue.",
                                      labels=["model", "version"])
        compute = HistogramMetricFamily("modelship_compute_duration_seconds", "Time of one ONNX Runtime run (one batch).",
                                        labels=["model", "version"])
        batch = HistogramMetricFamily("modelship_batch_size", "Samples per ONNX Runtime run (after dynamic batching).",
                                      labels=["model", "version"])
        inflight = GaugeMetricFamily(INFLIGHT_METRIC,
                                     "Inference requests being served now (queued or running).", labels=["model", "version"])
        depth = GaugeMetricFamily("modelship_queue_depth", "Requests waiting in the model's queue now.",
                                  labels=["model", "version"])
        load = GaugeMetricFamily("modelship_model_load_duration_seconds", "Seconds to load and warm up the model.",
                                 labels=["model", "version"])
        ready = GaugeMetricFamily("modelship_model_ready", "1 when the model version is ready to serve, else 0.",
                                  labels=["model", "version"])
        for m in models:
            mv = [m.model, m.version]
            for (p, o), n in list(m.requests.items()):
                req.add_metric(mv + [p, o], n)
            for p, h in m.request_duration.items():
                dur.add_metric(mv + [p], h.cumulative(), h.sum)
            queue.add_metric(mv, m.queue_duration.cumulative(), m.queue_duration.sum)
            compute.add_metric(mv, m.compute_duration.cumulative(), m.compute_duration.sum)
            batch.add_metric(mv, m.batch_size.cumulative(), m.batch_size.sum)
            inflight.add_metric(mv, m.inflight)
            depth.add_metric(mv, m.queue_depth())
            load.add_metric(mv, m.load_duration)
            ready.add_metric(mv, m.ready)
        yield from (req, dur, queue, compute, batch, inflight, depth, load, ready)
        b = self.metrics.budget
        if b is not None:
            used = GaugeMetricFamily("modelship_inflight_request_bytes",
                                     "Bytes reserved by requests in flight (wire size x expansion), HTTP and gRPC.")
            used.add_metric([], b.used)
            limit = GaugeMetricFamily("modelship_inflight_request_bytes_limit",
                                      "The budget of request bytes in flight (--max-inflight-bytes).")
            limit.add_metric([], b.limit)
            shed = CounterMetricFamily("modelship_budget_shed_requests",
                                       "Requests refused (503 / RESOURCE_EXHAUSTED) because the byte budget was full.")
            shed.add_metric([], b.shed)
            yield from (used, limit, shed)
