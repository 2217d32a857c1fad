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


def transformer_encoder(seed: int = 0, seq: int = 16, dim: int = 32, ffn: int = 64) -> onnx.ModelProto:
    """One encoder block, [N, seq, dim] -> [N, seq, dim], written the way older exporters did:
    layer norm and erf-GELU as primitive ops (what the transformer optimizer fuses),
    single-head attention as MatMul -> scale -> Softmax -> MatMul."""
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int, scale: float = 0.2) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    def const(name: str, value: float) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(value, np.float32), name)

    inits = [weight(n, dim, dim) for n in ("Wq", "Wk", "Wv", "Wo")] + [
        weight("W1", dim, ffn), weight("B1", ffn, scale=0.05), weight("W2", ffn, dim), weight("B2", dim, scale=0.05),
        numpy_helper.from_array(np.ones(dim, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(dim, np.float32), "beta"),
        const("two", 2.0), const("eps", 1e-5), const("scale", 1.0 / np.sqrt(dim)),
        const("sqrt2", float(np.sqrt(2.0))), const("one", 1.0), const("half", 0.5),
    ]
    nodes: list[onnx.NodeProto] = []

    def layer_norm(x: str, out: str) -> None:
        p = out + "_"
        nodes.extend([
            helper.make_node("ReduceMean", [x], [p + "mean"], axes=[-1], name=p + "mean"),
            helper.make_node("Sub", [x, p + "mean"], [p + "centered"], name=p + "sub"),
            helper.make_node("Pow", [p + "centered", "two"], [p + "sq"], name=p + "pow"),
            helper.make_node("ReduceMean", [p + "sq"], [p + "var"], axes=[-1], name=p + "var"),
            helper.make_node("Add", [p + "var", "eps"], [p + "vareps"], name=p + "addeps"),
            helper.make_node("Sqrt", [p + "vareps"], [p + "std"], name=p + "sqrt"),
            helper.make_node("Div", [p + "centered", p + "std"], [p + "norm"], name=p + "div"),
            helper.make_node("Mul", [p + "norm", "gamma"], [p + "scaled"], name=p + "gamma"),
            helper.make_node("Add", [p + "scaled", "beta"], [out], name=p + "beta"),
        ])

    for w in ("q", "k", "v"):
        nodes.append(helper.make_node("MatMul", ["x", "W" + w], [w], name="proj_" + w))
    nodes += [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="kt"),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled_scores"], name="scale_scores"),
        helper.make_node("Softmax", ["scaled_scores"], ["probs"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["probs", "v"], ["context"], name="context"),
        helper.make_node("MatMul", ["context", "Wo"], ["attn"], name="proj_o"),
        helper.make_node("Add", ["x", "attn"], ["res1"], name="res1"),
    ]
    layer_norm("res1", "ln1")
    nodes += [
        helper.make_node("MatMul", ["ln1", "W1"], ["ff1"], name="ff1"),
        helper.make_node("Add", ["ff1", "B1"], ["ff1b"], name="ff1b"),
        helper.make_node("Div", ["ff1b", "sqrt2"], ["g_div"], name="gelu_div"),
        helper.make_node("Erf", ["g_div"], ["g_erf"], name="gelu_erf"),
        helper.make_node("Add", ["g_erf", "one"], ["g_add"], name="gelu_add"),
        helper.make_node("Mul", ["ff1b", "g_add"], ["g_mul"], name="gelu_mul"),
        helper.make_node("Mul", ["g_mul", "half"], ["gelu"], name="gelu_half"),
        helper.make_node("MatMul", ["gelu", "W2"], ["ff2"], name="ff2"),
        helper.make_node("Add", ["ff2", "B2"], ["ff2b"], name="ff2b"),
        helper.make_node("Add", ["ln1", "ff2b"], ["res2"], name="res2"),
    ]
    layer_norm("res2", "y")
    return samples._model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", seq, dim])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", seq, dim])], inits,
                          "transformer_encoder")


def free_image(seed: int = 0) -> onnx.ModelProto:
    """An OCR-style CNN with a free image size, x [N, 3, H, W] -> [N, 10]: a 3x3 convolution
    without padding, so generated 1x1 images cannot run (H and W must be at least 3)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w"),
        numpy_helper.from_array((rng.standard_normal((8, 10)) * 0.3).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["f", "fc"], ["logits"], name="fc"),
    ]
    return samples._model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits,
                          "free_image")


def stateful(seed: int = 0) -> onnx.ModelProto:
    """A voice-activity-style model: audio [N, S], state [2, N, 16] (batch on axis 1) and a
    scalar int64 sample rate `sr` -> prob [N, 1], stateN [2, N, 16]. The audio is padded with
    reflection (S must be at least 2, as in the real model) and scaled by sr / 16000."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(np.array([0, 1, 0, 1], np.int64), "pads"),
        numpy_helper.from_array((rng.standard_normal((16, 16)) * 0.2).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(1 / 16000, np.float32), "per_rate"),
        numpy_helper.from_array(np.array(0.5, np.float32), "decay"),
    ]
    nodes = [
        helper.make_node("Pad", ["audio", "pads"], ["padded"], mode="reflect", name="pad"),
        helper.make_node("ReduceMean", ["padded"], ["level"], axes=[1], keepdims=1, name="level"),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Mul", ["srf", "per_rate"], ["rate"], name="rate"),
        helper.make_node("Mul", ["level", "rate"], ["scaled"], name="scale"),
        helper.make_node("MatMul", ["state", "w"], ["mixed"], name="mix"),
        helper.make_node("Tanh", ["mixed"], ["squashed"], name="squash"),
        helper.make_node("Mul", ["squashed", "decay"], ["stateN"], name="decay"),
        helper.make_node("ReduceMean", ["stateN"], ["memory"], axes=[0, 2], keepdims=0, name="memory"),
        helper.make_node("Unsqueeze", ["memory", "one"], ["memory2"], name="unsqueeze"),
        helper.make_node("Add", ["scaled", "memory2"], ["logit"], name="add"),
        helper.make_node("Sigmoid", ["logit"], ["prob"], name="sigmoid"),
    ]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
    return samples._model(
        nodes,
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N", "S"]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 16]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "N", 16])],
        inits, "stateful")
