"""OpenTelemetry traces of inference requests: settings, sampling, the spans of one request.

Why this shape:

- Off (the default) costs one `is None` test per request: no tracer object exists.
- On, the sampling decision is made once per request, before any span exists (parent-based:
  a caller's well-formed `traceparent` is followed, sampled or not; any other request is a root,
  sampled by a random draw at `ratio`). An unsampled request costs a regex match or that draw
  and gets no `RequestTrace`, so nothing below the protocol layer records anything for it.
- A sampled request's child spans are built as finished spans and handed to the span processor
  directly: the SDK's start_span would sample, look up contexts and check attributes again for
  each, about four times the cost.
- A sampled request records plain `perf_counter_ns` stamps as it goes (the scheduler knows
  nothing of OpenTelemetry) and its child spans are made in one go when it is answered, with
  those stamps as their start and end times: decode, queue, compute, encode.
- A batch serves several requests, and a span has one parent. The batch's own span is a child
  of the first sampled member's root (so a trace viewer shows it inside a real request) and links
  to every member's root; each member's `compute` span links back to it. A batch span as a trace
  of its own would be an orphan that most viewers never show next to the requests it served.
- Export is OTLP (gRPC or HTTP/protobuf) from a BatchSpanProcessor's thread: a slow or absent
  collector drops spans (bounded queue), it never delays a response.

Flags mirror Triton's `--trace-config` (`mode=opentelemetry`, `rate`, `level`,
`opentelemetry,url=...`, `opentelemetry,resource=...`, `opentelemetry,bsp_*`); the standard
OTEL_* environment variables fill in what the flags leave unset (flags win).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

_perf_ns = time.perf_counter_ns
_random = random.random
# W3C trace context version 00: version-traceid-parentid-flags (the flags are group 1)
_TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-([0-9a-f]{2})$")

MODES = ("off", "opentelemetry")
LEVELS = ("OFF", "TIMESTAMPS")
PROTOCOLS = ("grpc", "http/protobuf")
_OTEL_KEYS = ("url", "protocol", "resource", "bsp_max_queue_size", "bsp_schedule_delay", "bsp_max_export_batch_size")
_GLOBAL_KEYS = ("mode", "level", "rate", "ratio", "count")


@dataclasses.dataclass(frozen=True)
class TraceSettings:
    """What `--trace-config` and OTEL_* decided; `enabled` is the only question the hot path asks."""

    mode: str = "off"
    level: str = "TIMESTAMPS"
    ratio: float = 1.0  # share of root requests sampled; a caller's sampled flag always wins
    endpoint: str = ""  # "" = the exporter's default (localhost:4317 gRPC, localhost:4318 HTTP)
    protocol: str = "grpc"
    resource: tuple[tuple[str, str], ...] = ()
    bsp_max_queue_size: int = 2048
    bsp_schedule_delay_ms: int = 5000
    bsp_max_export_batch_size: int = 512

    @property
    def enabled(self) -> bool:
        return self.mode == "opentelemetry"


def _ratio(value: str, what: str) -> float:
    try:
        r = float(value)
    except ValueError:
        raise ValueError(f"{what}: expected a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= r <= 1.0 or math.isnan(r):
        raise ValueError(f"{what}: expected a number between 0 and 1, got {value!r}")
    return r


def _positive_int(value: str, what: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{what}: expected a whole number > 0, got {value!r}") from None
    if n <= 0:
        raise ValueError(f"{what}: expected a whole number > 0, got {value!r}")
    return n


def rate_to_ratio(rate: str, what: str = "--trace-config rate") -> float:
    """Triton's `rate=N` (one request in N) as a sampling ratio."""
    return 1.0 / _positive_int(rate, what)


def _resource_pairs(text: str, what: str) -> list[tuple[str, str]]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what}: expected key=value, got {item!r}")
        out.append((key.strip(), value.strip()))
    return out


