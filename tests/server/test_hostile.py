"""Issue 13's table, one regression test per row, against the real server process.

Each of these failed on main at ee86cee (the row's "what happened") and passes
now. No assertion is about elapsed time: where the old failure was slowness or
memory, the test asserts what the server said (a 414, a message that proves the
decoder stopped early), how much CPU the server process spent (work done, not
wall time), or how much its RSS grew. Waits are bounded by deadlines only.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time

import grpc as grpclib
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from modelship_server import samples

from .procinfo import cpu_seconds, rss_bytes

SLOW_CONFIG = """
max_batch_size: 1
dynamic_batching { default_queue_policy { max_queue_size: 1 } }
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""
BUDGET = 96 * 1024**2


@pytest.fixture(scope="module")
def server(tmp_path_factory, module_server_factory):
    repo = tmp_path_factory.mktemp("hostile")
    samples.write_model(repo, "strings", samples.strings(), "max_batch_size: 8\n")
    samples.write_model(repo, "identity", samples.identity(), "max_batch_size: 8\n")
    samples.write_model(repo, "embedding", samples.embedding(),
                        "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 300000 }\n")
    samples.write_model(repo, "broadcast", samples.broadcast_add(), "max_batch_size: 8\n")
    samples.write_model(repo, "slow", samples.slow(size=512, rows=1024, repeats=96), SLOW_CONFIG)
    return module_server_factory(
        repo, "--max-inflight-bytes", str(BUDGET), "--http-header-timeout", "1", "--http-idle-timeout", "3",
    )


def request(server, method, path, body=b"", headers=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


def infer_json(server, model, inputs, **extra):
    return request(server, "POST", f"/v2/models/{model}/infer", json.dumps({"inputs": inputs, **extra}).encode())


def binary_body(inputs: list[tuple[dict, bytes]]) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [dict(t, parameters={"binary_data_size": len(b)}) for t, b in inputs]}).encode()
    return header + b"".join(b for _, b in inputs), {"Inference-Header-Content-Length": str(len(header))}


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


def assert_live(server):
    assert request(server, "GET", "/v2/health/live", timeout=10)[0] == 200


# -- row 1: 16 MiB of empty BYTES strings declared [1, 1] ------------------------------


def test_row1_huge_bytes_tensor_is_refused_after_counting_past_its_shape(server):
    blob = struct.pack("<I", 0) * (4 * 1024 * 1024)  # 4 Mi empty strings, 16 MiB
    body, headers = binary_body([({"name": "text", "datatype": "BYTES", "shape": [1, 1]}, blob)])
    before = cpu_seconds(server.proc.pid)
    status, payload, _ = request(server, "POST", "/v2/models/strings/infer", body, headers)
    spent = cpu_seconds(server.proc.pid) - before
    assert status == 400
    # The old decoder split all 4 Mi elements first, then said "got 4194304".
    assert error_of(payload).startswith("input 'text': shape needs 1 elements, got more"), payload
    assert spent < 2.0, f"the server spent {spent:.2f} s of CPU on one refused request"
    assert_live(server)


# -- row 2: pipelined 1 MiB requests, responses never read ------------------------------


