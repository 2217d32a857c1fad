"""The generated config.pbtxt parses with Triton's ModelConfig protobuf and says what the spec says."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from modelship.api.v1alpha1 import ModelService
from modelship.render import render_children
from msvc_samples import SHA, body, example


def _parse(b: dict[str, Any]) -> pb.ModelConfig:
    objs = {o["kind"]: o for o in render_children(ModelService.from_body(b)).objects}
    text = objs["ConfigMap"]["data"]["config.pbtxt"]
    return text_format.Parse(text, pb.ModelConfig())


def _accelerators(config: pb.ModelConfig) -> list[str]:
    return [a.name for a in config.optimization.execution_accelerators.gpu_execution_accelerator]


def test_gpu_triton_config_has_dynamic_batching_gpu_instances_and_tensorrt() -> None:
    config = _parse(example("gpu-triton.yaml"))
    assert config.name == "bert" and config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert config.max_batch_size == 32
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.kind, g.count) for g in config.instance_group] == [(pb.ModelInstanceGroup.KIND_GPU, 2)]
    assert _accelerators(config) == ["tensorrt"]
    trt = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert trt.parameters["precision_mode"] == "FP16"


@pytest.mark.parametrize(
    ("spec", "kind", "accelerators"),
    [
        ({"runtime": "triton"}, pb.ModelInstanceGroup.KIND_CPU, []),
        # TensorRT only where gated (no optimize Job here) or forced: never on by default
        ({"runtime": "triton", "resources": {"gpu": {"count": 1}}}, pb.ModelInstanceGroup.KIND_GPU, []),
        ({"runtime": "triton", "resources": {"gpu": {"count": 1}}, "triton": {"tensorrt": True}},
         pb.ModelInstanceGroup.KIND_GPU, ["tensorrt"]),
        ({"runtime": "onnxruntime", "resources": {"gpu": {"count": 1}}, "onnxruntime": {"tensorrt": True}},
         pb.ModelInstanceGroup.KIND_GPU, ["tensorrt"]),
        ({"runtime": "triton", "resources": {"gpu": {"count": 1}}, "triton": {"tensorrt": False}},
         pb.ModelInstanceGroup.KIND_GPU, []),
        ({"runtime": "onnxruntime", "resources": {"gpu": {"count": 1}}}, pb.ModelInstanceGroup.KIND_GPU, []),
        ({}, pb.ModelInstanceGroup.KIND_CPU, []),
    ],
)
def test_instance_kind_and_accelerator_follow_runtime_and_gpu(spec: dict[str, Any], kind: int, accelerators: list[str]) -> None:
    config = _parse(body(spec={"model": {"uri": "https://h/m.onnx", "sha256": SHA}, **spec}))
    assert [g.kind for g in config.instance_group] == [kind]
    assert _accelerators(config) == accelerators


def test_batching_off_means_max_batch_size_zero_and_no_dynamic_batching() -> None:
    config = _parse(body(spec={"model": {"uri": "https://h/m.onnx", "sha256": SHA}, "batching": {"enabled": False}}))
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")


def test_onnxruntime_threads_become_backend_parameters() -> None:
    config = _parse(example("cpu-onnxruntime.yaml"))
    assert config.parameters["intra_op_thread_count"].string_value == "2"
    assert "inter_op_thread_count" not in config.parameters
