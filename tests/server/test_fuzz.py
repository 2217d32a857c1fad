"""Property tests: generated HTTP JSON, HTTP binary and gRPC requests against the real server.

Whatever a request holds, the answer is one a client can cause (200, a 4xx
with an `error` message, a 503 with Retry-After; gRPC OK or a client-side code),
never a 5xx, INTERNAL or UNKNOWN, and the server stays live. A fixed seed
(derandomize) and a bounded number of examples keep CI at ~20 s; the long run
is `server_image/bench/hostile.py fuzz` (docs/server-benchmarks.md).
"""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings

from . import fuzzing

CI = settings(max_examples=150, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def server(tmp_path_factory, module_server_factory):
    repo = fuzzing.write_repository(tmp_path_factory.mktemp("fuzz"))
    srv = module_server_factory(repo, "--http-max-body-size", "1Mi")
    yield srv
    assert srv.proc.poll() is None, srv.log()[-3000:]
    log = srv.log()
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def http_probe(server):
    probe = fuzzing.HttpProbe(server.http_port)
    yield probe
    probe.close()


def test_http_json(server, http_probe):
    @CI
    @given(fuzzing.infer_json())
    def check(case):
        model, body, headers = case
        status, payload, got = http_probe.post(f"/v2/models/{model}/infer", body, headers)
        problem = fuzzing.http_verdict(status, payload, got, body)
        assert problem is None, f"{problem}\nrequest: {body[:500]!r}"

    check()
    assert server.status("/v2/health/live") == 200


def test_http_binary(server, http_probe):
    @CI
    @given(fuzzing.infer_binary())
    def check(case):
        model, body, headers = case
        status, payload, got = http_probe.post(f"/v2/models/{model}/infer", body, headers)
        problem = fuzzing.http_verdict(status, payload, got, body)
        assert problem is None, f"{problem}\nrequest: {body[:500]!r} {headers}"

    check()
    assert server.status("/v2/health/live") == 200


def test_grpc(server):
    channel = grpc.insecure_channel(server.grpc_url)
    call = fuzzing.grpc_call(channel)
    try:
        @CI
        @given(fuzzing.grpc_request())
        def check(raw):
            problem = fuzzing.grpc_verdict(call, raw)
            assert problem is None, f"{problem}\nrequest: {raw[:500]!r}"

        check()
    finally:
        channel.close()
    assert server.status("/v2/health/live") == 200
