"""Bad requests: each gets its specific 400 (gRPC INVALID_ARGUMENT) naming the tensor and the
expected and actual values, never a 500, and the server keeps serving afterwards."""

from __future__ import annotations

import http.client
import json

import grpc as grpclib
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from modelship_server import samples


@pytest.fixture(scope="module")
def server(tmp_path_factory, module_server_factory):
    repo = tmp_path_factory.mktemp("repo")
    samples.write_model(repo, "multi", samples.multi_io(), "max_batch_size: 8\n")
    return module_server_factory(repo, "--http-max-body-size", "64Ki")


def post(server, path, body: bytes, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


X = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
K = {"name": "k", "datatype": "INT64", "shape": [1, 1], "data": [2]}


def req(*inputs, **extra):
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def with_(t, **changes):
    return {**t, **changes}


BAD_JSON = [
    ("not json", b"{inputs: nope", "request body is not valid JSON"),
    ("not an object", b"[1, 2]", "request body must be a JSON object, got list"),
    ("no inputs", b"{}", "request needs a non-empty 'inputs' list"),
    ("unknown input", req(X, K, {"name": "z", "datatype": "FP32", "shape": [1], "data": [1]}),
     "unknown input 'z' for model 'multi'; expected inputs: ['k', 'x']"),
    ("missing input", req(X), "model 'multi' needs inputs ['k']; the request has ['x']"),
    ("duplicate input", req(X, X, K), "input 'x' is given more than once"),
    ("wrong datatype", req(with_(X, datatype="INT32"), K), "input 'x': expected datatype FP32, got INT32"),
    ("unknown datatype", req(with_(X, datatype="FLOAT"), K), "input 'x': unknown datatype 'FLOAT'"),
    ("wrong rank", req(with_(X, shape=[4]), K),
     "input 'x': expected shape [-1, 4] (rank 2), got [4] (rank 1)"),
    ("wrong dimension", req(with_(X, shape=[1, 5], data=[1, 2, 3, 4, 5]), K),
     "input 'x': dimension 1 expected 4, got 5 (expected shape [-1, 4], got [1, 5])"),
    ("negative dim", req(with_(X, shape=[1, -4]), K), "input 'x': 'shape' must be a list of non-negative integers, got [1, -4]"),
    ("too few elements", req(with_(X, data=[1, 2, 3]), K), "input 'x': shape [1, 4] needs 4 elements, got 3"),
    ("too many elements", req(X, with_(K, data=[1, 2])), "input 'k': shape [1, 1] needs 1 elements, got 2"),
    ("string in FP32", req(with_(X, data=[1, 2, 3, "a"]), K), "input 'x': expected numbers for FP32, got str 'a'"),
    ("null in FP32", req(with_(X, data=[1, 2, None, 4]), K), "input 'x': expected numbers for FP32, got NoneType None"),
    ("bools in FP32", req(with_(X, data=[True, False, True, False]), K), "input 'x': expected numbers for FP32, got bool True"),
    ("float in INT64", req(X, with_(K, data=[1.5])), "input 'k': expected integers for INT64, got float 1.5"),
    ("ragged", req(with_(X, data=[[1, 2], [3]]), K), "input 'x': 'data' is a ragged nested list"),
    ("batch too large", req(with_(X, shape=[9, 4], data=[0] * 36), with_(K, shape=[9, 1], data=[1] * 9)),
     "input 'x': batch size 9 exceeds the model's max_batch_size 8"),
    ("batch mismatch", req(with_(X, shape=[2, 4], data=[0] * 8), K),
     "input 'k': batch size 1 differs from input 'x' batch size 2"),
    ("zero batch", req(with_(X, shape=[0, 4], data=[]), with_(K, shape=[0, 1], data=[])),
     "input 'x': batch size must be at least 1, got 0"),
    ("unknown output", req(X, K, outputs=[{"name": "nope"}]),
     "unknown output 'nope' for model 'multi'; expected outputs: ['flag', 'y']"),
    ("bad timeout", req(X, K, parameters={"timeout": "soon"}),
     "parameter 'timeout' must be a non-negative integer of microseconds, got 'soon'"),
    ("no data", req({"name": "x", "datatype": "FP32", "shape": [1, 4]}, K),
     "input 'x' has neither 'data' nor parameters.binary_data_size"),
]


@pytest.mark.parametrize("name,body,message", BAD_JSON, ids=[c[0] for c in BAD_JSON])
def test_bad_json_request(server, name, body, message):
    status, payload, _ = post(server, "/v2/models/multi/infer", body)
    assert status == 400, payload
    error = json.loads(payload)["error"]
    assert message in error, error


def _binary_body(inputs: list[dict], blobs: list[bytes]):
    header = json.dumps({"inputs": inputs}).encode()
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header))}


