"""Models built with onnx.helper for the classes no public PyPI package covers here.

Each one copies the interface of a model family users bring, not its weights: what matters to
serving and optimizing is the shape of the inputs and outputs (state with the batch on axis 1,
a scalar input, int64 ids with a mask, outputs of several ranks, strings).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _finish(nodes: list, inputs: list, outputs: list, inits: list, name: str,
            extra_opsets: tuple[tuple[str, int], ...] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    opsets = [helper.make_opsetid("", OPSET), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _f32(rng: np.random.Generator, name: str, shape: tuple[int, ...], scale: float = 1.0) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale / np.sqrt(shape[0])).astype(np.float32), name)


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def vad_state(samples: int = 512, hidden: int = 128) -> onnx.ModelProto:
    """A voice-activity detector shaped like Silero VAD's ONNX export: audio `input` [batch,
    samples], recurrent `state` [2, batch, hidden] (the batch on axis 1), a scalar int64 sample
    rate `sr`; outputs the speech probability `output` [batch, 1] and the next state `stateN`.

    Like the original, it reflect-pads the audio (so a generated input of length 1 fails in
    ONNX Runtime) and scales by the sample rate (so `sr` must be a real rate, not 0 or 1)."""
    rng = np.random.default_rng(11)
    nodes = [
        helper.make_node("Pad", ["input", "pads"], ["padded"], mode="reflect"),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["srf", "sr_ref"], ["sr_scale"]),
        helper.make_node("Mul", ["padded", "sr_scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "w_audio"], ["audio_h"]),  # [B, H]
        helper.make_node("ReduceMean", ["state"], ["state_mean"], axes=[0], keepdims=0),  # [B, H]
        helper.make_node("MatMul", ["state_mean", "w_state"], ["state_h"]),
        helper.make_node("Add", ["audio_h", "state_h"], ["h_pre"]),
        helper.make_node("Tanh", ["h_pre"], ["h"]),  # [B, H]
        helper.make_node("MatMul", ["h", "w_out"], ["logit"]),  # [B, 1]
        helper.make_node("Sigmoid", ["logit"], ["output"]),
        helper.make_node("Unsqueeze", ["h", "axis0"], ["h0"]),  # [1, B, H]
        helper.make_node("Mul", ["state", "decay"], ["kept"]),
        helper.make_node("Add", ["kept", "h0"], ["stateN"]),  # [2, B, H]
    ]
    inits = [
        _const("pads", np.array([0, 32, 0, 32], np.int64)),
        _const("sr_ref", np.array(16000.0, np.float32)),
        _f32(rng, "w_audio", (samples + 64, hidden)),
        _f32(rng, "w_state", (hidden, hidden)),
        _f32(rng, "w_out", (hidden, 1), scale=4.0),
        _const("axis0", np.array([0], np.int64)),
        _const("decay", np.array([[[0.9]], [[0.5]]], np.float32)),
    ]
    return _finish(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "samples"]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", hidden]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", hidden])],
        inits, "vad_state")


def text_encoder(vocab: int = 1000, width: int = 64) -> onnx.ModelProto:
    """A one-layer transformer encoder shaped like a sentence-embedding export: int64
    `input_ids` and `attention_mask` [batch, sequence]; masked self-attention, a feed-forward
    block and masked mean pooling give `sentence_embedding` [batch, width]. An id outside
    [0, vocab) makes ONNX Runtime's Gather fail, as in a real tokenizer mismatch."""
    rng = np.random.default_rng(12)
    scale = np.array(1.0 / np.sqrt(width), np.float32)
    nodes = [
        helper.make_node("Gather", ["embeddings", "input_ids"], ["x"]),  # [B, S, W]
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores_raw"]),  # [B, S, S]
        helper.make_node("Mul", ["scores_raw", "scale"], ["scores"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),  # [B, S]
        helper.make_node("Unsqueeze", ["maskf", "axis1"], ["mask_row"]),  # [B, 1, S]
        helper.make_node("Sub", ["one", "mask_row"], ["inverted"]),
        helper.make_node("Mul", ["inverted", "neg_big"], ["bias"]),
        helper.make_node("Add", ["scores", "bias"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["attention"], axis=-1),
        helper.make_node("MatMul", ["attention", "v"], ["context"]),
        helper.make_node("Add", ["x", "context"], ["residual"]),
        helper.make_node("LayerNormalization", ["residual", "ln_scale", "ln_bias"], ["normed"], axis=-1),
        helper.make_node("MatMul", ["normed", "w1"], ["ff1"]),
        helper.make_node("Relu", ["ff1"], ["ff1r"]),
        helper.make_node("MatMul", ["ff1r", "w2"], ["ff2"]),
        helper.make_node("Add", ["normed", "ff2"], ["hidden"]),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask_col"]),  # [B, S, 1]
        helper.make_node("Mul", ["hidden", "mask_col"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "axis1"], ["summed"], keepdims=0),  # [B, W]
        helper.make_node("ReduceSum", ["mask_col", "axis1"], ["count_raw"], keepdims=0),  # [B, 1]
        helper.make_node("Max", ["count_raw", "one"], ["count"]),
        helper.make_node("Div", ["summed", "count"], ["sentence_embedding"]),
    ]
    inits = [
        _f32(rng, "embeddings", (vocab, width), scale=np.sqrt(vocab)),
        _f32(rng, "wq", (width, width)), _f32(rng, "wk", (width, width)), _f32(rng, "wv", (width, width)),
        _f32(rng, "w1", (width, 4 * width)), _f32(rng, "w2", (4 * width, width)),
        _const("ln_scale", np.ones(width, np.float32)), _const("ln_bias", np.zeros(width, np.float32)),
        _const("scale", scale), _const("one", np.array(1.0, np.float32)),
        _const("neg_big", np.array(-1e4, np.float32)),
        _const("axis1", np.array([1], np.int64)), _const("axis2", np.array([2], np.int64)),
    ]
    return _finish(
        nodes,
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", width])],
        inits, "text_encoder")


def multi_rank(features: int = 16) -> onnx.ModelProto:
    """One input, three outputs of different ranks and types, as detection and ranking heads
    return: `logits` [batch, 10], `embedding` [batch, 4, 4], `score` [batch] and `label` int64 [batch]."""
    rng = np.random.default_rng(13)
    nodes = [
        helper.make_node("MatMul", ["features", "w_logits"], ["logits"]),
        helper.make_node("MatMul", ["features", "w_embed"], ["flat"]),
        helper.make_node("Reshape", ["flat", "embed_shape"], ["embedding"]),
        helper.make_node("ReduceMax", ["logits"], ["score"], axes=[1], keepdims=0),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    inits = [
        _f32(rng, "w_logits", (features, 10)), _f32(rng, "w_embed", (features, 16)),
        _const("embed_shape", np.array([-1, 4, 4], np.int64)),
    ]
    return _finish(
        nodes,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 4, 4]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])],
        inits, "multi_rank")


