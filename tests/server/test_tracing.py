"""OpenTelemetry traces from the real server to a real OTLP receiver (tests/server/otlp_receiver.py).

tritonclient sends a W3C `traceparent` (HTTP header, gRPC metadata); the spans must arrive in
that trace, with the request's root as the caller's child and decode / queue / compute / encode
under it, and a batch span linked to every request it served. Root requests are sampled at
ratio 0 here, so only a caller's sampled flag turns a trace on: unsampled callers send nothing.
The model is magika, a public model from a pinned PyPI wheel (tests/corpus).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import corpus
from modelship_server.tracing import TraceSettings, exporter_endpoint, parse_trace_config, plan_update
from .otlp_receiver import GrpcReceiver, HttpReceiver
from waiting import wait_for

from .conftest import free_ports

MODEL = "magika"
BATCHED = "magika-batched"  # the same model, holding requests until four are queued
CHILDREN = {"decode", "queue", "compute", "encode"}


def _traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("trace-repo")
    src = corpus.MODELS[MODEL].path()
    for name in (MODEL, BATCHED):
        (root / name / "1").mkdir(parents=True)
        shutil.copyfile(src, root / name / "1" / "model.onnx")
    (root / BATCHED / "config.pbtxt").write_text(
        "max_batch_size: 4\n"
        "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 20000000 }\n")
    return root


@pytest.fixture(scope="module")
def receiver():
    r = GrpcReceiver()
    try:
        yield r
    finally:
        r.stop()


def _args(url: str, *more: str) -> list[str]:
    return ["--trace-config", "mode=opentelemetry", "--trace-config", "ratio=0",
            "--trace-config", f"opentelemetry,url={url}", "--trace-config", "opentelemetry,bsp_schedule_delay=50",
            "--intra-op-threads", "1", *more]


@pytest.fixture(scope="module")
def server(repo, receiver, module_server_factory):
    return module_server_factory(repo, *_args(receiver.endpoint))


def _feeds(batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    return corpus.MODELS[MODEL].sample(batch=batch, seed=seed)


def _infer(server, protocol: str, model: str = MODEL, headers: dict | None = None, seed: int = 0):
    feeds = _feeds(seed=seed)
    if protocol == "grpc":
        client = grpcclient.InferenceServerClient(server.grpc_url)
        mod = grpcclient
    else:
        client = httpclient.InferenceServerClient(server.http_url)
        mod = httpclient
    try:
        inputs = []
        for key, a in feeds.items():
            i = mod.InferInput(key, list(a.shape), "INT32")
            i.set_data_from_numpy(a)
            inputs.append(i)
        res = client.infer(model, inputs, headers=headers)
        return res.as_numpy(corpus_output())
    finally:
        client.close()


def corpus_output() -> str:
    import onnxruntime as ort

    return ort.InferenceSession(str(corpus.MODELS[MODEL].path()), providers=["CPUExecutionProvider"]).get_outputs()[0].name


def _trace_of(receiver, trace_id: str, names: set[str]):
    """Wait until the trace holds spans with every name in `names`; {name: [spans]}."""
    def complete():
        spans = receiver.spans(trace_id)
        got = {}
        for s in spans:
            got.setdefault(s.name, []).append(s)
        return got if names <= set(got) else None

    return wait_for(f"spans {sorted(names)} in trace {trace_id}", complete, timeout=30, interval=0.1)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_sampled_request_sends_its_spans_in_the_callers_trace(server, receiver, protocol):
    header, trace_id, caller_span = _traceparent()
    out = _infer(server, protocol, headers={"traceparent": header})
    assert out.shape[0] == 1
    root_name = ("POST /v2/models/{name}/infer" if protocol == "http"
                 else "inference.GRPCInferenceService/ModelInfer")
    got = _trace_of(receiver, trace_id, {root_name, *CHILDREN, "batch"})
    (root,) = got[root_name]
    assert root.parent_span_id == caller_span, "the request's span must be the caller's child"
    assert root.kind == 2  # SPAN_KIND_SERVER
    assert root.attributes["modelship.model"] == MODEL
    assert root.resource["service.name"] == "modelship-server"
    for name in CHILDREN:
        (child,) = got[name]
        assert child.parent_span_id == root.span_id, f"{name} must be a child of the request's span"
        assert root.start_ns <= child.start_ns <= child.end_ns <= root.end_ns, f"{name} lies outside the request"
    queue, compute, encode = got["queue"][0], got["compute"][0], got["encode"][0]
    assert got["decode"][0].end_ns <= queue.start_ns <= queue.end_ns <= compute.start_ns <= compute.end_ns <= encode.start_ns
    (batch,) = got["batch"]
    assert batch.parent_span_id == root.span_id
    assert compute.links == [(trace_id, batch.span_id)], "compute links to the batch that ran it"
    assert batch.attributes["modelship.batch.requests"] == 1 and batch.links == []


def test_a_batch_span_links_every_request_it_served(server, receiver):
    calls = [_traceparent() for _ in range(4)]
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            _infer(server, "http" if i % 2 else "grpc", BATCHED, {"traceparent": calls[i][0]}, seed=i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    roots = {}
    computes = []
    for header, trace_id, _ in calls:
        got = _trace_of(receiver, trace_id, CHILDREN)
        roots[trace_id] = next(s for s in receiver.spans(trace_id) if s.parent_span_id == calls_span(calls, trace_id))
        computes += got["compute"]
    assert {c.attributes["modelship.batch.requests"] for c in computes} == {4}, "the four requests ran as one batch"
    batch_ids = {c.links[0] for c in computes}
    assert len(batch_ids) == 1, f"every compute span links to the same batch span, got {batch_ids}"
    batch_trace, batch_span = batch_ids.pop()
    (batch,) = [s for s in receiver.spans(batch_trace) if s.span_id == batch_span]
    assert batch.name == "batch" and batch.attributes["modelship.batch.size"] == 4
    linked = set(batch.links) | {(batch.trace_id, batch.parent_span_id)}
    assert linked == {(t, roots[t].span_id) for t in roots}, "the batch names each request it served"


def calls_span(calls, trace_id: str) -> str:
    return next(span for _, t, span in calls if t == trace_id)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unsampled_requests_send_no_spans(server, receiver, protocol):
    header, trace_id, _ = _traceparent(sampled=False)
    _infer(server, protocol, headers={"traceparent": header})
    _infer(server, protocol)  # no traceparent: a root request, sampled at ratio 0
    # A sampled request sent after them is exported in the same or a later batch: once it is in,
    # anything the unsampled ones had produced would be too.
    marker, marker_id, _ = _traceparent()
    _infer(server, protocol, headers={"traceparent": marker})
    _trace_of(receiver, marker_id, CHILDREN)
    assert receiver.spans(trace_id) == []
    roots = [s for s in receiver.spans() if s.parent_span_id == "" and s.name != "batch"]
    assert roots == [], f"root requests at ratio 0 must not be traced: {[r.trace_id for r in roots]}"


def test_trace_settings_follow_tritons_extension(server, receiver):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    hclient = httpclient.InferenceServerClient(server.http_url)
    try:
        settings = client.get_trace_settings(as_json=True)["settings"]
        assert settings["trace_level"]["value"] == ["TIMESTAMPS"] and settings["trace_rate"]["value"] == ["0"]
        assert hclient.get_trace_settings(model_name=MODEL)["trace_level"] == ["TIMESTAMPS"]
        client.update_trace_settings(settings={"trace_level": ["OFF"]})
        header, trace_id, _ = _traceparent()
        _infer(server, "http", headers={"traceparent": header})
        assert hclient.update_trace_settings(settings={"trace_level": None})["trace_level"] == ["TIMESTAMPS"]
        marker, marker_id, _ = _traceparent()
        _infer(server, "grpc", headers={"traceparent": marker})
        _trace_of(receiver, marker_id, CHILDREN)
        assert receiver.spans(trace_id) == [], "level OFF must stop tracing"
        with pytest.raises(InferenceServerException, match="trace_rate: expected a whole number > 0, got 'x'"):
            client.update_trace_settings(settings={"trace_rate": "x"})
        with pytest.raises(InferenceServerException, match="unknown trace setting 'nope'"):
            hclient.update_trace_settings(settings={"nope": "1"})
        with pytest.raises(InferenceServerException, match="server-wide"):
            client.update_trace_settings(model_name=MODEL, settings={"trace_rate": "2"})
    finally:
        client.close()
        hclient.close()


def test_http_protobuf_export(repo, start_server):
    receiver = HttpReceiver()
    try:
        server = start_server(repo, *_args(receiver.endpoint, "--trace-config", "opentelemetry,protocol=http/protobuf",
                                           "--trace-config", "opentelemetry,resource=deployment.environment=test"))
        header, trace_id, _ = _traceparent()
        _infer(server, "grpc", headers={"traceparent": header})
        got = _trace_of(receiver, trace_id, CHILDREN)
        assert got["decode"][0].resource["deployment.environment"] == "test"
    finally:
        receiver.stop()


def test_an_unreachable_collector_does_not_touch_serving(repo, start_server):
    (closed,) = free_ports(1)  # nothing listens there
    server = start_server(repo, *_args(f"127.0.0.1:{closed}"))
    want = None
    for i in range(20):
        header, _, _ = _traceparent()
        for protocol in ("http", "grpc"):
            out = _infer(server, protocol, headers={"traceparent": header})
            want = out if want is None else want
            np.testing.assert_array_equal(out, want)
    assert server.status("/v2/health/ready") == 200
    assert server.stop() == 0


def test_trace_config_parsing_and_env():
    s = parse_trace_config(["mode=opentelemetry", "rate=100", "opentelemetry,url=collector:4318/v1/traces",
                            "opentelemetry,protocol=http/protobuf"], {})
    assert (s.enabled, s.ratio, s.protocol) == (True, 0.01, "http/protobuf")
    assert exporter_endpoint(s) == "http://collector:4318/v1/traces"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
           "OTEL_TRACES_SAMPLER_ARG": "0.25", "OTEL_SERVICE_NAME": "svc"}
    s = parse_trace_config(["mode=opentelemetry"], env)
    assert (s.ratio, s.endpoint, dict(s.resource)["service.name"]) == (0.25, "http://c:4317", "svc")
    assert parse_trace_config(["ratio=0.5"], env).ratio == 0.5, "a flag wins over the environment"
    assert exporter_endpoint(TraceSettings(endpoint="c:4318", protocol="http/protobuf")) == "http://c:4318/v1/traces"
    assert exporter_endpoint(TraceSettings(endpoint="c:4317")) == "http://c:4317"
    assert not parse_trace_config(["mode=opentelemetry"], {"OTEL_SDK_DISABLED": "true"}).enabled
    assert not parse_trace_config([], {}).enabled
    for bad, message in [
        ("mode=jaeger", "mode must be one of off, opentelemetry, got 'jaeger'"),
        ("rate=0", "'rate=0': expected a whole number > 0, got '0'"),
        ("ratio=2", "expected a number between 0 and 1, got '2'"),
        ("level=TENSORS", "TENSORS is not supported"),
        ("opentelemetry,protocol=thrift", "protocol must be one of grpc, http/protobuf"),
        ("opentelemetry,color=red", "unknown opentelemetry setting 'color'"),
        ("triton,file=/tmp/t.json", "Triton's own trace files are not supported"),
        ("verbose", "expected [opentelemetry,]key=value"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_trace_config([bad], {})
    with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER='jaeger_remote' is not supported"):
        parse_trace_config([], {"OTEL_TRACES_SAMPLER": "jaeger_remote"})
    assert plan_update({"trace_rate": ["4"], "trace_level": ["OFF"]}, TraceSettings()) == {"ratio": 0.25, "level": "OFF"}
    assert plan_update({"trace_rate": []}, TraceSettings(ratio=0.5)) == {"ratio": 0.5}


def test_a_bad_trace_flag_is_one_line_and_exit_2(repo, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "modelship_server", "--model-repository", str(repo),
                        "--trace-config", "rate=often"], capture_output=True, text=True, timeout=60,
                       env={**os.environ})
    assert r.returncode == 2
    assert "--trace-config 'rate=often': expected a whole number > 0, got 'often'" in r.stderr
    assert "Traceback" not in r.stderr


def test_sampling_decisions_follow_the_parent_then_the_ratio():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from modelship_server.tracing import Tracer

    exporter = InMemorySpanExporter()
    tracer = Tracer(TraceSettings(mode="opentelemetry", ratio=1.0), exporter=exporter)
    try:
        unsampled, _, _ = _traceparent(sampled=False)
        sampled, trace_id, span_id = _traceparent()
        assert tracer.start("r", unsampled, None, {}) is None, "a caller's unsampled flag wins over ratio 1"
        t = tracer.start("r", sampled, "vendor=1", {})
        assert t is not None and format(t.root.get_span_context().trace_id, "032x") == trace_id
        assert format(t.root.parent.span_id, "016x") == span_id
        assert t.root.get_span_context().trace_state.get("vendor") == "1"
        assert tracer.start("r", "garbage", None, {}) is not None, "a malformed traceparent is ignored: a root"
        tracer.update({"trace_rate": ["1000000"]})
        assert tracer.start("r", sampled, None, {}) is not None, "a sampled caller is followed at any ratio"
        tracer.update({"trace_level": ["OFF"]})
        assert tracer.start("r", sampled, None, {}) is None
    finally:
        tracer.shutdown()


def test_a_server_without_tracing_reports_it_off_and_refuses_changes():
    from modelship_server.dataplane import DataPlane
    from modelship_server.errors import InvalidInput
    from modelship_server.metrics import Metrics
    from modelship_server.registry import Registry

    metrics = Metrics()
    dp = DataPlane(Registry(metrics), metrics)
    assert dp.trace_setting()["trace_level"] == ["OFF"]
    with pytest.raises(InvalidInput, match="tracing is off on this server; start it with --trace-config mode=opentelemetry"):
        dp.trace_setting("", {"trace_level": ["TIMESTAMPS"]})


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_failed_request_is_traced_with_its_error(server, receiver, protocol):
    header, trace_id, caller_span = _traceparent()
    with pytest.raises(InferenceServerException, match="nope"):
        _infer(server, protocol, model="nope", headers={"traceparent": header})

    def root():
        spans = [s for s in receiver.spans(trace_id) if s.parent_span_id == caller_span]
        return spans[0] if spans else None

    span = wait_for(f"the failed request's span in trace {trace_id}", root, timeout=30, interval=0.1)
    assert span.status_code == 2 and "nope" in span.status_message  # STATUS_CODE_ERROR, the client's message
    metadata = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert "trace" in metadata.get_server_metadata().extensions
    finally:
        metadata.close()