def test_row2_unread_pipelined_responses_do_not_grow_memory(server):
    row = np.ones((1, 256 * 1024), np.float32).tobytes()  # 1 MiB in, 1 MiB back
    body, headers = binary_body([({"name": "x", "datatype": "FP32", "shape": [1, 256 * 1024]}, row)])
    head = (b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"Inference-Header-Content-Length: %s\r\nContent-Length: %d\r\n\r\n"
            % (headers["Inference-Header-Content-Length"].encode(), len(body)))
    one = head + body
    rss0 = rss_bytes(server.proc.pid)
    s = socket.create_connection(("127.0.0.1", server.http_port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.settimeout(2.0)
    sent = 0
    try:
        for _ in range(200):  # 200 MiB offered; the old server read and answered them all into memory
            s.sendall(one)
            sent += 1
    except (socket.timeout, OSError):
        pass  # the server stopped reading: backpressure
    grown = rss_bytes(server.proc.pid) - rss0
    s.close()
    assert sent < 200, "the server kept reading requests whose responses were never read"
    assert grown < 80 * 1024**2, f"RSS grew {grown / 2**20:.0f} MiB for one connection"
    assert_live(server)


# -- row 3: a 96 MiB URL; slow half-open connections ------------------------------------


def test_row3_long_url_gets_414_without_buffering_it(server):
    rss0 = rss_bytes(server.proc.pid)
    s = socket.create_connection(("127.0.0.1", server.http_port))
    s.settimeout(10)
    reply = b""
    try:
        s.sendall(b"GET /v2/" + b"a" * (1024 * 1024))
        chunk = b"a" * (1024 * 1024)
        for _ in range(95):
            s.sendall(chunk)
    except OSError:
        pass  # answered and closed: the rest is not wanted
    try:
        while not reply.endswith(b"}"):
            data = s.recv(65536)
            if not data:
                break
            reply += data
    except OSError:
        pass
    s.close()
    assert reply.startswith(b"HTTP/1.1 414 URI Too Long"), reply[:200]
    assert rss_bytes(server.proc.pid) - rss0 < 32 * 1024**2
    status, _, _ = request(server, "GET", "/v2/health/ready")
    assert status == 200


def test_row3_slow_half_open_connections_are_closed(server):
    conns = []
    try:
        for i in range(150):
            s = socket.create_connection(("127.0.0.1", server.http_port))
            if i % 2:
                s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # headers never end
            conns.append(s)
        # Readiness answers while they are held.
        assert request(server, "GET", "/v2/health/ready")[0] == 200
        deadline = time.monotonic() + 30
        closed = 0
        for s in conns:
            try:
                while True:  # read a 408 answer, if any, up to the server's close
                    s.settimeout(max(0.1, deadline - time.monotonic()))
                    if not s.recv(65536):
                        closed += 1
                        break
            except ConnectionResetError:
                closed += 1
            except socket.timeout:
                pass
        assert closed == 150, f"{150 - closed} of 150 slow connections still held"
    finally:
        for s in conns:
            s.close()


# -- row 4: large gRPC requests together pass the byte budget ----------------------------


def test_row4_byte_budget_is_shared_and_sheds_before_decoding(server):
    # An HTTP upload announces 30 MiB (90 MiB of the 96 MiB budget) and stalls mid-body.
    up = socket.create_connection(("127.0.0.1", server.http_port))
    try:
        up.sendall(b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                   % (30 * 1024**2) + b"{" * 1024)
        assert request(server, "GET", "/v2/health/live")[0] == 200  # the upload's headers are parsed
        c = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            x = np.ones((1, 512 * 1024), np.float32)  # 2 MiB: over what is left
            inp = grpcclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            with pytest.raises(InferenceServerException) as err:
                c.infer("identity", [inp])
            assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
            assert "(--max-inflight-bytes); retry later" in err.value.message()
            # The refusal carries a retry-after trailer, as HTTP's 503 carries Retry-After.
            msg = service_pb2.ModelInferRequest(model_name="identity")
            msg.inputs.add(name="x", datatype="FP32", shape=[1, 512 * 1024])
            msg.raw_input_contents.append(x.tobytes())
            with grpclib.insecure_channel(server.grpc_url) as channel:
                raw_call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
                with pytest.raises(grpclib.RpcError) as raw_err:
                    raw_call(msg.SerializeToString(), timeout=30)
            assert raw_err.value.code() == grpclib.StatusCode.RESOURCE_EXHAUSTED
            assert ("retry-after", "1") in tuple(raw_err.value.trailing_metadata())
            # Over HTTP too, answered before its body is read.
            status, payload, headers = request(
                server, "POST", "/v2/models/identity/infer", b"x" * (2 * 1024**2))
            assert status == 503 and headers.get("Retry-After") == "1", (status, payload[:200])
            # Small requests still pass: large ones may only use 7/8 of the budget.
            small = np.ones((1, 4), np.float32)
            inp = grpcclient.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(small)
            assert np.array_equal(c.infer("identity", [inp]).as_numpy("y"), small)
        finally:
            c.close()
    finally:
        up.close()
    # The stalled upload's reservation is given back when its connection goes.
    deadline = time.monotonic() + 10
    while 'modelship_inflight_request_bytes 0.0' not in server.metrics() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "modelship_inflight_request_bytes 0.0" in server.metrics()
    assert "modelship_budget_shed_requests_total" in server.metrics()


def test_row4_concurrent_large_grpc_requests_are_answered_or_shed(server):
    x = np.ones((1, 3 * 1024 * 1024), np.float32)  # 12 MiB each; eight of them cost 288 MiB > 96 MiB
    rss0 = rss_bytes(server.proc.pid)
    codes: list[str] = []
    lock = threading.Lock()

    def call():
        c = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            inp = grpcclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            out = c.infer("identity", [inp]).as_numpy("y")
            code = "OK" if np.array_equal(out, x) else "WRONG"
        except InferenceServerException as e:
            code = e.status()
        finally:
            c.close()
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(codes) == 8 and set(codes) <= {"OK", "StatusCode.RESOURCE_EXHAUSTED"}, codes
    assert "OK" in codes
    assert rss_bytes(server.proc.pid) - rss0 < BUDGET + 8 * 24 * 1024**2


# -- row 5: one bad request batched with good ones --------------------------------------


def test_row5_a_bad_request_fails_alone_in_its_batch(server):
    def ids(v):
        return [{"name": "ids", "datatype": "INT64", "shape": [1, 2], "data": [v, 1]}]

    results: dict[int, tuple] = {}

    def call(i, v):
        results[i] = infer_json(server, "embedding", ids(v))

    threads = [threading.Thread(target=call, args=(i, v)) for i, v in enumerate([3, 1000, 7])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results[0][0] == 200 and results[2][0] == 200, (results[0][:2], results[2][:2])
    assert json.loads(results[0][1])["outputs"][0]["data"][:4] == [12.0, 13.0, 14.0, 15.0]
    assert results[1][0] == 400, results[1][:2]
    assert "inputs 'ids' [1, 2]" in error_of(results[1][1])


# -- row 6: input errors that were 500 / INTERNAL / UNKNOWN -----------------------------

DEEP = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": ' + b"[" * 5000 + b"]" * 5000 + b"}]}"
ROW6_HTTP = [
    ("deep JSON", "identity", DEEP, "not valid JSON"),
    ("deep data list", "identity",
     b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": ' + b"[" * 900 + b"1" + b"]" * 900
     + b"}]}", "input 'x'"),
    ("BYTES [null]", "strings",
     json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [None]}]}).encode(),
     "input 'text': expected strings for BYTES, got NoneType None"),
    ("lone surrogate in BYTES", "strings",
     b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["\\ud800"]}]}',
     "input 'text': a BYTES element is not valid Unicode text"),
    ("lone surrogate in id", "identity",
     b'{"id": "\\udc00", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1]}]}',
     "request 'id' '\\\\udc00' is not valid Unicode text"),
    ("zero-size with a huge dimension", "identity",
     json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 2**62], "data": []}]}).encode(),
     "input 'x'"),
    ("dimension over int64", "identity",
     json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2**64], "data": []}]}).encode(),
     "input 'x': dimension 18446744073709551616 is over the limit"),
    ("rank 65", "identity",
     json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1] * 65, "data": [1]}]}).encode(),
     "input 'x': rank 65 is over the limit of 64 dimensions"),
    ("shapes that do not broadcast", "broadcast",
     json.dumps({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
                            {"name": "b", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}).encode(),
     "the model cannot run on inputs 'a' [1, 3], 'b' [1, 2]"),
]