BAD_BINARY = [
    ("size vs shape", [with_(X, data=None) | {"parameters": {"binary_data_size": 12}}, K], [b"\0" * 12],
     "input 'x': shape [1, 4] of FP32 needs 16 bytes, got 12"),
    ("past the end", [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}, K],
     [b"\0" * 8], "input 'x': binary_data_size 16 runs past the end of the body (8 binary bytes left)"),
    ("trailing bytes", [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}, K],
     [b"\0" * 20], "body has 20 bytes of binary data after the JSON header but the inputs declare 16"),
]


@pytest.mark.parametrize("name,inputs,blobs,message", BAD_BINARY, ids=[c[0] for c in BAD_BINARY])
def test_bad_binary_request(server, name, inputs, blobs, message):
    inputs = [{k: v for k, v in t.items() if v is not None} for t in inputs]
    body, headers = _binary_body(inputs, blobs)
    status, payload, _ = post(server, "/v2/models/multi/infer", body, headers)
    assert status == 400, payload
    assert message in json.loads(payload)["error"]


def test_header_length_beyond_body(server):
    status, payload, _ = post(server, "/v2/models/multi/infer", req(X, K), {"Inference-Header-Content-Length": "99999"})
    assert status == 400
    assert "Inference-Header-Content-Length is 99999 but the body has" in json.loads(payload)["error"]


def test_unknown_model_and_version_are_404(server):
    status, payload, _ = post(server, "/v2/models/nope/infer", req(X, K))
    assert status == 404 and "unknown model 'nope'" in json.loads(payload)["error"]
    status, payload, _ = post(server, "/v2/models/multi/versions/9/infer", req(X, K))
    assert status == 404 and "unknown version '9' of model 'multi'" in json.loads(payload)["error"]
    c = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inp = grpcclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 4), np.float32))
        with pytest.raises(InferenceServerException) as e:
            c.infer("nope", [inp])
        assert e.value.status() == "StatusCode.NOT_FOUND" and "unknown model 'nope'" in e.value.message()
    finally:
        c.close()


def test_body_over_limit_is_413(server):
    big = np.zeros((8, 4), np.float32)
    body = json.dumps({"inputs": [with_(X, shape=[8, 4], data=big.ravel().tolist())], "pad": "x" * 70000}).encode()
    status, payload, _ = post(server, "/v2/models/multi/infer", body)
    assert status == 413
    assert "exceeds the limit of 65536 bytes" in json.loads(payload)["error"]


def test_grpc_message_over_limit(server):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inp = grpcclient.InferInput("x", [8, 4096], "FP32")
        inp.set_data_from_numpy(np.zeros((8, 4096), np.float32))
        with pytest.raises(InferenceServerException) as e:
            c.infer("multi", [inp])
        assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    finally:
        c.close()


def _raw_grpc(server, request):
    channel = grpclib.insecure_channel(server.grpc_url)
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpclib.RpcError) as e:
            stub.ModelInfer(request, timeout=10)
        return e.value
    finally:
        channel.close()


