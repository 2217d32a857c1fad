"""Execution-provider choice and session options, from config and availability (no GPU needed:
availability is passed in, which is exactly what the server computes at start)."""

from __future__ import annotations

import onnxruntime as ort
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from modelship_server import runtime


def config(text: str) -> mc.ModelConfig:
    c = text_format.Parse(text, mc.ModelConfig())
    if not c.instance_group:
        c.instance_group.add(count=1)
    return c


ALL = {"tensorrt": None, "cuda": None, "cpu": None}
CPU_ONLY = {"tensorrt": "this onnxruntime build has no TensorrtExecutionProvider",
            "cuda": "libcuda.so.1 cannot be loaded (no GPU driver / library)", "cpu": None}


def names(providers):
    return [p if isinstance(p, str) else p[0] for p in providers]


def test_tensorrt_is_not_on_by_default_even_where_usable():
    """TensorRT's numerics are served only where gated: the config's accelerator turns it on."""
    providers, why = runtime.choose_providers(config(""), runtime.RuntimeOptions(), ALL)
    assert names(providers) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "tensorrt" not in why


def test_order_tensorrt_cuda_cpu_when_asked_and_usable():
    providers, why = runtime.choose_providers(config(""), runtime.RuntimeOptions(providers=("tensorrt", "cuda", "cpu")),
                                              ALL)
    assert names(providers) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "tensorrt: available" in why


def test_tensorrt_accelerator_passes_cache_and_profile():
    c = config('optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" '
               'parameters { key: "precision_mode" value: "FP32" } '
               'parameters { key: "trt_engine_cache_path" value: "/var/cache/modelship/tensorrt" } '
               'parameters { key: "trt_profile_min_shapes" value: "x:1x3" } '
               'parameters { key: "trt_profile_max_shapes" value: "x:8x3" } } ] } }')
    providers, _ = runtime.choose_providers(c, runtime.RuntimeOptions(), ALL)
    name, options = providers[0]
    assert name == "TensorrtExecutionProvider"
    assert "trt_fp16_enable" not in options
    assert options["trt_engine_cache_path"] == "/var/cache/modelship/tensorrt"
    assert options["trt_profile_min_shapes"] == "x:1x3" and options["trt_profile_max_shapes"] == "x:8x3"


def test_falls_back_to_cpu_and_says_why():
    providers, why = runtime.choose_providers(config(""), runtime.RuntimeOptions(), CPU_ONLY)
    assert providers == ["CPUExecutionProvider"]
    assert "cuda: skipped, libcuda.so.1 cannot be loaded" in why


def test_kind_cpu_forces_cpu():
    providers, why = runtime.choose_providers(config("instance_group [ { kind: KIND_CPU } ]"), runtime.RuntimeOptions(), ALL)
    assert providers == ["CPUExecutionProvider"] and "KIND_CPU" in why


def test_kind_gpu_without_gpu_warns():
    _, why = runtime.choose_providers(config("instance_group [ { kind: KIND_GPU } ]"), runtime.RuntimeOptions(), CPU_ONLY)
    assert "KIND_GPU but no GPU provider is usable" in why


def test_config_accelerator_options_and_server_order():
    c = config('optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" '
               'parameters { key: "precision_mode" value: "FP16" } } ] } }\ninstance_group [ { gpus: [ 1 ] } ]')
    providers, _ = runtime.choose_providers(c, runtime.RuntimeOptions(providers=("cuda", "cpu")), ALL)
    assert providers[0][0] == "TensorrtExecutionProvider"
    assert providers[0][1]["trt_fp16_enable"] == "True" and providers[0][1]["device_id"] == "1"
    assert providers[1][0] == "CUDAExecutionProvider" and providers[1][1]["device_id"] == "1"


def test_session_options_from_config_and_flags():
    so = runtime.session_options(config(""), runtime.RuntimeOptions(intra_op_threads=3, graph_optimization_level="basic"))
    assert so.intra_op_num_threads == 3
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    c = config('parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\noptimization { graph { level: 1 } }')
    so = runtime.session_options(c, runtime.RuntimeOptions(intra_op_threads=3))
    assert so.intra_op_num_threads == 1
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


def test_instance_count():
    assert runtime.instance_count(config("instance_group [ { count: 2 }, { count: 3 } ]")) == 5
