"""The model's `config.pbtxt`, built as Triton's ModelConfig protobuf and printed as text.

Both runtimes read Triton's repository layout, so one config serves both: Triton reads all
of it; modelship's server reads batching and instance settings. Building the protobuf
message (not a string template) means a field or enum Triton would reject fails here.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from modelship.api.v1alpha1 import (
    DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE_DELAY_MICROSECONDS, ModelServiceSpec,
)
from modelship.contracts import INPUTS_CONFIG_PARAMETER, TENSORRT_CACHE_PATH
from modelship.render.artifact import GatedTensorRT, MeasuredBatching


# spec.model.inputs travels to the serving pods in config.pbtxt under this key (the same JSON
# as the optimize Job's --inputs); modelship_server reads it. Triton's onnxruntime backend
# reads only the parameter keys it knows.
INPUTS_PARAMETER = INPUTS_CONFIG_PARAMETER


@dataclasses.dataclass(frozen=True)
class EffectiveBatching:
    max_batch_size: int  # 0: no batching at all
    max_queue_delay_microseconds: int
    dynamic: bool
    preferred_batch_sizes: tuple[int, ...]


def effective_batching(spec: ModelServiceSpec, measured: MeasuredBatching | None) -> EffectiveBatching:
    """What the server batches: a value set in the spec, else the optimize Job's measured one,
    else the documented default. Preferred sizes above the maximum are dropped (a measured
    maximum may be below what a user listed; Triton refuses such a config)."""
    batching = spec.batching
    if not batching.enabled:
        return EffectiveBatching(0, 0, False, ())
    if batching.max_batch_size is not None:
        size = batching.max_batch_size
    elif measured is not None:
        size = measured.max_batch_size
    else:
        size = DEFAULT_MAX_BATCH_SIZE
    if batching.max_queue_delay_microseconds is not None:
        delay = batching.max_queue_delay_microseconds
    elif measured is not None:
        delay = measured.max_queue_delay_microseconds
    else:
        delay = DEFAULT_MAX_QUEUE_DELAY_MICROSECONDS
    # Off only when the Job measured it as no better and the user set neither bound.
    user_set = batching.max_batch_size is not None or batching.max_queue_delay_microseconds is not None
    dynamic = size > 0 and (measured is None or measured.dynamic or user_set)
    preferred = tuple(sorted({s for s in batching.preferred_batch_sizes or () if s <= size}))
    return EffectiveBatching(size, delay if dynamic else 0, dynamic, preferred if dynamic else ())


BATCHING_AUTO = "auto"  # batching follows the model: off for a model that cannot batch
BATCHING_REQUIRED = "required"  # the user set batching's sizes: a model that cannot batch is refused


def batching_mode(spec: ModelServiceSpec) -> str | None:
    """How the serving pod's `fit-config` step treats a model that cannot batch (a state with
    the batch on axis 1, a scalar input, a batch fixed at 1). The operator never opens the
    model, so this is decided in the pod against the file served:
    None when spec.batching.enabled is false (nothing to fit); `required` when the user set
    maxBatchSize, maxQueueDelayMicroseconds or preferredBatchSizes (asked for batching, so a
    contradiction is refused with the reason); else `auto` (the spec's defaults and the optimize
    Job's measured sizes follow the model)."""
    batching = spec.batching
    if not batching.enabled:
        return None
    if (batching.max_batch_size is not None or batching.max_queue_delay_microseconds is not None
            or batching.preferred_batch_sizes):
        return BATCHING_REQUIRED
    return BATCHING_AUTO


def model_config(spec: ModelServiceSpec, measured: MeasuredBatching | None = None,
                 intra_op_threads: int | None = None,
                 gated_tensorrt: GatedTensorRT | None = None) -> Any:  # tritonclient's ModelConfig (untyped protobuf)
    """The ModelConfig for `spec`: dynamic batching, instance groups, accelerators, and the
    session threads (the spec's, else those the chosen variant was timed with)."""
    from tritonclient.grpc import model_config_pb2 as pb  # heavy; imported on use

    config = pb.ModelConfig(name=spec.model.name, platform="onnxruntime_onnx", backend="onnxruntime")
    config.default_model_filename = "model.onnx"
    batching = effective_batching(spec, measured)
    config.max_batch_size = batching.max_batch_size
    if batching.dynamic:
        config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_microseconds
        if batching.preferred_batch_sizes:
            config.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_sizes)

    on_gpu = spec.resources.gpu.count > 0
    group = config.instance_group.add()
    group.name = "gpu" if on_gpu else "cpu"
    group.kind = pb.ModelInstanceGroup.KIND_GPU if on_gpu else pb.ModelInstanceGroup.KIND_CPU
    group.count = spec.triton.instance_count if spec.triton else 1

    trt = tensorrt_choice(spec, gated_tensorrt)
    if trt.precision is not None:  # both runtimes read this accelerator (modelship_server/runtime.py)
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
        accelerator.name = "tensorrt"
        accelerator.parameters["precision_mode"] = trt.precision.upper()
        accelerator.parameters["max_workspace_size_bytes"] = str(1 << 30)
        accelerator.parameters["trt_engine_cache_enable"] = "true"
        accelerator.parameters["trt_engine_cache_path"] = TENSORRT_CACHE_PATH
        for option, shapes in trt.profile:
            accelerator.parameters[option] = shapes

    ort_settings = spec.onnxruntime
    spec_intra = ort_settings.intra_op_threads if ort_settings is not None else None
    for key, value in (
        ("intra_op_thread_count", spec_intra if spec_intra is not None else intra_op_threads),
        ("inter_op_thread_count", ort_settings.inter_op_threads if ort_settings is not None else None),
    ):
        if value is not None:
            config.parameters[key].string_value = str(value)
    inputs = spec.model.inputs_json()
    if inputs is not None:  # the serving pods warm up on the declared inputs (modelship_server/feeds.py)
        config.parameters[INPUTS_PARAMETER].string_value = inputs
    return config


