"""GPU candidates without a GPU: which ones given the providers, TensorRT's optimization profile
from the declared shapes, what a provider failure means, and a search that skips a GPU
candidate whose provider did not load and goes on (real ONNX Runtime: this build has no CUDA,
so ORT falls back to the CPU exactly as it does on a node whose driver is missing)."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import models
from modelship_server.feeds import InputHint, InputSpec
from modelship_server.optimize import candidates as cand
from modelship_server.optimize import gpu_candidates as gpu
from modelship_server.optimize.gate import GateSpec
from modelship_server.optimize.inputs import generate, input_specs
from modelship_server.optimize.report import summary, tensorrt_summary
from modelship_server.optimize.search import optimize

F32 = np.dtype(np.float32)


@pytest.mark.parametrize(
    ("availability", "build", "skipped"),
    [
        ({"cuda": None, "tensorrt": None}, ["fp16-cuda", "tensorrt-fp32", "tensorrt-fp16"], {}),
        ({"cuda": None, "tensorrt": "libnvinfer.so.10 cannot be loaded"}, ["fp16-cuda"],
         {"tensorrt-fp32": "no TensorRT provider: libnvinfer.so.10", "tensorrt-fp16": "no TensorRT provider"}),
        ({"cuda": "libcuda.so.1 cannot be loaded", "tensorrt": None}, [],
         {"fp16-cuda": "no CUDA provider: libcuda", "tensorrt-fp16": "TensorRT needs CUDA"}),
        ({"cuda": "no build", "tensorrt": "no build"}, [], {"fp16-cuda": "no build", "tensorrt-fp32": "no build"}),
        ({}, [], {"fp16-cuda": "not checked", "tensorrt-fp32": "not checked"}),
    ],
)
def test_gpu_plan(availability, build, skipped):
    names, skips = gpu.gpu_plan(availability)
    assert names == build
    reasons = dict(skips)
    assert set(reasons) | set(names) == {"fp16-cuda", "tensorrt-fp32", "tensorrt-fp16"}
    for name, words in skipped.items():
        assert words in reasons[name], reasons[name]


CNN = InputSpec("x", F32, (None, 3, None, None))
IDS = InputSpec("ids", np.dtype(np.int64), (None, None))
FIXED = InputSpec("x", F32, (1, 3, 32, 32))


@pytest.mark.parametrize(
    ("specs", "hints", "max_batch", "profile", "why"),
    [
        ([FIXED], [], 8, {"x": ((1, 3, 32, 32),) * 3}, "batch 1..8"),
        ([InputSpec("x", F32, (None, 16))], [], 8, {"x": ((1, 16), (1, 16), (8, 16))}, ""),
        ([CNN], [InputHint("x", shape=(2, 3, 64, 64), min_shape=(1, 3, 32, 32), max_shape=(4, 3, 128, 128))], 8,
         {"x": ((1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 128, 128))}, ""),
        ([CNN], [InputHint("x", shape=(1, 3, 48, 96))], 16, {"x": ((1, 3, 48, 96), (1, 3, 48, 96), (16, 3, 48, 96))}, ""),
        ([CNN], [], 8, None, "input x axis 2 is dynamic"),
        ([IDS], [InputHint("ids", min_shape=(1, 8), max_shape=(32, 128))], 8,
         {"ids": ((1, 8), (1, 8), (32, 128))}, ""),
    ],
)
def test_tensorrt_profile(specs, hints, max_batch, profile, why):
    got, reason = gpu.tensorrt_profile(specs, hints, max_batch)
    assert got == profile
    assert why in reason


def test_profile_options_are_ort_strings():
    options = gpu.tensorrt_options(True, {"x": ((1, 3), (2, 3), (8, 3)), "m": ((1,), (1,), (8,))})
    assert options["trt_fp16_enable"] == "True" and options["trt_engine_cache_enable"] == "True"
    assert options["trt_profile_min_shapes"] == "x:1x3,m:1"
    assert options["trt_profile_opt_shapes"] == "x:2x3,m:1"
    assert options["trt_profile_max_shapes"] == "x:8x3,m:8"
    assert "trt_profile_min_shapes" not in gpu.tensorrt_options(False, None)


@pytest.mark.parametrize(
    ("provider", "message", "expected"),
    [
        (gpu.TRT, "[ONNXRuntimeError] : 1 : FAIL : TensorRT input: x has no shape\nNo importer registered for op: "
                  "NonMaxSuppression", "TensorRT does not support op NonMaxSuppression"),
        (gpu.TRT, "Could not find an implementation for GridSample(16) node with name 'g'",
         "TensorRT does not support op GridSample"),
        (gpu.TRT, "libnvinfer.so.10: cannot open shared object file: No such file or directory",
         "TensorRT library missing: libnvinfer.so.10"),
        (gpu.CUDA, "Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot "
                   "open shared object file", "CUDA library missing: libonnxruntime_providers_cuda.so"),
        (gpu.CUDA, "CUDA failure 2: out of memory", "CUDA session failed: CUDA failure 2: out of memory"),
    ],
)
def test_explain_failure(provider, message, expected):
    assert gpu.explain_failure(provider, message).startswith(expected)


def test_fallback_reason():
    assert gpu.fallback_reason(gpu.CUDA, [gpu.CUDA, gpu.CPU]) is None
    why = gpu.fallback_reason(gpu.TRT, [gpu.CUDA, gpu.CPU])
    assert why is not None and why.startswith("TensorRT provider did not load") and "CUDAExecutionProvider" in why


def test_tensorrt_sessions_cache_engines_beside_the_candidate(tmp_path):
    (recipe,) = [r for r in cand.gpu_recipes({"cuda": None, "tensorrt": None},
                                             ({"x": ((1, 4), (1, 4), (8, 4))}, "")) if r.name == "tensorrt-fp16"]
    providers = cand.session_providers(recipe, tmp_path / "tensorrt-fp16.onnx")
    name, options = providers[0]
    assert name == gpu.TRT and providers[1:] == [gpu.CUDA, gpu.CPU]
    assert options["trt_engine_cache_path"] == str(tmp_path / "tensorrt-cache" / "tensorrt-fp16")
    assert options["trt_profile_max_shapes"] == "x:8x4" and options["trt_fp16_enable"] == "True"
    assert tensorrt_summary(recipe) == {"precision": "fp16", "profile": {
        "trt_profile_min_shapes": "x:1x4", "trt_profile_opt_shapes": "x:1x4", "trt_profile_max_shapes": "x:8x4"}}
    assert tensorrt_summary(cand.Recipe(name="ort-all", kind="ort_all")) is None


def test_a_gpu_candidate_whose_provider_did_not_load_is_skipped_and_the_search_goes_on(tmp_path):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the fallback this test needs does not happen")
    model = models.mlp()
    path = tmp_path / "in.onnx"
    onnx.save(model, str(path))
    feeds = generate(input_specs(model), 6, seed=0)
    recipes = [cand.Recipe(name="ort-all", kind="ort_all")] + cand.gpu_recipes({"cuda": None, "tensorrt": None})
    report = optimize(path, tmp_path / "out", feeds[:3], feeds[3:], GateSpec(), input_source="generated",
                      recipes=recipes, skipped=[], progress=io.StringIO(), rounds=3, calls=2)
    rows = {c.name: c for c in report.candidates}
    for name, words in (("fp16-cuda", "CUDA provider did not load"), ("tensorrt-fp32", "TensorRT provider did not load"),
                        ("tensorrt-fp16", "TensorRT provider did not load")):
        assert rows[name].status == "skipped" and rows[name].reason.startswith(words), rows[name].reason
    assert rows["ort-all"].gate is not None and rows["ort-all"].gate.passed
    assert report.chosen in ("baseline", "ort-all")
    assert '"tensorrt":null' in summary(report)