def _sampler_from_env(env: Mapping[str, str]) -> float | None:
    """OTEL_TRACES_SAMPLER(_ARG) as a ratio; only the parent-based and ratio samplers fit our model."""
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if not name:
        return None
    if name in ("always_on", "parentbased_always_on"):
        return 1.0
    if name in ("always_off", "parentbased_always_off"):
        return 0.0
    if name in ("traceidratio", "parentbased_traceidratio"):
        return _ratio(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"), "OTEL_TRACES_SAMPLER_ARG")
    raise ValueError(
        f"OTEL_TRACES_SAMPLER={name!r} is not supported; use parentbased_traceidratio (with "
        "OTEL_TRACES_SAMPLER_ARG), traceidratio, always_on or always_off"
    )


def parse_trace_config(items: Sequence[str], env: Mapping[str, str]) -> TraceSettings:
    """`--trace-config` items (Triton's `[mode,]key=value`) over OTEL_* env; ValueError naming the item."""
    fields: dict = {}
    resource: list[tuple[str, str]] = []
    for raw in items:
        what = f"--trace-config {raw!r}"
        section, key, value = "", "", ""
        head, sep, value = raw.partition("=")
        if not sep:
            raise ValueError(f"{what}: expected [opentelemetry,]key=value, e.g. mode=opentelemetry")
        if "," in head:
            section, _, key = head.partition(",")
        else:
            key = head
        section, key, value = section.strip().lower(), key.strip().lower().replace("-", "_"), value.strip()
        if section == "opentelemetry":
            if key == "url":
                fields["endpoint"] = value
            elif key == "protocol":
                if value.lower() not in PROTOCOLS:
                    raise ValueError(f"{what}: protocol must be one of {', '.join(PROTOCOLS)}, got {value!r}")
                fields["protocol"] = value.lower()
            elif key == "resource":
                resource += _resource_pairs(value, what)
            elif key == "bsp_max_queue_size":
                fields["bsp_max_queue_size"] = _positive_int(value, what)
            elif key == "bsp_schedule_delay":
                fields["bsp_schedule_delay_ms"] = _positive_int(value, what)
            elif key == "bsp_max_export_batch_size":
                fields["bsp_max_export_batch_size"] = _positive_int(value, what)
            else:
                raise ValueError(f"{what}: unknown opentelemetry setting {key!r}; known: {', '.join(_OTEL_KEYS)}")
        elif section == "triton":
            raise ValueError(f"{what}: Triton's own trace files are not supported; use mode=opentelemetry")
        elif section:
            raise ValueError(f"{what}: unknown trace mode {section!r}; use opentelemetry")
        elif key == "mode":
            if value.lower() not in MODES:
                raise ValueError(f"{what}: mode must be one of {', '.join(MODES)}, got {value!r}")
            fields["mode"] = value.lower()
        elif key == "level":
            if value.upper() not in LEVELS:
                raise ValueError(f"{what}: level must be one of {', '.join(LEVELS)} (TENSORS is not supported), "
                                 f"got {value!r}")
            fields["level"] = value.upper()
        elif key == "rate":
            fields["ratio"] = rate_to_ratio(value, what)
        elif key == "ratio":
            fields["ratio"] = _ratio(value, what)
        elif key == "count":
            if value != "-1":
                raise ValueError(f"{what}: only count=-1 (no limit) is supported, got {value!r}")
        else:
            raise ValueError(f"{what}: unknown trace setting {key!r}; known: {', '.join(_GLOBAL_KEYS)} "
                             f"and opentelemetry,{{{','.join(_OTEL_KEYS)}}}")
    # The standard variables fill in what the flags left unset.
    if "ratio" not in fields:
        r = _sampler_from_env(env)
        if r is not None:
            fields["ratio"] = r
    if "endpoint" not in fields:
        ep = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        if ep:
            fields["endpoint"] = ep
        elif env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
            fields["endpoint"] = env["OTEL_EXPORTER_OTLP_ENDPOINT"].strip()
    if "protocol" not in fields:
        proto = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "").strip()
        if proto:
            if proto.lower() not in PROTOCOLS:
                raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: expected one of {', '.join(PROTOCOLS)}, got {proto!r}")
            fields["protocol"] = proto.lower()
    env_resource = _resource_pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", ""), "OTEL_RESOURCE_ATTRIBUTES")
    if env.get("OTEL_SERVICE_NAME", "").strip():
        env_resource.append(("service.name", env["OTEL_SERVICE_NAME"].strip()))
    fields["resource"] = tuple(env_resource + resource)  # flags last: they win
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        fields["mode"] = "off"
    return TraceSettings(**fields)