@dataclasses.dataclass(frozen=True)
class TensorRTChoice:
    """Whether the pods run TensorRT, and `state` for status.optimization.tensorrt:
    `gated` (the optimize Job's TensorRT variant passed the accuracy gate and was chosen),
    `ungated` (forced by the spec, never judged), or `off`."""

    precision: str | None  # None: TensorRT off
    state: str
    message: str
    profile: tuple[tuple[str, str], ...] = ()


def forced_tensorrt(spec: ModelServiceSpec) -> tuple[bool | None, str | None]:
    """(spec's tensorrt switch, its precision) from spec.triton or spec.onnxruntime; None: unset."""
    for settings in (spec.triton, spec.onnxruntime):
        if settings is not None and settings.tensorrt is not None:
            return settings.tensorrt, settings.tensorrt_precision
    return None, None


def tensorrt_choice(spec: ModelServiceSpec, gated: GatedTensorRT | None) -> TensorRTChoice:
    """TensorRT is on only where the optimize Job's TensorRT variant passed the gate (and was
    chosen), or where the spec forces it (`tensorrt: true`: then status says it is ungated).
    Its fp16 numerics are the riskiest we serve, so unset means gated, never on by default."""
    if spec.resources.gpu.count < 1:
        return TensorRTChoice(None, "off", "no GPU requested")
    forced, precision = forced_tensorrt(spec)
    if forced is False:
        return TensorRTChoice(None, "off", "turned off by the spec (tensorrt: false)")
    if forced:
        wanted = precision or (gated.precision if gated else "fp16")
        if gated is not None and gated.precision == wanted:
            return TensorRTChoice(wanted, "gated", f"TensorRT {wanted}: forced by the spec, and it passed the "
                                                   "optimize Job's accuracy gate", gated.profile)
        return TensorRTChoice(wanted, "ungated", f"TensorRT {wanted}: forced by the spec (tensorrt: true); "
                                                 "its accuracy was never checked by the optimize Job's gate")
    if gated is not None:
        return TensorRTChoice(gated.precision, "gated", f"TensorRT {gated.precision}: the optimize Job's TensorRT "
                                                        "variant passed the accuracy gate and was chosen", gated.profile)
    return TensorRTChoice(None, "off", "off: no TensorRT variant passed the optimize Job's gate and was chosen "
                                       "(set tensorrt: true to force it, ungated)")


def render_pbtxt(spec: ModelServiceSpec, measured: MeasuredBatching | None = None,
                 intra_op_threads: int | None = None, gated_tensorrt: GatedTensorRT | None = None) -> str:
    """The text of config.pbtxt, deterministic for a given spec and measured batching."""
    from google.protobuf import text_format

    return text_format.MessageToString(model_config(spec, measured, intra_op_threads, gated_tensorrt))


def content_hash(text: str) -> str:
    """A short hash put on the pod template so a config change rolls the pods."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
