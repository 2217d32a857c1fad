"""GPU execution providers. Skipped without an NVIDIA GPU and onnxruntime-gpu (CI never has one)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from modelship_server import runtime, samples

from .conftest import has_gpu

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not has_gpu(), reason="needs an NVIDIA GPU and onnxruntime-gpu with CUDAExecutionProvider"),
]


def test_cuda_provider_is_chosen_and_serves(tmp_path, start_server):
    samples.write_model(tmp_path, "mlp", samples.mlp(), "max_batch_size: 8\ninstance_group [ { kind: KIND_GPU } ]\n")
    server = start_server(tmp_path)
    assert "CUDAExecutionProvider" in server.log()
    c = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
        inp = grpcclient.InferInput("INPUT0", [4, 64], "FP32")
        inp.set_data_from_numpy(x)
        got = c.infer("mlp", [inp]).as_numpy("OUTPUT0")
        config = c.get_model_config("mlp", as_json=True)["config"]
    finally:
        c.close()
    expected = ort.InferenceSession(str(tmp_path / "mlp" / "1" / "model.onnx"),
                                    providers=["CPUExecutionProvider"]).run(None, {"INPUT0": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    assert config["instance_group"][0]["kind"] == "KIND_GPU"


def test_availability_reports_cuda():
    assert runtime.provider_availability()["cuda"] is None