def exporter_endpoint(settings: TraceSettings) -> str | None:
    """The URL the exporter is given. Triton writes `host:port/path` without a scheme: http:// is assumed
    (TLS to a collector is not configured here). HTTP/protobuf gets /v1/traces when no path is given."""
    ep = settings.endpoint.strip()
    if not ep:
        return None
    if "://" not in ep:
        ep = "http://" + ep
    parts = urlsplit(ep)
    if settings.protocol == "http/protobuf" and parts.path in ("", "/"):
        ep = ep.rstrip("/") + "/v1/traces"
    if settings.protocol == "grpc":
        ep = f"{parts.scheme}://{parts.netloc}"  # gRPC has no path
    return ep


# -- what a request records -------------------------------------------------------


class BatchRun:
    """One run of a batch, shared by its traced members; its span is made by the first member answered."""

    __slots__ = ("started_ns", "run_ns", "done_ns", "size", "requests", "members", "span_context", "lock")

    def __init__(self, started_ns: int, run_ns: int, done_ns: int, size: int, requests: int,
                 members: list[RequestTrace]) -> None:
        self.started_ns = started_ns  # taken off the queue
        self.run_ns = run_ns  # inputs concatenated, model run begins
        self.done_ns = done_ns
        self.size = size
        self.requests = requests
        self.members = members
        self.span_context: Any = None  # the batch span's, once made
        self.lock = threading.Lock()


class RequestTrace:
    """The stamps of one sampled request (perf_counter_ns), filled in as it passes each stage."""

    __slots__ = ("tracer", "root", "offset_ns", "received_ns", "decoded_ns", "enqueued_ns", "batch",
                 "encode_ns", "attributes")

    def __init__(self, tracer: Tracer, root, received_ns: int, offset_ns: int) -> None:
        self.tracer = tracer
        self.root = root
        self.offset_ns = offset_ns  # perf_counter_ns -> Unix ns
        self.received_ns = received_ns
        self.decoded_ns = 0
        self.enqueued_ns = 0
        self.batch: BatchRun | None = None
        self.encode_ns = 0
        self.attributes: dict = {}

    def finish(self, error: str | None = None) -> None:
        """Emit the child spans from the stamps and end the root; never raises into a response."""
        try:
            self.tracer._emit(self, error)
        except Exception:  # noqa: BLE001 - tracing must never fail a request
            log.exception("could not record a trace")


# -- the tracer ---------------------------------------------------------------------


