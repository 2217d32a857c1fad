"""Small ONNX models built in code with onnx.helper, for tests, benchmarks and smoke checks.

Nothing can be downloaded where this runs, so every model the test suite and
the benchmark scripts serve is generated here, deterministically (fixed seeds).
`write_model` lays one out in Triton's repository layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(nodes, inputs, outputs, initializers=(), name="model") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # loadable by every onnxruntime >= 1.14
    onnx.checker.check_model(model)
    return model


def _weight(rng, name, shape) -> onnx.TensorProto:
    scale = 1.0 / np.sqrt(shape[0])
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def mlp(widths: tuple[int, ...] = (64, 128, 10), seed: int = 0, input_name: str = "INPUT0",
        output_name: str = "OUTPUT0") -> onnx.ModelProto:
    """A batched MLP [N, widths[0]] -> ... -> [N, widths[-1]] (Gemm + Relu layers)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = input_name
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        inits += [_weight(rng, f"W{i}", (a, b)), numpy_helper.from_array(np.zeros(b, np.float32) + 0.01, f"B{i}")]
        last = i == len(widths) - 2
        out = output_name if last else f"h{i}"
        gemm_out = out if last else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        prev = out
    return _model(
        nodes,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", widths[0]])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", widths[-1]])],
        inits, "mlp",
    )


def image_classifier(channels: int = 3, height: int = 48, width: int = 192, classes: int = 10,
                     seed: int = 0) -> onnx.ModelProto:
    """[N, 3, 48, 192] float32 image -> small conv -> global pool -> [N, classes] logits."""
    rng = np.random.default_rng(seed)
    conv_w = (rng.standard_normal((8, channels, 3, 3)) * 0.1).astype(np.float32)
    fc_w = (rng.standard_normal((8, classes)) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["IMAGE", "conv_w"], ["c"], strides=[4, 4], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "fc_w"], ["LOGITS"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("IMAGE", TensorProto.FLOAT, ["N", channels, height, width])],
        [helper.make_tensor_value_info("LOGITS", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(fc_w, "fc_w")],
        "image_classifier",
    )


def multi_io() -> onnx.ModelProto:
    """Two typed inputs and two outputs, to exercise validation:
    x FP32 [N, 4], k INT64 [N, 1] -> y = x * k (FP32 [N, 4]), flag = k > 0 (BOOL [N, 1])."""
    nodes = [
        helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "kf"], ["y"]),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Greater", ["k", "zero"], ["flag"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("k", TensorProto.INT64, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, ["N", 1])],
        name="multi_io",
    )


def strings() -> onnx.ModelProto:
    """BYTES in, BYTES out: text [N, 1] -> Identity -> echo [N, 1]."""
    return _model(
        [helper.make_node("Identity", ["text"], ["echo"])],
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N", 1])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["N", 1])],
        name="strings",
    )


def slow(size: int = 512, repeats: int = 8, rows: int = 512) -> onnx.ModelProto:
    """A deliberately slow model for draining/timeout tests: x [N, size] is tiled to
    [rows, size] and multiplied by a [size, size] matrix `repeats` times; y = mean -> [N, size]."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["xm"], axes=[0], keepdims=1),
        helper.make_node("Tile", ["xm", "reps"], ["t0"]),
    ]
    prev = "t0"
    for i in range(repeats):
        nodes.append(helper.make_node("MatMul", [prev, "W"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i + 1}"]))
        prev = f"t{i + 1}"
    nodes += [
        helper.make_node("ReduceMean", [prev], ["pm"], axes=[0], keepdims=1),
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Expand", ["pm", "xs"], ["pe"]),
        helper.make_node("Add", ["pe", "x"], ["y"]),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", size])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([rows, 1], np.int64), "reps")],
        "slow",
    )
    return model


def never_answers(width: int = 4) -> onnx.ModelProto:
    """A model that loads but fails every inference (a Gather past the end of axis 1): what a
    server must never call Ready. x [N, width] FP32 -> y [N, 1]."""
    return _model(
        [helper.make_node("Gather", ["x", "past_end"], ["y"], axis=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(np.array([width + 100], np.int64), "past_end")],
        "never_answers",
    )


def identity(datatype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """x [N, D] -> Identity -> y [N, D]: responses as large as requests (pipelining and budget tests)."""
    return _model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", datatype, ["N", "D"])],
        [helper.make_tensor_value_info("y", datatype, ["N", "D"])],
        name="identity",
    )


def embedding(vocab: int = 100, dim: int = 4) -> onnx.ModelProto:
    """ids INT64 [N, L] -> Gather from a [vocab, dim] table -> [N, L, dim]; an id >= vocab
    makes ONNX Runtime fail at run time (the "bad token id" of issue 13)."""
    table = np.arange(vocab * dim, dtype=np.float32).reshape(vocab, dim)
    return _model(
        [helper.make_node("Gather", ["table", "ids"], ["vectors"], axis=0)],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "L"])],
        [helper.make_tensor_value_info("vectors", TensorProto.FLOAT, ["N", "L", dim])],
        [numpy_helper.from_array(table, "table")],
        "embedding",
    )


def broadcast_add() -> onnx.ModelProto:
    """a [N, A] + b [N, B] -> c: shapes that do not broadcast fail inside ONNX Runtime."""
    return _model(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", "A"]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", "B"])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", "C"])],
        name="broadcast_add",
    )


def write_model(repo: Path, name: str, model: onnx.ModelProto, config: str | None = None,
                version: int = 1) -> Path:
    """Write `<repo>/<name>/<version>/model.onnx` (and `config.pbtxt` if given); the model folder."""
    folder = Path(repo) / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / str(version) / "model.onnx"))
    if config is not None:
        (folder / "config.pbtxt").write_text(config)
    return folder