@pytest.mark.parametrize("name,model,body,message", ROW6_HTTP, ids=[r[0] for r in ROW6_HTTP])
def test_row6_http_input_errors_are_400(server, name, model, body, message):
    status, payload, _ = request(server, "POST", f"/v2/models/{model}/infer", body)
    assert status == 400, (status, payload[:300])
    assert message in error_of(payload), payload[:300]


def test_zero_size_tensor_round_trips(server):
    # Found by the long fuzz run: an empty output could not be written as binary data (500 / INTERNAL).
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 0], "data": []}],
                       "parameters": {"binary_data_output": True}}).encode()
    status, payload, headers = request(server, "POST", "/v2/models/identity/infer", body)
    assert status == 200, payload
    header = json.loads(payload[:int(headers["Inference-Header-Content-Length"])])
    assert header["outputs"][0]["shape"] == [2, 0]
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 0
    c = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inp = grpcclient.InferInput("x", [2, 0], "FP32")
        inp.set_data_from_numpy(np.zeros((2, 0), np.float32))
        assert c.infer("identity", [inp]).as_numpy("y").shape == (2, 0)
    finally:
        c.close()


def test_row6_non_utf8_bytes_to_a_string_model(server):
    body, headers = binary_body([({"name": "text", "datatype": "BYTES", "shape": [1, 1]},
                                  struct.pack("<I", 2) + b"\xff\xfe")])
    status, payload, _ = request(server, "POST", "/v2/models/strings/infer", body, headers)
    assert status == 400, payload
    assert "input 'text': element 0 is not UTF-8 text" in error_of(payload)
    c = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inp = grpcclient.InferInput("text", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b"\xff\xfe"]], dtype=object))
        with pytest.raises(InferenceServerException) as err:
            c.infer("strings", [inp])
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "input 'text'" in err.value.message()
    finally:
        c.close()


