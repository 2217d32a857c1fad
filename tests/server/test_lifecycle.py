"""Load shedding, timeouts, warm-up before readiness, draining on SIGTERM, load failures
and command-line mistakes, each against the real server process."""

from __future__ import annotations

import http.client
import json
import os
import urllib.request
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelship_server import samples

# ~0.3-1 s per run on one core: long enough to hold a request in flight.
SLOW = dict(size=512, rows=1024, repeats=96)
SLOW_CONFIG = """
max_batch_size: 1
dynamic_batching { default_queue_policy { max_queue_size: 2 } }
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""


def slow_repo(path):
    samples.write_model(path, "slow", samples.slow(**SLOW), SLOW_CONFIG)
    return path


def slow_body(value: float = 1.0) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 512],
                                   "data": [value] * 512}]}).encode()


def post(port, path, body, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body)
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


def burst(fn, n):
    results = [None] * n

    def run(i):
        results[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory, module_server_factory):
    return module_server_factory(slow_repo(tmp_path_factory.mktemp("slow")))


def test_http_sheds_load_when_queue_full(slow_server):
    results = burst(lambda i: post(slow_server.http_port, "/v2/models/slow/infer", slow_body()), 8)
    statuses = [r[0] for r in results]
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    assert set(statuses) <= {200, 503}, statuses
    shed = next(r for r in results if r[0] == 503)
    assert shed[2].get("Retry-After") == "1"
    assert "queue holds 2 requests (max_queue_size 2)" in json.loads(shed[1])["error"]
    assert 'outcome="shed"' in slow_server.metrics()


def test_grpc_sheds_load_when_queue_full(slow_server):
    def call(i):
        c = grpcclient.InferenceServerClient(slow_server.grpc_url)
        try:
            inp = grpcclient.InferInput("x", [1, 512], "FP32")
            inp.set_data_from_numpy(np.ones((1, 512), np.float32))
            c.infer("slow", [inp])
            return "OK"
        except InferenceServerException as e:
            return e.status()
        finally:
            c.close()

    codes = burst(call, 8)
    assert "OK" in codes and "StatusCode.UNAVAILABLE" in codes, codes
    assert set(codes) <= {"OK", "StatusCode.UNAVAILABLE"}, codes


def test_request_timeouts(slow_server):
    # Running longer than the request's own timeout (Triton's `timeout`, microseconds): 504.
    c = httpclient.InferenceServerClient(slow_server.http_url)
    try:
        inp = httpclient.InferInput("x", [1, 512], "FP32")
        inp.set_data_from_numpy(np.ones((1, 512), np.float32))
        with pytest.raises(InferenceServerException) as e:
            c.infer("slow", [inp], timeout=50_000)
        assert e.value.status() == "504"
        assert "timed out after 0.050 s" in e.value.message()
    finally:
        c.close()
    # Waiting in the queue behind a long request: 504 too, and it never runs.
    long = threading.Thread(target=post, args=(slow_server.http_port, "/v2/models/slow/infer", slow_body()))
    long.start()
    time.sleep(0.05)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 512], "data": [0.0] * 512}],
                       "parameters": {"timeout": 100_000}}).encode()
    status, payload, _ = post(slow_server.http_port, "/v2/models/slow/infer", body)
    long.join(60)
    assert status == 504, payload
    assert "(in the queue)" in json.loads(payload)["error"] or "(while running)" in json.loads(payload)["error"]
    # gRPC: the client's deadline travels with the call; the server answers DEADLINE_EXCEEDED.
    g = grpcclient.InferenceServerClient(slow_server.grpc_url)
    try:
        ginp = grpcclient.InferInput("x", [1, 512], "FP32")
        ginp.set_data_from_numpy(np.ones((1, 512), np.float32))
        with pytest.raises(InferenceServerException) as e:
            g.infer("slow", [ginp], timeout=50_000)  # server-side timeout parameter
        assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert "timed out" in e.value.message()
        with pytest.raises(InferenceServerException) as e:
            g.infer("slow", [ginp], client_timeout=0.05)
        assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    finally:
        g.close()
    assert 'outcome="timeout"' in slow_server.metrics()


def test_slow_model_output_is_right(slow_server, tmp_path):
    status, payload, _ = post(slow_server.http_port, "/v2/models/slow/infer", slow_body(0.5))
    assert status == 200
    out = json.loads(payload)["outputs"][0]
    sess = ort.InferenceSession(str(slow_server.repo / "slow" / "1" / "model.onnx"))
    expected = sess.run(None, {"x": np.full((1, 512), 0.5, np.float32)})[0]
    np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(1, 512), expected, rtol=1e-4, atol=1e-5)


def test_ready_only_after_warmup(tmp_path, start_server):
    server = start_server(slow_repo(tmp_path), wait=False)
    seen_live_not_ready = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            live = server.status("/v2/health/live")
        except OSError:
            time.sleep(0.01)
            continue
        # The model first, then the server: warm-up only ever ends, so a server still not ready
        # after the model's answer means the model was warming up when it answered.
        model_ready = server.status("/v2/models/slow/ready")
        ready = server.status("/v2/health/ready")
        if ready == 200:
            break
        if live == 200 and ready == 503:
            seen_live_not_ready = True
            # While warming up the model is known (not 404) but not ready.
            assert model_ready == 503
        time.sleep(0.01)
    assert seen_live_not_ready, "readiness should be 503 while the model warms up"
    assert server.status("/v2/health/ready") == 200
    stats = json.loads(urllib_get(server, "/v2/models/slow/stats"))["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 0  # warm-up runs are not client requests


def urllib_get(server, path):
    import urllib.request

    with urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=5) as r:
        return r.read()


def test_sigterm_drains_in_flight_requests(tmp_path, start_server):
    server = start_server(slow_repo(tmp_path), "--exit-timeout-secs", "30")
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", post(server.http_port, "/v2/models/slow/infer", slow_body())))
    t.start()
    deadline = time.monotonic() + 60
    while 'modelship_inflight_requests{model="slow",version="1"} 1.0' not in server.metrics():
        assert time.monotonic() < deadline, "request never became in-flight"
        time.sleep(0.005)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    # Readiness turns false at once, over HTTP and gRPC, while the request is still running.
    assert server.status("/v2/health/ready") == 503
    assert server.status("/v2/health/live") == 200
    g = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert g.is_server_ready() is False
    finally:
        g.close()
    assert server.proc.poll() is None
    t.join(30)
    status, payload, _ = result["r"]
    assert status == 200, payload  # the in-flight request completed
    server.proc.wait(timeout=60)
    assert server.proc.returncode == 0
    # It left as soon as the request was done, not at the 30 s exit timeout.
    assert "shutting down" in server.log() and "exit timeout reached" not in server.log()


def test_exit_timeout_bounds_shutdown(tmp_path, start_server):
    """The exit timeout cuts the drain short: the process exits with requests still unanswered.

    Proved by what the clients got, not by a stopwatch: three slow requests (one running, two
    queued behind it, each a run of ~0.3-1 s) cannot all be answered within a 0.3 s exit timeout,
    and a slower machine only makes that more certain."""
    server = start_server(slow_repo(tmp_path), "--exit-timeout-secs", "0.3")
    answers: list[int] = []

    def call():
        try:
            answers.append(post(server.http_port, "/v2/models/slow/infer", slow_body(), 120)[0])
        except OSError:
            pass  # expected: the process exits before answering every request

    threads = [threading.Thread(target=call) for _ in range(3)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 60
    while 'modelship_inflight_requests{model="slow",version="1"} 3.0' not in server.metrics():
        assert time.monotonic() < deadline, "three requests never became in-flight"
        time.sleep(0.005)
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=60)
    for th in threads:
        th.join(120)
    assert not any(th.is_alive() for th in threads)
    assert answers.count(200) < 3, answers  # it did not wait for every request
    assert "exit timeout reached with" in server.log()
    assert server.proc.returncode == 0


# -- load failures and command-line mistakes ---------------------------------


def broken_repo(path):
    samples.write_model(path, "good", samples.mlp())
    samples.write_model(path, "mismatch", samples.mlp(), 'input [ { name: "foo" data_type: TYPE_FP32 dims: [ 64 ] } ]\n')
    garbage = path / "garbage" / "1"
    garbage.mkdir(parents=True)
    (garbage / "model.onnx").write_bytes(b"this is not an onnx file")
    (path / "badconfig").mkdir()
    (path / "badconfig" / "config.pbtxt").write_text("max_batch_size: lots\n")
    return path


def test_failed_models_exit_by_default(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "modelship_server", "--model-repository", str(broken_repo(tmp_path)),
         "--allow-http", "false", "--allow-grpc", "false", "--allow-metrics", "false"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 1
    err = r.stderr
    assert "config input 'foo' is not in the ONNX model; its inputs are ['INPUT0']" in err
    assert "ONNX Runtime cannot load the model" in err
    assert "not a valid Triton model config" in err
    assert "--exit-on-error=false" in err
    assert "Traceback" not in err


def test_failed_models_reported_when_serving_the_rest(tmp_path, start_server):
    server = start_server(broken_repo(tmp_path), "--exit-on-error", "false", wait=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            if server.status("/v2/models/good/ready") == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    assert server.status("/v2/health/ready") == 503  # not every model is up
    status, payload, headers = post(server.http_port, "/v2/models/mismatch/infer", b"{}")
    assert status == 503 and "config input 'foo' is not in the ONNX model" in json.loads(payload)["error"]
    g = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert g.is_model_ready("mismatch") is False
        index = {m.name: (m.state, m.reason) for m in g.get_model_repository_index().models}
    finally:
        g.close()
    assert index["good"][0] == "READY"
    assert index["garbage"][0] == "UNAVAILABLE" and "cannot load the model" in index["garbage"][1]
    assert index["badconfig"][0] == "UNAVAILABLE"
    inp = np.zeros((1, 64), np.float32)
    c = httpclient.InferenceServerClient(server.http_url)
    try:
        i = httpclient.InferInput("INPUT0", [1, 64], "FP32")
        i.set_data_from_numpy(inp)
        assert c.infer("good", [i]).as_numpy("OUTPUT0").shape == (1, 10)
    finally:
        c.close()


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "modelship_server", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_cli_missing_repository(tmp_path):
    r = run_cli("--model-repository", str(tmp_path / "nope"))
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = run_cli()
    assert r.returncode == 2 and "--model-repository is required" in r.stderr


@pytest.mark.parametrize("flag", ["--http-port", "--grpc-port", "--metrics-port"])
def test_cli_port_in_use(tmp_path, flag):
    samples.write_model(tmp_path, "mlp", samples.mlp())
    from .conftest import free_ports

    ports = dict(zip(["--http-port", "--grpc-port", "--metrics-port"], free_ports(3)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[flag]))
        s.listen(1)
        args = ["--model-repository", str(tmp_path), "--http-address", "127.0.0.1",
                "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1"]
        for f, p in ports.items():
            args += [f, str(p)]
        r = run_cli(*args)
    assert r.returncode == 2, r.stderr
    assert flag in r.stderr and "Traceback" not in r.stderr


def test_cli_bad_values():
    r = run_cli("--model-repository", ".", "--http-port", "eighty")
    assert r.returncode == 2 and "expected a port number, got 'eighty'" in r.stderr
    r = run_cli("--model-repository", ".", "--http-port", "9000", "--grpc-port", "9000")
    assert r.returncode == 2 and "give each endpoint its own port" in r.stderr
    r = run_cli("--model-repository", ".", "--execution-providers", "tpu")
    assert r.returncode == 2 and "choose from tensorrt, cuda, cpu" in r.stderr
    r = run_cli("--help")
    assert r.returncode == 0 and "--model-repository" in r.stdout and "model repository layout" in r.stdout


def test_listen_address_from_environment(tmp_path):
    """Two servers on the same ports coexist when each gets its own loopback address via the
    environment, as the local node agent gives every pod its own 127.x.y.z."""
    from .conftest import free_ports

    samples.write_model(tmp_path, "mlp", samples.mlp())
    ports = free_ports(3)
    args = [sys.executable, "-m", "modelship_server", "--model-repository", str(tmp_path),
            "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
    procs = []
    try:
        for address in ("127.0.0.2", "127.0.0.3"):
            env = {**os.environ, "MODELSHIP_LISTEN_ADDRESS": address}
            procs.append((address, subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.PIPE, text=True)))
        for address, proc in procs:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.stderr.read()
                try:
                    with urllib.request.urlopen(f"http://{address}:{ports[0]}/v2/health/ready", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, f"server on {address} never became ready"
                time.sleep(0.1)
        with pytest.raises(OSError):  # nothing listens on the wildcard's loopback address
            urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=2)
    finally:
        for _, proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
