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


def test_bound_runner_on_cuda_gives_what_cpu_onnxruntime_gives():
    from modelship_server import gpu

    model = samples.mlp().SerializeToString()
    session = ort.InferenceSession(model, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    names = [o.name for o in session.get_outputs()]
    x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    got = gpu.bound_runner(session, names, 0)({"INPUT0": x})
    expected = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(names, {"INPUT0": x})
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-3, atol=1e-4)


def test_gpu_candidates_are_gated_and_timed_on_cuda(tmp_path):
    """The search on a GPU: fp16-cuda runs on CUDA against the original on CUDA; TensorRT runs
    where its libraries load and is otherwise skipped with why; nothing is 'timed' on a fallback."""
    import io

    import onnx

    from modelship_server.optimize import candidates as cand
    from modelship_server.optimize.gate import GateSpec
    from modelship_server.optimize.inputs import generate, input_specs
    from modelship_server.optimize.search import optimize

    model = samples.mlp()
    path = tmp_path / "in.onnx"
    onnx.save(model, str(path))
    feeds = generate(input_specs(model), 8, seed=0)
    recipes, skipped = cand.default_recipes(cpu_count=2)
    assert all(r.on_gpu for r in recipes), "with a usable GPU only GPU candidates"
    report = optimize(path, tmp_path / "out", feeds[:4], feeds[4:], GateSpec(), input_source="generated",
                      recipes=recipes, skipped=skipped, progress=io.StringIO(), rounds=3, calls=3)
    rows = {c.name: c for c in report.candidates}
    assert rows["baseline"].recipe is not None and rows["baseline"].recipe.providers[0] == "CUDAExecutionProvider"
    assert rows["fp16-cuda"].gate is not None, rows["fp16-cuda"].reason
    for name in ("tensorrt-fp32", "tensorrt-fp16"):
        assert rows[name].gate is not None or rows[name].status == "skipped", rows[name].reason
