"""Tiny models for the optimize tests, built in code (nothing can be downloaded here)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelship_server import samples


def small_cnn(seed: int = 0) -> onnx.ModelProto:
    """[N, 3, 16, 16] -> Conv -> Relu -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> [N, 10]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32), "w2"),
        numpy_helper.from_array((rng.standard_normal((16, 10)) * 0.3).astype(np.float32), "fc"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fcb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], name="fc"),
    ]
    return samples._model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits, "small_cnn")


def int8_hostile(seed: int = 0) -> onnx.ModelProto:
    """An MLP whose activations span ~1e6 in range with the signal in the small values.

    The first layer puts a few huge outliers next to ordinary values; one int8 scale for the
    whole tensor then rounds every ordinary value to zero, so the output loses its direction.
    """
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal((16, 32)).astype(np.float32)
    w0[:, :2] *= 1e5  # two outlier channels with a huge range
    w1 = rng.standard_normal((32, 8)).astype(np.float32)
    w1[:2, :] *= 1e-5  # ...that barely matter for the output
    inits = [numpy_helper.from_array(w0, "W0"), numpy_helper.from_array(np.zeros(32, np.float32), "B0"),
             numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(np.zeros(8, np.float32), "B1")]
    nodes = [helper.make_node("Gemm", ["x", "W0", "B0"], ["h"], name="gemm0"),
             helper.make_node("Relu", ["h"], ["r"], name="relu0"),
             helper.make_node("Gemm", ["r", "W1", "B1"], ["y"], name="gemm1")]
    return samples._model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits, "int8_hostile")


def mlp() -> onnx.ModelProto:
    return samples.mlp((32, 64, 10))
