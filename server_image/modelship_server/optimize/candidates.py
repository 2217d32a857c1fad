"""Candidate variants as data: each recipe says how to build a model file and run it.

Recipes are plain pydantic data so the report can record exactly what produced the chosen file,
and so the operator can later set the same session settings when it serves that file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

import onnx
import onnxruntime as ort
from pydantic import BaseModel

from .inputs import Feed

Kind = Literal["baseline", "ort_all", "transformer_fusion", "dynamic_int8", "static_int8", "fp16"]
# Ops whose int8 versions lose too much (normalisation, softmax): left in float in static QDQ.
STATIC_EXCLUDED_OPS: tuple[str, ...] = ("LayerNormalization", "Softmax", "SkipLayerNormalization",
                                        "SimplifiedLayerNormalization", "GroupNormalization")
_LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
           "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


class Recipe(BaseModel):
    """How to produce and run one variant."""

    name: str
    kind: Kind
    per_channel: bool = False
    intra_op_threads: int = 0  # 0: ONNX Runtime's default
    graph_optimization_level: Literal["basic", "all"] = "all"
    providers: list[str] = ["CPUExecutionProvider"]


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


def default_recipes(cpu_count: int | None = None, gpu_unavailable: str | None = "unchecked",
                    transformer: bool = False) -> tuple[list[Recipe], list[Skipped]]:
    """The candidate list, and the candidates that cannot run here with the reason."""
    cpus = cpu_count or os.cpu_count() or 1
    if gpu_unavailable == "unchecked":
        gpu_unavailable = gpu_reason()
    recipes = [Recipe(name="ort-all", kind="ort_all")]
    skipped: list[Skipped] = []
    if transformer:
        recipes.append(Recipe(name="transformer-fusion", kind="transformer_fusion"))
    else:
        skipped.append(Skipped(name="transformer-fusion", reason="no attention with normalisation in the graph"))
    recipes += [
        Recipe(name="dynamic-int8", kind="dynamic_int8"),
        Recipe(name="dynamic-int8-per-channel", kind="dynamic_int8", per_channel=True),
        Recipe(name="static-int8-qdq", kind="static_int8"),
        Recipe(name="static-int8-qdq-per-channel", kind="static_int8", per_channel=True),
    ]
    if cpus > 1:  # one thread per request can beat a contended pool for small models
        recipes.append(Recipe(name="ort-all-1-thread", kind="ort_all", intra_op_threads=1))
    if gpu_unavailable is None:
        recipes.append(Recipe(name="fp16-cuda", kind="fp16",
                              providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))
        skipped.append(Skipped(name="tensorrt", reason="TensorRT engines are built per GPU model at serve time; "
                                                       "not a candidate of the offline search yet"))
    else:
        skipped += [Skipped(name="fp16-cuda", reason=f"no GPU provider: {gpu_unavailable}"),
                    Skipped(name="tensorrt", reason=f"no GPU provider: {gpu_unavailable}")]
    return recipes, skipped


def baseline_recipe() -> Recipe:
    """The original file as the server would run it (all of ONNX Runtime's online
    optimizations, default threads): what every candidate must beat, and the fallback."""
    return Recipe(name="baseline", kind="baseline", graph_optimization_level="all")


def session_options(recipe: Recipe) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[recipe.graph_optimization_level]
    options.intra_op_num_threads = recipe.intra_op_threads
    options.log_severity_level = 3  # quantized graphs log harmless warnings
    return options


def open_session(recipe: Recipe, path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), session_options(recipe), providers=recipe.providers)


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


def build(recipe: Recipe, source: Path, workdir: Path, calibration: list[Feed]) -> Path:
    """Write the variant's model file under `workdir` and return its path."""
    from onnxruntime import quantization as q

    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / f"{recipe.name}.onnx"
    if recipe.kind == "baseline":
        shutil.copyfile(source, target)
    elif recipe.kind == "ort_all":
        options = session_options(recipe)
        options.optimized_model_filepath = str(target)
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        _canonical_node_names(target)
    elif recipe.kind == "transformer_fusion":
        from onnxruntime.transformers.optimizer import optimize_model

        before = onnx.load(str(source))
        ops_before = sorted(node.op_type for node in before.graph.node)
        # opt_level 0: only the transformer fusions; ORT's own levels still run when served.
        fused = optimize_model(before, model_type="bert", opt_level=0)
        if sorted(node.op_type for node in fused.model.graph.node) == ops_before:
            raise ValueError("the transformer optimizer found no attention, layer-norm or GELU pattern to fuse")
        fused.save_model_to_file(str(target))
    elif recipe.kind == "dynamic_int8":
        q.quantize_dynamic(source, target, per_channel=recipe.per_channel, weight_type=q.QuantType.QInt8)
    elif recipe.kind == "static_int8":
        model = onnx.load(str(source))
        unnamed = [n for n in model.graph.node if not n.name]
        for i, node in enumerate(unnamed):  # exclusion works by node name; give every node one
            node.name = f"modelship_{node.op_type}_{i}"
        if unnamed:
            source = workdir / f"{recipe.name}-named.onnx"
            onnx.save(model, str(source))
        excluded = [n.name for n in model.graph.node if n.op_type in STATIC_EXCLUDED_OPS]
        q.quantize_static(source, target, _Reader(calibration), quant_format=q.QuantFormat.QDQ,
                          per_channel=recipe.per_channel, nodes_to_exclude=excluded,
                          activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8)
    elif recipe.kind == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(target))
    else:  # pragma: no cover - Kind is a closed Literal
        raise ValueError(f"unknown recipe kind {recipe.kind}")
    return target
