"""tritonclient (HTTP and gRPC, unmodified) against the real server: health, metadata,
config, repository index, statistics, and outputs equal to direct ONNX Runtime runs."""

from __future__ import annotations

import gzip
import json
import re
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelship_server import samples

MLP_CONFIG = """
max_batch_size: 16
dynamic_batching { max_queue_delay_microseconds: 5000 preferred_batch_size: [ 8, 16 ] }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    r = tmp_path_factory.mktemp("repo")
    samples.write_model(r, "mlp", samples.mlp(), MLP_CONFIG)
    samples.write_model(r, "auto_mlp", samples.mlp(seed=3))  # no config: derived from ONNX
    samples.write_model(r, "multi", samples.multi_io(), "max_batch_size: 8\n")
    samples.write_model(r, "strings", samples.strings())
    samples.write_model(r, "nobatch", samples.mlp(seed=4), "max_batch_size: 0\n")
    samples.write_model(r, "versioned", samples.mlp(seed=5), version=1)
    samples.write_model(r, "versioned", samples.mlp(seed=6), version=2)
    samples.write_model(r, "two_versions", samples.mlp(seed=7), "version_policy: { all: {} }\n", version=1)
    samples.write_model(r, "two_versions", samples.mlp(seed=8), version=3)
    return r


@pytest.fixture(scope="module")
def server(repo, module_server_factory):
    return module_server_factory(repo)


@pytest.fixture
def http(server):
    c = httpclient.InferenceServerClient(server.http_url, concurrency=16)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def grpc(server):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        yield c
    finally:
        c.close()


def ort_run(repo, model, feeds, version="1"):
    sess = ort.InferenceSession(str(repo / model / version / "model.onnx"))
    return sess.run(None, feeds)


def test_health_and_server_metadata(http, grpc):
    assert http.is_server_live() and http.is_server_ready()
    assert grpc.is_server_live() and grpc.is_server_ready()
    md = http.get_server_metadata()
    assert md["name"] == "modelship"
    assert "binary_tensor_data" in md["extensions"] and "statistics" in md["extensions"]
    gmd = grpc.get_server_metadata()
    assert gmd.name == "modelship" and "binary_tensor_data" in gmd.extensions


def test_model_ready_and_missing_model(http, grpc):
    assert http.is_model_ready("mlp") and grpc.is_model_ready("mlp")
    assert http.is_model_ready("mlp", "1") and grpc.is_model_ready("mlp", "1")
    # A missing model is "not ready", not an error (KServe's and MLServer's gRPC raise here).
    assert grpc.is_model_ready("no_such_model") is False
    assert http.is_model_ready("no_such_model") is False
    assert grpc.is_model_ready("mlp", "7") is False


def test_model_metadata(http, grpc):
    md = http.get_model_metadata("mlp")
    assert md["name"] == "mlp" and md["versions"] == ["1"] and md["platform"] == "onnxruntime_onnx"
    assert md["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 64]}]
    assert md["outputs"] == [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 10]}]
    g = grpc.get_model_metadata("multi")
    assert [(t.name, t.datatype, list(t.shape)) for t in g.inputs] == [("x", "FP32", [-1, 4]), ("k", "INT64", [-1, 1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in g.outputs] == [("y", "FP32", [-1, 4]), ("flag", "BOOL", [-1, 1])]
    nb = http.get_model_metadata("nobatch")
    assert nb["inputs"][0]["shape"] == [-1, 64]  # no batching: the ONNX dims as they are


def test_model_config_both_protocols(http, grpc):
    cfg = http.get_model_config("mlp")
    assert cfg["name"] == "mlp" and cfg["max_batch_size"] == 16
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [8, 16]
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 5000
    assert cfg["input"] == [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [64]}]
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU"
    g = grpc.get_model_config("mlp").config
    assert g.max_batch_size == 16 and list(g.input[0].dims) == [64]
    # Derived from the ONNX model (no config.pbtxt): batching with dynamic batching on.
    auto = grpc.get_model_config("auto_mlp", as_json=True)["config"]
    assert auto["max_batch_size"] == 4 and "dynamic_batching" in auto
    assert auto["output"][0]["name"] == "OUTPUT0"
    assert http.get_model_config("nobatch").get("max_batch_size", 0) == 0
    with pytest.raises(InferenceServerException) as e:
        grpc.get_model_config("nope")
    assert "NOT_FOUND" in str(e.value.status())


def test_repository_index_and_versions(http, grpc):
    index = {(m["name"], m["version"]): m["state"] for m in http.get_model_repository_index()}
    assert index[("mlp", "1")] == "READY"
    assert ("versioned", "2") in index and ("versioned", "1") not in index  # latest only by default
    assert ("two_versions", "1") in index and ("two_versions", "3") in index  # version_policy all
    g = grpc.get_model_repository_index()
    assert {(m.name, m.version) for m in g.models} == set(index)
    assert http.get_model_metadata("two_versions")["versions"] == ["1", "3"]


def _mlp_input(batch, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 64)).astype(np.float32)


@pytest.mark.parametrize("binary", [True, False])
def test_http_infer_matches_onnxruntime(http, repo, binary):
    x = _mlp_input(3)
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    res = http.infer("mlp", [inp], outputs=out, request_id="req-1")
    expected = ort_run(repo, "mlp", {"INPUT0": x})[0]
    np.testing.assert_allclose(res.as_numpy("OUTPUT0"), expected, rtol=1e-5, atol=1e-6)
    assert res.get_response()["id"] == "req-1"
    if binary:
        assert res.get_output("OUTPUT0")["parameters"]["binary_data_size"] == expected.nbytes
    else:
        assert "data" in res.get_output("OUTPUT0")


def test_http_default_outputs_and_gzip(http, repo):
    x = _mlp_input(2, seed=1)
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = http.infer("auto_mlp", [inp], request_compression_algorithm="gzip",
                     response_compression_algorithm="gzip")
    np.testing.assert_allclose(res.as_numpy("OUTPUT0"), ort_run(repo, "auto_mlp", {"INPUT0": x})[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch, compressed", [(2, False), (16, True)])
def test_a_response_is_compressed_only_when_it_is_worth_it(server, batch, compressed):
    """Accept-Encoding: gzip (aiohttp and requests send it by default) compresses bodies of at least
    COMPRESS_MIN_BYTES; a small answer goes as it is (zlib's set-up cost ~38 us to save ~45 bytes)."""
    from modelship_server.protocol.http import COMPRESS_MIN_BYTES

    x = _mlp_input(batch, seed=4)
    body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}]}).encode()
    answers = {}
    for encoding in ("gzip", "identity"):
        req = urllib.request.Request(f"http://{server.http_url}/v2/models/mlp/infer", data=body,
                                     headers={"Accept-Encoding": encoding, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            raw, got = r.read(), r.headers.get("Content-Encoding")
        answers[encoding] = json.loads(gzip.decompress(raw) if got == "gzip" else raw)
        if encoding == "gzip":
            assert (got == "gzip") == compressed, (batch, got)
            assert (len(gzip.decompress(raw)) if got else len(raw)) >= COMPRESS_MIN_BYTES or not compressed
    assert answers["gzip"] == answers["identity"]


def test_grpc_infer_matches_onnxruntime(grpc, repo):
    x = _mlp_input(5, seed=2)
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = grpc.infer("mlp", [inp], request_id="g-1")
    np.testing.assert_allclose(res.as_numpy("OUTPUT0"), ort_run(repo, "mlp", {"INPUT0": x})[0], rtol=1e-5, atol=1e-6)
    assert res.get_response().id == "g-1"


def test_multi_io_and_requested_outputs(http, grpc, repo):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    k = np.array([[3], [-1]], dtype=np.int64)
    y, flag = ort_run(repo, "multi", {"x": x, "k": k})
    for client, mod in ((http, httpclient), (grpc, grpcclient)):
        ix = mod.InferInput("x", [2, 4], "FP32")
        ix.set_data_from_numpy(x)
        ik = mod.InferInput("k", [2, 1], "INT64")
        ik.set_data_from_numpy(k)
        res = client.infer("multi", [ix, ik], outputs=[mod.InferRequestedOutput("flag")])
        np.testing.assert_array_equal(res.as_numpy("flag"), flag)
        assert res.as_numpy("y") is None  # only what was asked for
        res = client.infer("multi", [ix, ik])
        np.testing.assert_allclose(res.as_numpy("y"), y)


def test_versioned_infer(http, repo):
    x = _mlp_input(1, seed=3)
    inp = httpclient.InferInput("INPUT0", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    for version in ("1", "3"):
        res = http.infer("two_versions", [inp], model_version=version)
        np.testing.assert_allclose(res.as_numpy("OUTPUT0"), ort_run(repo, "two_versions", {"INPUT0": x}, version)[0], rtol=1e-5, atol=1e-6)
    res = http.infer("two_versions", [inp])  # no version: the latest
    np.testing.assert_allclose(res.as_numpy("OUTPUT0"), ort_run(repo, "two_versions", {"INPUT0": x}, "3")[0], rtol=1e-5, atol=1e-6)


def test_nobatch_model(grpc, repo):
    x = _mlp_input(7, seed=4)
    inp = grpcclient.InferInput("INPUT0", [7, 64], "FP32")
    inp.set_data_from_numpy(x)
    res = grpc.infer("nobatch", [inp])
    np.testing.assert_allclose(res.as_numpy("OUTPUT0"), ort_run(repo, "nobatch", {"INPUT0": x})[0], rtol=1e-5, atol=1e-6)


def test_bytes_tensors(http, grpc):
    text = np.array([["héllo".encode()], [b"world"]], dtype=object)
    for client, mod, binary in ((http, httpclient, True), (http, httpclient, False), (grpc, grpcclient, None)):
        inp = mod.InferInput("text", [2, 1], "BYTES")
        if binary is None:
            inp.set_data_from_numpy(text)
            res = client.infer("strings", [inp])
        else:
            inp.set_data_from_numpy(text, binary_data=binary)
            res = client.infer("strings", [inp], outputs=[mod.InferRequestedOutput("echo", binary_data=binary)])
        got = res.as_numpy("echo")
        assert [v if isinstance(v, bytes) else v.encode() for v in got.ravel()] == ["héllo".encode(), b"world"]


def test_grpc_streaming(grpc, repo):
    import queue

    results: queue.Queue = queue.Queue()
    grpc.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        x = _mlp_input(1, seed=9)
        inp = grpcclient.InferInput("INPUT0", [1, 64], "FP32")
        inp.set_data_from_numpy(x)
        grpc.async_stream_infer("mlp", [inp])
        result, error = results.get(timeout=10)
    finally:
        grpc.stop_stream()
    assert error is None
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), ort_run(repo, "mlp", {"INPUT0": x})[0], rtol=1e-5, atol=1e-6)


def test_concurrency_forms_batches_and_statistics(server, repo):
    """16 concurrent clients: the batch-size histogram and Triton statistics show batches > 1."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        xs = [_mlp_input(1, seed=100 + i) for i in range(64)]
        done: list = []
        import threading

        lock = threading.Lock()

        def callback(i, result, error):
            with lock:
                done.append((i, result, error))

        for i, x in enumerate(xs):
            inp = grpcclient.InferInput("INPUT0", [1, 64], "FP32")
            inp.set_data_from_numpy(x)
            client.async_infer("mlp", [inp], callback=lambda result, error, i=i: callback(i, result, error))
        import time

        deadline = time.monotonic() + 30
        while len(done) < len(xs) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(done) == len(xs)
        sess = ort.InferenceSession(str(repo / "mlp" / "1" / "model.onnx"))
        for i, result, error in done:
            assert error is None, error
            # Each request gets its own rows back, not a neighbour's.
            np.testing.assert_allclose(result.as_numpy("OUTPUT0"), sess.run(None, {"INPUT0": xs[i]})[0], rtol=1e-5, atol=1e-6)
        stats = client.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
    finally:
        client.close()
    sizes = [int(b["batch_size"]) for b in stats["batch_stats"]]
    assert max(sizes) > 1, sizes
    assert int(stats["execution_count"]) < int(stats["inference_count"])

    text = server.metrics()
    count = float(re.search(r'modelship_batch_size_count\{model="mlp",version="1"\} (\S+)', text).group(1))
    le1 = float(re.search(r'modelship_batch_size_bucket\{le="1.0",model="mlp",version="1"\} (\S+)', text).group(1))
    assert count > le1, f"every batch had size 1: count={count} le1={le1}"


def test_statistics_both_protocols(http, grpc):
    x = _mlp_input(1)
    inp = httpclient.InferInput("INPUT0", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    http.infer("versioned", [inp])
    s = http.get_inference_statistics("versioned")["model_stats"][0]
    assert s["name"] == "versioned" and s["version"] == "2"
    assert s["inference_stats"]["success"]["count"] >= 1 and s["inference_stats"]["success"]["ns"] > 0
    assert s["inference_stats"]["compute_infer"]["count"] >= 1
    g = grpc.get_inference_statistics("versioned")
    assert g.model_stats[0].inference_stats.success.count >= 1
    everything = http.get_inference_statistics()
    assert {m["name"] for m in everything["model_stats"]} >= {"mlp", "multi", "versioned"}


def test_metrics_names(server, http):
    x = _mlp_input(1)
    inp = httpclient.InferInput("INPUT0", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    http.infer("auto_mlp", [inp])
    text = server.metrics()
    for name in (
        'modelship_inference_requests_total{model="auto_mlp",outcome="success",protocol="http",version="1"}',
        "modelship_request_duration_seconds_bucket", "modelship_queue_duration_seconds_bucket",
        "modelship_compute_duration_seconds_bucket", "modelship_batch_size_bucket",
        'modelship_inflight_requests{model="auto_mlp",version="1"}', "modelship_model_load_duration_seconds",
        'modelship_model_ready{model="mlp",version="1"} 1.0', "modelship_queue_depth",
    ):
        assert name in text, name


def test_raw_json_request_without_tritonclient(server):
    """A plain KServe v2 JSON request, as curl or any other client would send it."""
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [[1, 2, 3, 4]]},
                                  {"name": "k", "datatype": "INT64", "shape": [1, 1], "data": [2]}]}).encode()
    req = urllib.request.Request(f"http://{server.http_url}/v2/models/multi/infer", data=gzip.compress(body),
                                 headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        doc = json.loads(r.read())
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["y"]["data"] == [2.0, 4.0, 6.0, 8.0] and out["flag"]["data"] == [True]
    assert doc["model_name"] == "multi" and doc["model_version"] == "1"