def test_row6_grpc_input_errors_are_invalid_argument(server):
    channel = grpclib.insecure_channel(server.grpc_url)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                request_serializer=lambda b: b, response_deserializer=lambda b: b)
    good = service_pb2.ModelInferRequest(model_name="identity")
    t = good.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    t.contents.fp32_contents.append(1.0)
    rank = service_pb2.ModelInferRequest(model_name="identity")
    rank.inputs.add(name="x", datatype="FP32", shape=[1] * 65)
    zero = service_pb2.ModelInferRequest(model_name="identity")
    zero.inputs.add(name="x", datatype="FP32", shape=[0, 2**62])
    zero.raw_input_contents.append(b"")
    bad_utf8_name = good.SerializeToString().replace(b"\x0a\x01x", b"\x0a\x01\xff")  # input name b"\xff"
    cases = [
        ("not a protobuf", b"\xff\xff\xff\xff", "does not parse"),
        ("non-UTF-8 string field", bad_utf8_name, "does not parse"),
        ("rank 65", rank.SerializeToString(), "rank 65 is over the limit"),
        ("zero-size huge dimension", zero.SerializeToString(), "input 'x'"),
    ]
    try:
        assert infer(good.SerializeToString(), timeout=30)  # the good one works
        for name, raw, message in cases:
            with pytest.raises(grpclib.RpcError) as err:
                infer(raw, timeout=30)
            assert err.value.code() == grpclib.StatusCode.INVALID_ARGUMENT, (name, err.value)
            assert message in err.value.details(), (name, err.value.details())
    finally:
        channel.close()


def test_row6_input_errors_count_as_client_errors(server):
    before = server.metrics()
    infer_json(server, "identity", [{"name": "x", "datatype": "FP32", "shape": [1] * 65, "data": [1]}])
    status, _, _ = request(server, "POST", "/v2/models/identity/infer", DEEP)
    assert status == 400
    after = server.metrics()

    def count(text, outcome):
        key = f'modelship_inference_requests_total{{model="identity",outcome="{outcome}",protocol="http",version="1"}}'
        line = next((ln for ln in text.splitlines() if ln.startswith(key)), None)
        return float(line.split()[-1]) if line else 0.0

    assert count(after, "invalid") - count(before, "invalid") == 2
    assert count(after, "error") == count(before, "error")
    assert count(after, "success") == count(before, "success")


# -- row 7: one malformed message in ModelStreamInfer ------------------------------------


