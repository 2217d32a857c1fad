"""ONNX Runtime sessions: which execution providers, how many threads, how many instances.

Providers are tried in the order CUDA, CPU; TensorRT only when the model's config names it
as an accelerator (the operator renders that only where the optimize Job's TensorRT
candidate passed the accuracy gate, or the user forced it: docs/gpu.md), or the server's
--execution-providers lists it. A provider is used only when ONNX Runtime was built with it
*and* its native library loads here (onnxruntime-gpu lists TensorRT even where libnvinfer is
missing), so the log says what was chosen and why instead of ORT printing a fallback error later.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
from pathlib import Path

import onnxruntime as ort
from tritonclient.grpc import model_config_pb2 as mc

from .errors import ModelLoadError
from .gpu import cuda_options
from .repository import config_parameter

log = logging.getLogger(__name__)

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# Triton's onnxruntime backend: optimization { graph { level } } -1 basic, 1 extended, 0 all.
_TRITON_GRAPH_LEVEL = {-1: "basic", 1: "extended"}

_NATIVE_LIBS = {
    "tensorrt": ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"),
    "cuda": ("libcuda.so.1", "libcuda.so"),
}


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """Server-wide session defaults; a model's config.pbtxt overrides them."""

    # TensorRT is not here: its fp16 numerics are served only where gated (the config's accelerator).
    providers: tuple[str, ...] = ("cuda", "cpu")
    intra_op_threads: int = 0  # 0: ONNX Runtime's default (one per physical core)
    inter_op_threads: int = 0
    graph_optimization_level: str = "all"
    # ORT's intra-op threads busy-wait after each run by default: good for back-to-back runs in
    # a benchmark loop, bad in a server whose event loop and clients need the same cores.
    allow_spinning: bool = False
    cache_dir: Path = Path("/tmp/modelship-cache")


def _library_loads(names: tuple[str, ...]) -> bool:
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def provider_availability() -> dict[str, str | None]:
    """For each short provider name: None if usable, else the reason it is not."""
    built = set(ort.get_available_providers())
    result: dict[str, str | None] = {}
    for short, full in PROVIDERS.items():
        if full not in built:
            result[short] = f"this onnxruntime build has no {full}"
        elif short in _NATIVE_LIBS and not _library_loads(_NATIVE_LIBS[short]):
            result[short] = f"{_NATIVE_LIBS[short][0]} cannot be loaded (no GPU driver / library)"
        else:
            result[short] = None
    return result


def choose_providers(
    config: mc.ModelConfig, options: RuntimeOptions, availability: dict[str, str | None]
) -> tuple[list, str]:
    """Providers (with options) for a model's sessions, and a sentence saying why."""
    kinds = {g.kind for g in config.instance_group}
    accel = [a.name.lower() for a in config.optimization.execution_accelerators.gpu_execution_accelerator]
    if kinds == {mc.ModelInstanceGroup.KIND_CPU}:
        return ["CPUExecutionProvider"], "instance_group kind is KIND_CPU"
    wanted = list(options.providers)
    if accel:
        # The config's accelerators come first, then the server's order for the rest.
        wanted = [a for a in accel if a in PROVIDERS] + [p for p in wanted if p not in accel]
    chosen: list = []
    reasons: list[str] = []
    for short in wanted:
        why_not = availability.get(short, f"unknown provider {short!r}")
        if why_not:
            reasons.append(f"{short}: skipped, {why_not}")
            continue
        reasons.append(f"{short}: available")
        chosen.append(_with_options(short, config, options))
    if "CPUExecutionProvider" not in [c if isinstance(c, str) else c[0] for c in chosen]:
        chosen.append("CPUExecutionProvider")  # ORT needs a fallback for unsupported nodes
    if kinds == {mc.ModelInstanceGroup.KIND_GPU} and len(chosen) == 1:
        reasons.append("WARNING: instance_group asks for KIND_GPU but no GPU provider is usable; running on CPU")
    return chosen, "; ".join(reasons)


def _with_options(short: str, config: mc.ModelConfig, options: RuntimeOptions):
    full = PROVIDERS[short]
    gpus = [g for group in config.instance_group for g in group.gpus]
    device = gpus[0] if gpus else None  # each session is then moved to its own (gpu.on_device)
    if short == "cuda":
        return (full, cuda_options(device))
    if short == "tensorrt":
        opts = {"device_id": str(device)} if device is not None else {}
        opts["trt_engine_cache_enable"] = "True"
        opts["trt_engine_cache_path"] = str(options.cache_dir / "tensorrt" / config.name)
        for accel in config.optimization.execution_accelerators.gpu_execution_accelerator:
            if accel.name.lower() != "tensorrt":
                continue
            opts.update(tensorrt_options(dict(accel.parameters)))
        return (full, opts)
    return full


# Accelerator parameters (Triton's names where Triton has one) -> ORT TensorRT provider options.
_TRT_PARAMETERS = {
    "max_workspace_size_bytes": "trt_max_workspace_size",
    "trt_engine_cache_path": "trt_engine_cache_path",
    "trt_profile_min_shapes": "trt_profile_min_shapes",
    "trt_profile_opt_shapes": "trt_profile_opt_shapes",
    "trt_profile_max_shapes": "trt_profile_max_shapes",
}


def tensorrt_options(parameters: dict[str, str]) -> dict[str, str]:
    """ORT TensorRT options from a config's tensorrt accelerator parameters: precision, the
    engine cache folder (a volume, so engines survive a container restart) and the
    optimization profile the optimize Job timed."""
    opts: dict[str, str] = {}
    if parameters.get("precision_mode", "").upper() == "FP16":
        opts["trt_fp16_enable"] = "True"
    for key, option in _TRT_PARAMETERS.items():
        if parameters.get(key):
            opts[option] = parameters[key]
    return opts


def set_spinning(so: ort.SessionOptions, spinning: bool) -> None:
    """Whether ONNX Runtime's pool threads busy-wait for work between and within runs."""
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")


def session_options(config: mc.ModelConfig, options: RuntimeOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    intra = config_parameter(config, "intra_op_thread_count")
    inter = config_parameter(config, "inter_op_thread_count")
    so.intra_op_num_threads = int(intra) if intra else options.intra_op_threads
    so.inter_op_num_threads = int(inter) if inter else options.inter_op_threads
    level = options.graph_optimization_level
    if config.optimization.HasField("graph"):
        level = _TRITON_GRAPH_LEVEL.get(config.optimization.graph.level, "all")
    so.graph_optimization_level = GRAPH_LEVELS[level]
    spin = config_parameter(config, "allow_spinning")
    set_spinning(so, options.allow_spinning if spin is None else spin.strip().lower() in ("1", "true", "yes", "on"))
    so.log_severity_level = 3  # errors only: our own log says what matters
    return so


def create_session(
    model_path: Path, config: mc.ModelConfig, options: RuntimeOptions, providers: list
) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            str(model_path), sess_options=session_options(config, options), providers=providers
        )
    except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph/... types
        raise ModelLoadError(f"{model_path}: ONNX Runtime cannot load the model: {exc}") from None


def instance_count(config: mc.ModelConfig) -> int:
    return sum(max(g.count, 1) for g in config.instance_group) or 1
