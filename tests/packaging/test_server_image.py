"""The serving image's environment, as installed (requirements/server.txt, then the wheel with
--no-deps), started for real: the fetch step fetches and verifies a model from a local HTTP
server, modelship-server serves it to the real tritonclient, and the commands answer --help."""

from __future__ import annotations

import functools
import hashlib
import http.server
import signal
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from modelship_server import samples
from modelship_server.readiness import free_ports, wait_until_ok


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on loopback holding one ONNX model: (base URL, the file)."""
    folder = tmp_path_factory.mktemp("store")
    path = folder / "mlp.onnx"
    path.write_bytes(samples.mlp((8, 16, 4)).SerializeToString())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", path
    finally:
        server.shutdown()
        server.server_close()


def _fetch(server_env: Path, uri: str, sha256: str, dest: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    # As the pod runs it: `python -m modelship.fetch` with the image's python (render/pod.py).
    return subprocess.run([str(server_env / "bin" / "python"), "-m", "modelship.fetch", f"--uri={uri}",
                           f"--sha256={sha256}", f"--dest={dest}", f"--termination-log={tmp / 'termination-log'}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp)


def test_the_fetch_step_fetches_verifies_and_places_the_model(server_env: Path, model_store: tuple[str, Path],
                                                              tmp_path: Path) -> None:
    base, path = model_store
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    dest = tmp_path / "models" / "mlp" / "1" / "model.onnx"
    done = _fetch(server_env, f"{base}/mlp.onnx", digest, dest, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert dest.read_bytes() == path.read_bytes()

    wrong = tmp_path / "wrong" / "model.onnx"
    refused = _fetch(server_env, f"{base}/mlp.onnx", "0" * 64, wrong, tmp_path)
    assert refused.returncode != 0 and not wrong.exists(), refused.stdout + refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr


def test_modelship_server_serves_a_model_to_tritonclient(server_env: Path, model_store: tuple[str, Path],
                                                         tmp_path: Path) -> None:
    _, path = model_store
    repo = tmp_path / "models"
    (repo / "mlp" / "1").mkdir(parents=True)
    (repo / "mlp" / "1" / "model.onnx").write_bytes(path.read_bytes())
    http_port, grpc_port, metrics_port = free_ports(3)
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(server_env / "bin" / "modelship-server"), "--model-repository", str(repo),
             "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
             "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_until_ok(f"http://127.0.0.1:{http_port}/v2/health/ready", proc, timeout=120,
                      what="modelship-server from the server image's venv", on_exit=lambda: log.read_text()[-2000:])
        x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        infer_input = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        infer_input.set_data_from_numpy(x, binary_data=True)
        result = client.infer("mlp", [infer_input]).as_numpy("OUTPUT0")
        expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"INPUT0": x})[0]
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)
        client.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    assert proc.returncode == 0, log.read_text()[-2000:]


@pytest.mark.parametrize("argv", [["modelship-server", "--help"], ["modelship", "optimize", "--help"],
                                  ["modelship", "--help"]])
def test_the_image_commands_start(server_env: Path, argv: list[str], tmp_path: Path) -> None:
    done = subprocess.run([str(server_env / "bin" / argv[0]), *argv[1:]], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stdout + done.stderr
