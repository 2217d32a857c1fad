"""The model's `config.pbtxt`, built as Triton's ModelConfig protobuf and printed as text.

Both runtimes read Triton's repository layout, so one config serves both: Triton reads all
of it; modelship's server reads batching and instance settings. Building the protobuf
message (not a string template) means a field or enum Triton would reject fails here.
"""

from __future__ import annotations

import hashlib

from modelship.api.v1alpha1 import ModelServiceSpec


def model_config(spec: ModelServiceSpec):  # noqa: ANN201 - a ModelConfig protobuf message
    """The ModelConfig for `spec`: dynamic batching, instance groups, accelerators."""
    from tritonclient.grpc import model_config_pb2 as pb  # heavy; imported on use

    config = pb.ModelConfig(name=spec.model.name, platform="onnxruntime_onnx", backend="onnxruntime")
    config.default_model_filename = "model.onnx"
    batching = spec.batching
    if batching.enabled:
        config.max_batch_size = batching.max_batch_size
        config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_microseconds
        if batching.preferred_batch_sizes:
            config.dynamic_batching.preferred_batch_size.extend(sorted(set(batching.preferred_batch_sizes)))
    else:
        config.max_batch_size = 0

    on_gpu = spec.resources.gpu.count > 0
    group = config.instance_group.add()
    group.name = "gpu" if on_gpu else "cpu"
    group.kind = pb.ModelInstanceGroup.KIND_GPU if on_gpu else pb.ModelInstanceGroup.KIND_CPU
    group.count = spec.triton.instance_count if spec.triton else 1

    if spec.runtime == "triton" and on_gpu and _tensorrt(spec):
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
        accelerator.name = "tensorrt"
        precision = "FP16" if "fp16" in spec.optimization.precisions else "FP32"
        accelerator.parameters["precision_mode"] = precision
        accelerator.parameters["max_workspace_size_bytes"] = str(1 << 30)
        accelerator.parameters["trt_engine_cache_enable"] = "true"
        accelerator.parameters["trt_engine_cache_path"] = "/tmp/trt-cache"

    if spec.onnxruntime is not None:
        for key, value in (
            ("intra_op_thread_count", spec.onnxruntime.intra_op_threads),
            ("inter_op_thread_count", spec.onnxruntime.inter_op_threads),
        ):
            if value is not None:
                config.parameters[key].string_value = str(value)
    return config


def _tensorrt(spec: ModelServiceSpec) -> bool:
    """TensorRT is on by default on GPU; `spec.triton.tensorrt: false` turns it off."""
    if spec.triton is not None and spec.triton.tensorrt is not None:
        return spec.triton.tensorrt
    return True


def render_pbtxt(spec: ModelServiceSpec) -> str:
    """The text of config.pbtxt, deterministic for a given spec."""
    from google.protobuf import text_format

    return text_format.MessageToString(model_config(spec))


def content_hash(text: str) -> str:
    """A short hash put on the pod template so a config change rolls the pods."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