def _grpc_request(inputs, raw=None):
    r = service_pb2.ModelInferRequest(model_name="multi")
    for name, dt, shape, contents in inputs:
        t = r.inputs.add(name=name, datatype=dt, shape=shape)
        if contents:
            getattr(t.contents, contents[0]).extend(contents[1])
    if raw is not None:
        r.raw_input_contents.extend(raw)
    return r


BAD_GRPC = [
    ("wrong datatype", _grpc_request([("x", "FP64", [1, 4], None), ("k", "INT64", [1, 1], None)],
                                     [b"\0" * 32, b"\0" * 8]), "input 'x': expected datatype FP32, got FP64"),
    ("raw count", _grpc_request([("x", "FP32", [1, 4], None), ("k", "INT64", [1, 1], None)], [b"\0" * 16]),
     "raw_input_contents has 1 entries but there are 2 inputs"),
    ("raw size", _grpc_request([("x", "FP32", [1, 4], None), ("k", "INT64", [1, 1], None)], [b"\0" * 15, b"\0" * 8]),
     "input 'x': shape [1, 4] of FP32 needs 16 bytes, got 15"),
    ("contents count", _grpc_request([("x", "FP32", [1, 4], ("fp32_contents", [1.0, 2.0])),
                                      ("k", "INT64", [1, 1], ("int64_contents", [1]))]),
     "input 'x': shape [1, 4] needs 4 elements, got 2"),
    ("contents field", _grpc_request([("x", "FP32", [1, 4], ("int_contents", [1, 2, 3, 4])),
                                      ("k", "INT64", [1, 1], ("int64_contents", [1]))]),
     "input 'x': datatype FP32 expects contents in 'fp32_contents', got 'int_contents'"),
    ("dims", _grpc_request([("x", "FP32", [1, 3], ("fp32_contents", [1.0, 2.0, 3.0])),
                            ("k", "INT64", [1, 1], ("int64_contents", [1]))]),
     "input 'x': dimension 1 expected 4, got 3"),
]


@pytest.mark.parametrize("name,request_,message", BAD_GRPC, ids=[c[0] for c in BAD_GRPC])
def test_bad_grpc_request(server, name, request_, message):
    err = _raw_grpc(server, request_)
    assert err.code() == grpclib.StatusCode.INVALID_ARGUMENT
    assert message in err.details(), err.details()


def test_grpc_typed_contents_work(server):
    """The typed InferTensorContents path (not what tritonclient sends) also infers."""
    r = _grpc_request([("x", "FP32", [1, 4], ("fp32_contents", [1.0, 2.0, 3.0, 4.0])),
                       ("k", "INT64", [1, 1], ("int64_contents", [3]))])
    channel = grpclib.insecure_channel(server.grpc_url)
    try:
        resp = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(r, timeout=10)
    finally:
        channel.close()
    y = np.frombuffer(resp.raw_output_contents[[o.name for o in resp.outputs].index("y")], np.float32)
    assert y.tolist() == [3.0, 6.0, 9.0, 12.0]


def test_server_keeps_serving_and_counts_invalid(server):
    """After every bad request above the server is live, ready and correct."""
    c = httpclient.InferenceServerClient(server.http_url)
    try:
        assert c.is_server_live() and c.is_server_ready()
        ix = httpclient.InferInput("x", [1, 4], "FP32")
        ix.set_data_from_numpy(np.array([[1, 2, 3, 4]], np.float32))
        ik = httpclient.InferInput("k", [1, 1], "INT64")
        ik.set_data_from_numpy(np.array([[2]], np.int64))
        assert c.infer("multi", [ix, ik]).as_numpy("y").tolist() == [[2, 4, 6, 8]]
    finally:
        c.close()
    assert server.proc.poll() is None
    assert 'outcome="invalid"' in server.metrics()
    assert "Traceback" not in server.log()


def test_malformed_http_gets_400_and_server_survives(server):
    import socket

    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as s:
        s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 400")
    assert server.status("/v2/health/live") == 200
