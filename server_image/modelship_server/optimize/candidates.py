"""Candidate variants as data: each recipe says how to build a model file and run it.

Recipes are plain pydantic data so the report can record exactly what produced the chosen file,
and so the operator can later set the same session settings when it serves that file.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Literal, Mapping

import onnx
import onnxruntime as ort
from pydantic import BaseModel

from . import gpu_candidates as gpu
from .inputs import Feed
from .sensitivity import ranked_once
from .workfolder import shared_file

# tensorrt: the original file, run by ONNX Runtime's TensorRT provider (engines built when the
# session opens); the variant is the provider and its options, not a new file.
Kind = Literal["baseline", "ort_all", "transformer_fusion", "dynamic_int8", "static_int8", "fp16", "tensorrt"]
# Ops whose int8 versions lose too much (normalisation, softmax): left in float in static QDQ.
STATIC_EXCLUDED_OPS: tuple[str, ...] = ("LayerNormalization", "Softmax", "SkipLayerNormalization",
                                        "SimplifiedLayerNormalization", "GroupNormalization")
# Fractions of weighted nodes kept in float by the mixed-precision int8 recipes.
MIXED_FRACTIONS: tuple[float, ...] = (0.1, 0.25)
_LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
           "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


class Recipe(BaseModel):
    """How to produce and run one variant."""

    name: str
    kind: Kind
    per_channel: bool = False
    # int8 kinds: run ONNX Runtime's transformer fusions first (attention, skip layer norm,
    # bias GELU), so the quantizer sees the fused operators (QAttention) and fewer small nodes.
    fuse_transformer: bool = False
    # int8 kinds: keep this fraction of the weighted nodes (MatMul, Gemm, Attention, Conv) in
    # float, the ones whose simulated int8 error on the calibration inputs is largest. Accuracy
    # lost to int8 concentrates in a few layers (outlier activations); these stay exact.
    float_fraction: float = 0.0
    # int8 kinds: quantize only these operator types (None: every type the quantizer supports).
    op_types: list[str] | None = None
    # static int8: how the quantized graph is written. "qdq": QuantizeLinear/DequantizeLinear pairs
    # around float ops, which ONNX Runtime fuses into QLinear kernels when it loads the file, on
    # x86 only for uint8 activations (int8 QDQ stays float ops plus conversions there; ARM fuses
    # both). "qoperator": the quantizer writes the QLinearConv/QLinearMatMul nodes itself.
    quant_format: Literal["qdq", "qoperator"] = "qdq"
    # static int8: the activations' type. uint8 with int8 weights is the pairing x86's int8
    # kernels are built for (VPMADDUBSW, VNNI); int8 activations take a slow path there.
    activation_type: Literal["int8", "uint8"] = "int8"
    # int8 kinds: 7-bit weights, so uint8 x int8 products cannot saturate on AVX2/AVX-512 CPUs
    # without VNNI (the serving node may lack it); one bit of weight precision less.
    reduce_range: bool = False
    intra_op_threads: int = 0  # 0: ONNX Runtime's default
    graph_optimization_level: Literal["basic", "all"] = "all"
    providers: list[str] = ["CPUExecutionProvider"]
    # Options of the first provider (TensorRT's precision and optimization profile).
    provider_options: dict[str, str] = {}

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")


# Static int8 as ONNX Runtime's CPU kernels run fastest: QOperator nodes, uint8 activations,
# int8 per-channel weights with reduce_range (Olive's pick on the public detectors).
STATIC_QOPERATOR = Recipe(name="static-int8-qoperator", kind="static_int8", per_channel=True,
                          quant_format="qoperator", activation_type="uint8", reduce_range=True)


class Skipped(BaseModel):
    name: str
    reason: str


def gpu_reason() -> str | None:
    """None if a CUDA provider is usable, else why not."""
    from modelship_server.runtime import provider_availability

    return provider_availability().get("cuda")


def looks_like_transformer(model: onnx.ModelProto) -> bool:
    """Attention (MatMul feeding Softmax) next to a normalisation: worth ONNX Runtime's
    transformer optimizer, whose fusions (attention, layer norm, GELU) the generic graph
    optimizer does not do."""
    ops = {node.op_type for node in model.graph.node}
    has_norm = bool(ops & {"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization"}) \
        or {"ReduceMean", "Sqrt", "Div"} <= ops
    return "Softmax" in ops and "MatMul" in ops and has_norm


def has_convolutions(model: onnx.ModelProto) -> bool:
    return any(node.op_type == "Conv" for node in model.graph.node)


def default_recipes(cpu_count: int | None = None, gpu_unavailable: str | None = "unchecked",
                    transformer: bool = False, convolutional: bool = False,
                    availability: Mapping[str, str | None] | None = None,
                    profile: tuple[gpu.Profile | None, str] | None = None) -> tuple[list[Recipe], list[Skipped]]:
    """The candidate list, and the candidates that cannot run here with the reason.

    GPU candidates follow `availability` (runtime.provider_availability(); by default measured
    here, or both GPU providers unusable for `gpu_unavailable`); `profile` is the TensorRT
    optimization profile (gpu_candidates.tensorrt_profile), None: none declared."""
    cpus = cpu_count or os.cpu_count() or 1
    if availability is None:
        if gpu_unavailable == "unchecked":
            from modelship_server.runtime import provider_availability

            availability = provider_availability()
        else:
            availability = {"cuda": gpu_unavailable, "tensorrt": gpu_unavailable}
    recipes = [Recipe(name="ort-all", kind="ort_all")]
    if convolutional:
        # The int8 candidate that paid off on the public detectors (docs/real-models.md): built
        # first among the quantized ones, so a tight budget still reaches it.
        recipes.append(STATIC_QOPERATOR.model_copy())
    skipped: list[Skipped] = []
    if transformer:
        recipes.append(Recipe(name="transformer-fusion", kind="transformer_fusion"))
    else:
        skipped.append(Skipped(name="transformer-fusion", reason="no attention with normalisation in the graph"))
    recipes += [
        Recipe(name="dynamic-int8", kind="dynamic_int8"),
        Recipe(name="dynamic-int8-per-channel", kind="dynamic_int8", per_channel=True),
    ]
    if transformer:  # fused attention quantizes whole (QAttention); mixed precision rescues accuracy
        recipes += [Recipe(name="fusion+dynamic-int8-per-channel", kind="dynamic_int8", per_channel=True,
                           fuse_transformer=True)]
        recipes += [Recipe(name=f"fusion+dynamic-int8-per-channel-float-{round(f * 100)}pct", kind="dynamic_int8",
                           per_channel=True, fuse_transformer=True, float_fraction=f) for f in MIXED_FRACTIONS]
    else:
        recipes += [Recipe(name=f"dynamic-int8-per-channel-float-{round(f * 100)}pct", kind="dynamic_int8",
                           per_channel=True, float_fraction=f) for f in MIXED_FRACTIONS[:1]]
    recipes += [
        Recipe(name="static-int8-qdq", kind="static_int8"),
        Recipe(name="static-int8-qdq-per-channel", kind="static_int8", per_channel=True),
    ]
    if not convolutional:  # QLinearMatMul for the MatMuls and Gemms
        recipes.append(STATIC_QOPERATOR.model_copy())
    if convolutional:  # int8 convolutions pay off where int8 elementwise/pool ops would not
        recipes.append(Recipe(name="static-int8-qdq-conv-only", kind="static_int8", per_channel=True,
                              op_types=["Conv"]))
    if cpus > 1:  # one thread per request can beat a contended pool for small models
        recipes.append(Recipe(name="ort-all-1-thread", kind="ort_all", intra_op_threads=1))
    skipped += [Skipped(name=name, reason=why) for name, why in gpu.gpu_plan(availability)[1]]
    on_gpu = gpu_recipes(availability, profile)
    if on_gpu:
        # The Job runs on the service's hardware: with a usable GPU the service runs there, so a
        # CPU-only variant would be timed on a device it is not served on. The baseline is the
        # original on CUDA (search.py), and the candidates are the GPU ones.
        skipped += [Skipped(name=r.name, reason="the service runs on the GPU (CUDA is usable here): CPU-only variants "
                                                "are not candidates there") for r in recipes]
        return on_gpu, skipped
    return recipes, skipped


def gpu_recipes(availability: Mapping[str, str | None],
                profile: tuple[gpu.Profile | None, str] | None = None) -> list[Recipe]:
    """The GPU candidates that can run here (gpu_candidates.gpu_plan): fp16 on CUDA, and the
    original on TensorRT in fp32 and fp16 with the declared optimization profile."""
    shapes = profile[0] if profile else None
    made = {
        "fp16-cuda": lambda: Recipe(name="fp16-cuda", kind="fp16", providers=[gpu.CUDA, gpu.CPU]),
        "tensorrt-fp32": lambda: Recipe(name="tensorrt-fp32", kind="tensorrt", providers=[gpu.TRT, gpu.CUDA, gpu.CPU],
                                        provider_options=gpu.tensorrt_options(False, shapes)),
        "tensorrt-fp16": lambda: Recipe(name="tensorrt-fp16", kind="tensorrt", providers=[gpu.TRT, gpu.CUDA, gpu.CPU],
                                        provider_options=gpu.tensorrt_options(True, shapes)),
    }
    return [made[name]() for name in gpu.gpu_plan(availability)[0]]


def baseline_recipe(on_gpu: bool = False) -> Recipe:
    """The original file as the server would run it (all of ONNX Runtime's online
    optimizations, default threads; on CUDA where the Job has a GPU, as it is served there):
    what every candidate must beat, and the fallback."""
    providers = [gpu.CUDA, gpu.CPU] if on_gpu else ["CPUExecutionProvider"]
    return Recipe(name="baseline", kind="baseline", graph_optimization_level="all", providers=providers)


def session_options(recipe: Recipe) -> ort.SessionOptions:
    """The recipe's settings, otherwise as modelship-server runs a model: variants are timed as
    they will be served. That includes no spinning (the server's default), which also keeps a
    timed variant's idle pool threads off the cores of the next one: with spinning on, the first
    calls after a switch ran 1.8-2.1x slower than steady ones on MiniLM on 2 cores, with it off
    no slower (benchmarks/switch_cost.py)."""
    from modelship_server.runtime import RuntimeOptions, set_spinning

    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[recipe.graph_optimization_level]
    options.intra_op_num_threads = recipe.intra_op_threads
    options.log_severity_level = 3  # quantized graphs log harmless warnings
    set_spinning(options, RuntimeOptions().allow_spinning)
    return options


def session_providers(recipe: Recipe, path: Path) -> list[str | tuple[str, dict[str, str]]]:
    """The recipe's providers, the first with its options; TensorRT's engine cache goes in a
    folder beside the candidate's file (the work folder), so a candidate opened twice (gate,
    then timing) builds its engines once."""
    providers: list[str | tuple[str, dict[str, str]]] = list(recipe.providers)
    if recipe.provider_options or recipe.providers[0] == gpu.TRT:
        options = dict(recipe.provider_options)
        if recipe.providers[0] == gpu.TRT:
            options.setdefault("trt_engine_cache_path", str(path.parent / "tensorrt-cache" / recipe.name))
        providers[0] = (recipe.providers[0], options)
    return providers


def open_session(recipe: Recipe, path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), session_options(recipe), providers=session_providers(recipe, path))


class _Reader:
    """CalibrationDataReader over a list of feeds (ORT's interface: get_next, rewind)."""

    def __init__(self, feeds: list[Feed]):
        self._feeds = feeds
        self._index = 0

    def get_next(self) -> Feed | None:
        if self._index >= len(self._feeds):
            return None
        self._index += 1
        return self._feeds[self._index - 1]

    def rewind(self) -> None:
        self._index = 0


def _canonical_node_names(path: Path) -> None:
    """Rename nodes by position. ONNX Runtime's layout transformers name the nodes they insert
    from a hash map, so two identical optimizations can differ in names alone; the serving pod's
    digest check (apply.py) needs the same bytes. Node names carry no meaning at run time."""
    model = onnx.load(str(path))
    for i, node in enumerate(model.graph.node):
        node.name = f"{node.op_type}_{i}"
    onnx.save(model, str(path))


def _ort_optimized(recipe: Recipe, source: Path, target: Path) -> None:
    """ONNX Runtime's own graph optimizations at the recipe's level, saved as a file."""
    options = session_options(recipe)
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    _canonical_node_names(target)


def _fuse_transformer(source: Path, target: Path) -> None:
    """Attention, layer-norm and GELU fusions for the layouts exporters write (fusion.py)."""
    from .fusion import fuse

    fuse(source, target)


QDQ_PER_CHANNEL_OPSET = 13  # DequantizeLinear's axis attribute (per-channel scales) is opset 13


def _prepared(source: Path, scratch: Path, min_opset: int = 0) -> tuple[Path, onnx.ModelProto]:
    """The model as the quantizers need it, written to `scratch` only when it changed.

    - Constant nodes holding tensors become initializers: some exporters (Paddle2ONNX, older
      TensorFlow converters) write every weight as a Constant node, and the quantizers only
      quantize weights that are initializers (else they fail, or treat weights as activations).
    - Every node gets a name (by position, so a rebuild names them the same): exclusion is by name.
    - The default opset is raised to `min_opset` when lower (per-channel QDQ needs 13).
    """
    model = onnx.load(str(source))
    changed = False
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < min_opset:
        from onnx import version_converter

        model = version_converter.convert_version(model, min_opset)
        changed = True
    graph = model.graph
    kept = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        if node.op_type == "Constant" and not node.domain and value is not None and len(node.output) == 1:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            changed = True
        else:
            kept.append(node)
    if changed:
        del graph.node[:]
        graph.node.extend(kept)
    unnamed = [n for n in graph.node if not n.name]
    for i, node in enumerate(unnamed):
        node.name = f"modelship_{node.op_type}_{i}"
    if not (changed or unnamed):
        return source, model
    onnx.save(model, str(scratch))
    return scratch, model


def _quantize(recipe: Recipe, source: Path, workdir: Path, target: Path, calibration: list[Feed]) -> None:
    from onnxruntime import quantization as q

    if recipe.fuse_transformer:
        source = shared_file(workdir, "fused", source, _fuse_transformer)
    per_channel_qdq = recipe.kind == "static_int8" and recipe.per_channel and recipe.quant_format == "qdq"
    prepared = workdir / f"{recipe.name}-prepared.onnx"
    source, model = _prepared(source, prepared, min_opset=QDQ_PER_CHANNEL_OPSET if per_channel_qdq else 0)
    if source != prepared:
        # The quantizers write `<input>-inferred.onnx` beside their input and delete it after:
        # builds running in parallel from one file would trip over each other's.
        prepared.unlink(missing_ok=True)
        prepared.symlink_to(source.resolve())
        source = prepared
    excluded: list[str] = []
    if recipe.float_fraction > 0:
        ranked = ranked_once(model, calibration, recipe.per_channel, recipe.op_types, workdir)
        keep = min(len(ranked), math.ceil(recipe.float_fraction * len(ranked)))
        excluded = [name for _, name in ranked[:keep]]
        # The dynamic quantizer first rewrites Gemm as MatMul + Add, naming the MatMul <name>_MatMul.
        gemms = {n.name for n in model.graph.node if n.op_type == "Gemm"}
        excluded += [f"{name}_MatMul" for name in excluded if name in gemms]
    # Fused contrib operators have no ONNX shape inference; their outputs are float.
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT} if recipe.fuse_transformer else {}
    if recipe.kind == "dynamic_int8":
        q.quantize_dynamic(source, target, per_channel=recipe.per_channel, weight_type=q.QuantType.QInt8,
                           nodes_to_exclude=excluded, op_types_to_quantize=recipe.op_types, extra_options=extra,
                           reduce_range=recipe.reduce_range)
    else:
        excluded += [n.name for n in model.graph.node if n.op_type in STATIC_EXCLUDED_OPS]
        fmt = q.QuantFormat.QOperator if recipe.quant_format == "qoperator" else q.QuantFormat.QDQ
        activations = q.QuantType.QUInt8 if recipe.activation_type == "uint8" else q.QuantType.QInt8
        q.quantize_static(source, target, _Reader(calibration), quant_format=fmt,
                          per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                          nodes_to_exclude=excluded, op_types_to_quantize=recipe.op_types, extra_options=extra,
                          activation_type=activations, weight_type=q.QuantType.QInt8)


def build(recipe: Recipe, source: Path, workdir: Path, calibration: list[Feed]) -> Path:
    """Write the variant's model file under `workdir` and return its path."""
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / f"{recipe.name}.onnx"
    if recipe.kind == "baseline":
        shutil.copyfile(source, target)
    elif recipe.kind == "ort_all":
        # The optimized graph does not depend on the session's threads: one file for every ort_all recipe.
        shutil.copyfile(shared_file(workdir, f"ort-{recipe.graph_optimization_level}", source,
                                lambda s, t: _ort_optimized(recipe, s, t)), target)
    elif recipe.kind == "transformer_fusion":
        shutil.copyfile(shared_file(workdir, "fused", source, _fuse_transformer), target)
    elif recipe.kind in ("dynamic_int8", "static_int8"):
        _quantize(recipe, source, workdir, target, calibration)
    elif recipe.kind == "tensorrt":  # the provider is the variant: the file is the original's
        shutil.copyfile(source, target)
    elif recipe.kind == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(target))
    else:  # pragma: no cover - Kind is a closed Literal
        raise ValueError(f"unknown recipe kind {recipe.kind}")
    return target