VOCABULARY = ("the", "a", "model", "serves", "fast", "slow", "good", "bad", "ok", "error",
              "latency", "gpu", "cpu", "batch", "queue", "ready")


def text_classifier(classes: int = 3, width: int = 8) -> onnx.ModelProto:
    """BYTES in: `tokens` [batch, words] strings, looked up in a fixed vocabulary (unknown words
    map to 0) with ai.onnx.ml's LabelEncoder, embedded, mean-pooled, classified: `scores`
    [batch, classes]. Stands for the string-preprocessing front of text pipelines."""
    rng = np.random.default_rng(14)
    nodes = [
        helper.make_node("LabelEncoder", ["tokens"], ["ids"], domain="ai.onnx.ml",
                         keys_strings=list(VOCABULARY), values_int64s=list(range(1, len(VOCABULARY) + 1)),
                         default_int64=0),
        helper.make_node("Gather", ["table", "ids"], ["vectors"]),  # [B, T, W]
        helper.make_node("ReduceMean", ["vectors"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["scores"]),
    ]
    inits = [
        _f32(rng, "table", (len(VOCABULARY) + 1, width), scale=4.0), _f32(rng, "w", (width, classes)),
    ]
    return _finish(
        nodes,
        [helper.make_tensor_value_info("tokens", TensorProto.STRING, ["batch", "words"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", classes])],
        inits, "text_classifier", extra_opsets=(("ai.onnx.ml", 2),))