class Tracer:
    """Owns the TracerProvider and its exporter; starts roots, emits children, answers TraceSetting."""

    def __init__(self, settings: TraceSettings, service_name: str = "modelship-server", exporter=None) -> None:
        from opentelemetry import trace as api
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.settings = settings
        self.level = settings.level
        self._api = api
        self._propagator = TraceContextTextMapPropagator()
        self.ratio = settings.ratio  # roots only; TraceSetting may change it while serving
        attrs = {"service.name": service_name}
        attrs.update(dict(settings.resource))
        # The SDK samples parent-based with roots always on: `start` has already drawn the
        # root's ratio (and dropped unsampled parents) before it asks for a span.
        self.provider = TracerProvider(sampler=ParentBased(ALWAYS_ON), resource=Resource.create(attrs))
        self.exporter = exporter if exporter is not None else make_exporter(settings)
        self.processor = BatchSpanProcessor(
            self.exporter,
            max_queue_size=settings.bsp_max_queue_size,
            schedule_delay_millis=settings.bsp_schedule_delay_ms,
            max_export_batch_size=min(settings.bsp_max_export_batch_size, settings.bsp_max_queue_size),
        )
        self.provider.add_span_processor(self.processor)
        self._tracer = self.provider.get_tracer("modelship_server")
        self._readable = ReadableSpan
        self._resource = self.provider.resource
        self._scope = InstrumentationScope("modelship_server")
        self._ids = self.provider.id_generator
        self._server = api.SpanKind.SERVER

    # -- per request ---------------------------------------------------------

    def start(self, name: str, traceparent: str | None, tracestate: str | None, attributes: dict) -> RequestTrace | None:
        """The root span of a request, or None when it is not sampled (or the level is OFF)."""
        received = _perf_ns()
        if self.level == "OFF":
            return None
        # Decided here, before any span exists (an unsampled request costs a regex or a
        # random draw): a well-formed parent is followed, sampled or not; anything else is
        # a root, sampled at `ratio` (a malformed traceparent is ignored, as the W3C says).
        if traceparent:
            m = _TRACEPARENT.match(traceparent)
            if m is None:
                traceparent = None
            elif not int(m.group(1), 16) & 1:
                return None
        if not traceparent and (self.ratio <= 0.0 or (self.ratio < 1.0 and _random() >= self.ratio)):
            return None
        ctx = None
        if traceparent:
            carrier = {"traceparent": traceparent}
            if tracestate:
                carrier["tracestate"] = tracestate
            ctx = self._propagator.extract(carrier)
        offset = time.time_ns() - _perf_ns()
        root = self._tracer.start_span(name, context=ctx, kind=self._server, attributes=attributes,
                                       start_time=received + offset)
        if not root.is_recording():
            return None
        return RequestTrace(self, root, received, offset)

    def _child(self, name: str, parent, start_ns: int, end_ns: int, attributes: dict | None = None, links=()):
        """A finished child span handed straight to the span processor; its SpanContext.

        The SDK's start_span/end would run the sampler, the context machinery and the
        attribute checks again for each child (~5x the cost): the root already decided,
        and the times and attributes here are ours.
        """
        api = self._api
        ctx = api.SpanContext(parent.trace_id, self._ids.generate_span_id(), False, parent.trace_flags,
                              parent.trace_state)
        self.processor.on_end(self._readable(
            name, context=ctx, parent=parent, resource=self._resource, attributes=attributes or {}, links=links,
            instrumentation_scope=self._scope, start_time=start_ns, end_time=end_ns))
        return ctx

    def _emit(self, t: RequestTrace, error: str | None) -> None:
        api = self._api
        off = t.offset_ns
        parent = t.root.get_span_context()
        now = _perf_ns()

        def span(name: str, start: int, end: int, attributes: dict | None = None, links=()) -> None:
            if start and end >= start:
                self._child(name, parent, start + off, end + off, attributes, links)

        if t.decoded_ns:
            span("decode", t.received_ns, t.decoded_ns)
        b = t.batch
        if b is not None:
            span("queue", t.enqueued_ns, b.started_ns)
            batch_link = self._batch_span(b, t)
            links = [api.Link(batch_link)] if batch_link is not None else ()
            span("compute", b.run_ns, b.done_ns,
                 {"modelship.batch.size": b.size, "modelship.batch.requests": b.requests}, links)
        elif t.enqueued_ns:
            span("queue", t.enqueued_ns, now)
        if t.encode_ns:
            span("encode", t.encode_ns, now)
        root = t.root
        if t.attributes:
            root.set_attributes(t.attributes)
        if error is not None:
            root.set_status(api.Status(api.StatusCode.ERROR, error[:500]))
        root.end(end_time=now + off)

    def _batch_span(self, b: BatchRun, first: RequestTrace):
        """The batch's span, made once (by whichever member is answered first)."""
        with b.lock:
            if b.span_context is None:
                api = self._api
                links = [api.Link(m.root.get_span_context()) for m in b.members if m is not first]
                b.span_context = self._child(
                    "batch", first.root.get_span_context(), b.started_ns + first.offset_ns, b.done_ns + first.offset_ns,
                    {"modelship.batch.size": b.size, "modelship.batch.requests": b.requests}, links)
            return b.span_context

    # -- TraceSetting (Triton's trace extension) ------------------------------

    def setting(self) -> dict[str, list[str]]:
        """The current settings in Triton's TraceSetting keys."""
        rate = round(1 / self.ratio) if self.ratio > 0 else 0
        return {
            "trace_mode": ["opentelemetry"],
            "trace_level": [self.level],
            "trace_rate": [str(rate)],
            "trace_count": ["-1"],
            "log_frequency": ["0"],
            "trace_file": [""],
        }

    def update(self, changes: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        """Apply Triton-style changes (an empty list resets a key to its startup value); ValueError names the key."""
        plan = plan_update(changes, self.settings)
        if "level" in plan:
            self.level = plan["level"]
        if "ratio" in plan:
            self.ratio = plan["ratio"]
        return self.setting()

    def shutdown(self) -> None:
        self.provider.shutdown()


OFF_SETTING = {"trace_mode": ["opentelemetry"], "trace_level": ["OFF"], "trace_rate": ["0"], "trace_count": ["-1"],
               "log_frequency": ["0"], "trace_file": [""]}


def plan_update(changes: Mapping[str, Sequence[str]], startup: TraceSettings) -> dict:
    """Pure: TraceSetting changes as {'level': ..., 'ratio': ...}; ValueError for what cannot be changed."""
    plan: dict = {}
    for key, values in changes.items():
        values = list(values)
        if key == "trace_level":
            if not values:
                plan["level"] = startup.level
                continue
            levels = {v.upper() for v in values}
            if not levels <= set(LEVELS):
                raise ValueError(f"trace_level: expected OFF or TIMESTAMPS (TENSORS is not supported), got {values}")
            plan["level"] = "TIMESTAMPS" if "TIMESTAMPS" in levels else "OFF"
        elif key == "trace_rate":
            if not values:
                plan["ratio"] = startup.ratio
                continue
            if len(values) != 1:
                raise ValueError(f"trace_rate: expected one value, got {values}")
            plan["ratio"] = rate_to_ratio(values[0], "trace_rate")
        elif key in ("trace_count", "log_frequency", "trace_file", "trace_mode"):
            if values and values not in (["-1"], ["0"], [""], ["opentelemetry"]):
                raise ValueError(f"{key}: cannot be changed on this server (OpenTelemetry mode only), got {values}")
        else:
            raise ValueError(f"unknown trace setting {key!r}; known: trace_level, trace_rate, trace_count, "
                             "log_frequency, trace_file, trace_mode")
    return plan


def make_exporter(settings: TraceSettings):
    """The OTLP exporter for the configured protocol and endpoint."""
    endpoint = exporter_endpoint(settings)
    if settings.protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter(endpoint=endpoint, timeout=5)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    insecure = None if endpoint is None else endpoint.startswith("http://")
    return GrpcExporter(endpoint=endpoint, insecure=insecure, timeout=5)


def make_tracer(settings: TraceSettings) -> Tracer | None:
    if not settings.enabled:
        return None
    tracer = Tracer(settings)
    log.info("tracing: OpenTelemetry, OTLP %s to %s, level %s, sampling ratio %g (parent-based)",
             settings.protocol, exporter_endpoint(settings) or "the exporter's default endpoint",
             settings.level, settings.ratio)
    return tracer