def test_row7_a_bad_stream_message_is_answered_and_the_stream_goes_on(server):
    good = service_pb2.ModelInferRequest(model_name="identity", id="good")
    t = good.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    t.contents.fp32_contents.extend([1.0, 2.0])
    wrong = service_pb2.ModelInferRequest(model_name="identity", id="wrong")
    wrong.inputs.add(name="x", datatype="FP32", shape=[1, 3]).contents.fp32_contents.append(1.0)
    messages = [good.SerializeToString(), b"\xff\xff\xff", wrong.SerializeToString(), good.SerializeToString()]
    channel = grpclib.insecure_channel(server.grpc_url)
    try:
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                       request_serializer=lambda b: b,
                                       response_deserializer=service_pb2.ModelStreamInferResponse.FromString)
        replies = list(stream(iter(messages), timeout=60))
    finally:
        channel.close()
    assert len(replies) == 4
    assert [r.error_message == "" for r in replies] == [True, False, False, True]
    assert "does not parse" in replies[1].error_message
    assert replies[2].infer_response.id == "wrong"
    assert "input 'x': shape [1, 3] needs 3 elements, got 1" in replies[2].error_message
    assert replies[3].infer_response.id == "good"


# -- row 8: shedding before decoding ----------------------------------------------------


def test_row8_a_full_queue_sheds_before_the_body_is_decoded(server):
    slow_body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 512],
                                        "data": [1.0] * 512}]}).encode()
    holders = [threading.Thread(target=request, args=(server, "POST", "/v2/models/slow/infer", slow_body))
               for _ in range(2)]  # one runs, one fills the queue of 1
    for t in holders:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = server.metrics()
            if 'modelship_queue_depth{model="slow",version="1"} 1.0' in m:
                break
            time.sleep(0.01)
        # Not even valid JSON: the old server decoded it first and answered 400.
        status, payload, headers = request(server, "POST", "/v2/models/slow/infer", b"{not json")
        assert status == 503, payload
        assert headers.get("Retry-After") == "1"
        assert "queue holds 1 requests (max_queue_size 1)" in error_of(payload)
    finally:
        for t in holders:
            t.join(120)


# -- row 9: Expect: 100-continue ----------------------------------------------------------


def test_row9_expect_100_continue_is_answered(server):
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}).encode()
    s = socket.create_connection(("127.0.0.1", server.http_port))
    s.settimeout(20)  # a deadline, not a measurement: the old server never sent 100
    try:
        s.sendall(b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        interim = s.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
        s.sendall(body)
        reply = s.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200 OK"), reply
    finally:
        s.close()
    # Too large: the final answer instead of 100, and the body is never sent.
    s = socket.create_connection(("127.0.0.1", server.http_port))
    s.settimeout(20)
    try:
        s.sendall(b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\n\r\n" % (100 * 1024**2))
        assert s.recv(65536).startswith(b"HTTP/1.1 413 Payload Too Large")
    finally:
        s.close()


# -- the limits the table implies --------------------------------------------------------


def test_header_fields_too_large_is_431(server):
    status, payload, _ = request(server, "GET", "/v2/health/live", headers={"X-Big": "a" * (70 * 1024)})
    assert status == 431 and "headers are larger than 65536 bytes" in error_of(payload)


def test_connection_limit(tmp_path, start_server):
    samples.write_model(tmp_path, "identity", samples.identity(), "max_batch_size: 8\n")
    srv = start_server(tmp_path, "--http-max-connections", "4")
    held = [socket.create_connection(("127.0.0.1", srv.http_port)) for _ in range(3)]
    try:
        # The fourth is the probe below; a fifth is refused with 503.
        extra = socket.create_connection(("127.0.0.1", srv.http_port))
        extra2 = socket.create_connection(("127.0.0.1", srv.http_port))
        extra2.settimeout(10)
        reply = extra2.recv(65536)
        assert reply.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in reply, reply
        extra.close()
        extra2.close()
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and srv.status("/v2/health/live") != 200:
        time.sleep(0.05)
    assert srv.status("/v2/health/live") == 200


def test_keep_alive_and_pipelining_still_work(server):
    s = socket.create_connection(("127.0.0.1", server.http_port))
    s.settimeout(20)
    try:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n" * 40)
        data = b""
        while data.count(b"HTTP/1.1 200 OK") < 40:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    finally:
        s.close()
    c = httpclient.InferenceServerClient(server.http_url, concurrency=2)
    try:
        inp = httpclient.InferInput("x", [1, 3], "FP32")
        inp.set_data_from_numpy(np.ones((1, 3), np.float32), binary_data=True)
        for _ in range(5):
            assert c.infer("identity", [inp]).as_numpy("y").tolist() == [[1.0, 1.0, 1.0]]
    finally:
        c.close()
