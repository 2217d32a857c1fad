"""Model files for the canary tests: a slow copy of a model, with the same signature and the same
answers, that passes every check the operator and the server make and is simply slower; and a
wrong copy, as fast, with the same signature and other answers.

The extra work hangs off the input (so nothing can constant-fold it) and joins the output as
zero times its sum, which ONNX Runtime computes and does not optimize away.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def slow_copy(model: onnx.ModelProto, *, matmuls: int, width: int = 1024) -> onnx.ModelProto:
    """`model` plus a chain of `matmuls` [N, width] x [width, width] products per request."""
    slow = onnx.ModelProto()
    slow.CopyFrom(model)
    graph = slow.graph
    source, output = graph.input[0].name, graph.output[0].name
    features = graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    for node in graph.node:  # the model's own output now feeds the final Add
        node.output[:] = ["slow_original" if o == output else o for o in node.output]
    rng = np.random.default_rng(7)
    graph.initializer.extend([
        numpy_helper.from_array((rng.standard_normal((features, width)) / np.sqrt(features)).astype(np.float32),
                                "slow_in"),
        numpy_helper.from_array(np.eye(width, dtype=np.float32), "slow_w"),
        numpy_helper.from_array(np.zeros((), np.float32), "slow_zero"),
    ])
    nodes = [helper.make_node("MatMul", [source, "slow_in"], ["slow_0"])]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"slow_{i}", "slow_w"], [f"slow_{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"slow_{matmuls}"], ["slow_sum"], keepdims=0),
        helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"]),
        helper.make_node("Add", ["slow_original", "slow_nothing"], [output]),
    ]
    graph.node.extend(nodes)
    graph.value_info.append(helper.make_tensor_value_info("slow_original", TensorProto.FLOAT, None))
    onnx.checker.check_model(slow)
    return slow


def wrong_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every float weight shuffled (seeded): the same graph, signature and speed,
    other answers (a wrong file that passes every check but the comparison with stable)."""
    wrong = onnx.ModelProto()
    wrong.CopyFrom(model)
    rng = np.random.default_rng(11)
    for i, tensor in enumerate(wrong.graph.initializer):
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind == "f" and array.size > 1:
            shuffled = rng.permutation(array.ravel()).reshape(array.shape).astype(array.dtype)
            wrong.graph.initializer[i].CopyFrom(numpy_helper.from_array(shuffled, tensor.name))
    onnx.checker.check_model(wrong)
    return wrong
