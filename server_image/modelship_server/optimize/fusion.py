"""Transformer fusion for graphs as today's exporters write them.

`torch.onnx.export` of a Hugging Face encoder with the default (SDPA) attention writes attention
as Mul(q, sqrt(scale)) and Mul(k^T, sqrt(scale)), a boolean mask turned into Where(m, 0, -inf),
Softmax, and IsNaN/Where around it; ONNX Runtime's BERT optimizer (onnxruntime.transformers)
matches only the eager layout, so on these exports it fused no attention. The fusions themselves
come from onnxscript's rewriter (`onnxscript.rewriter.ort_fusions`, maintained with ONNX
Runtime), which knows the SDPA layouts. It needs what an exporter leaves implicit, so small
generic clean-ups run first, each a pure function on the graph:

- symbolic shapes (ONNX Runtime's symbolic shape inference: head counts behind a Reshape to -1
  and batch/sequence dims by name), without which no shape check of a fusion rule can pass;
- one-element float constants as scalars (the IsNaN guard's `[0.]`);
- Reshapes whose input and output shapes are the same, as Identity (`view` calls in the model);
- Add and Mul with the constant first swapped (torch writes `bias + x`; the rules want `x + bias`).

After the fusions, two touches make the result quantizable as a whole (QAttention): weights
packed by Concat are folded into one initializer, and an additive mask computed as
Where(m, 0, -inf) becomes the operator's mask_index (m as int32), the form QAttention takes;
`qkv_hidden_sizes` is dropped where the three sizes are equal (the operator's default, and
QAttention refuses the attribute). GELUs still in their Erf form (the dynamo exporter's) get ONNX
Runtime's own GELU and bias-GELU fusions. Where onnxscript fuses no attention, ONNX Runtime's BERT
optimizer (what this recipe used before) gets its turn on the original. Every step is checked the same way afterwards: the
accuracy gate compares the fused file with the original.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import onnx
from onnx import helper, numpy_helper

ATTENTION_OPS = ("Attention", "MultiHeadAttention")
_MS = "com.microsoft"


def fused_attention_count(model: onnx.ModelProto) -> int:
    """How many attention blocks are fused operators (Attention, MultiHeadAttention, quantized or not)."""
    return sum(1 for n in model.graph.node if n.op_type in ATTENTION_OPS + ("QAttention",))


def scalar_constants(model: onnx.ModelProto) -> int:
    """One-element 1-D float Constants as scalars; broadcasting against a tensor gives the same result."""
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and len(attr.t.dims) == 1 \
                    and attr.t.dims[0] == 1 and attr.t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
                value = numpy_helper.to_array(attr.t).reshape(())
                attr.t.CopyFrom(numpy_helper.from_array(value, attr.t.name))
                changed += 1
    return changed


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int | str, ...]]:
    """Every value's shape as far as known, a dim being its number or its symbol ('' unknown)."""
    out = {}
    for info in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if info.type.tensor_type.HasField("shape"):
            out[info.name] = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param
                                   for d in info.type.tensor_type.shape.dim)
    return out


def identity_reshapes(model: onnx.ModelProto) -> int:
    """Reshapes whose input and output have the same fully named shape become Identity."""
    shapes = _shapes(model)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
            continue
        before, after = shapes.get(node.input[0]), shapes.get(node.output[0])
        if before and before == after and all(d not in (0, "") for d in before):
            node.op_type = "Identity"
            del node.input[1:]
            del node.attribute[:]
            changed += 1
    return changed


def _constant_names(model: onnx.ModelProto) -> set[str]:
    names = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" or (node.op_type == "Identity" and node.input and node.input[0] in names):
            names.update(node.output)
    return names


def constants_second(model: onnx.ModelProto) -> int:
    """Add and Mul with a constant first and a computed value second: swapped (both commute)."""
    constants = _constant_names(model)
    changed = 0
    for node in model.graph.node:
        if node.op_type in ("Add", "Mul") and node.domain in ("", "ai.onnx") and len(node.input) == 2 \
                and node.input[0] in constants and node.input[1] not in constants:
            node.input[0], node.input[1] = node.input[1], node.input[0]
            changed += 1
    return changed


def _scalar(model: onnx.ModelProto, name: str, producers: dict[str, onnx.NodeProto]) -> float | None:
    tensor = next((i for i in model.graph.initializer if i.name == name), None)
    if tensor is None and name in producers and producers[name].op_type == "Constant":
        tensor = next((a.t for a in producers[name].attribute if a.name == "value"), None)
    if tensor is None:
        return None
    value = numpy_helper.to_array(tensor)
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def mask_as_index(model: onnx.ModelProto) -> int:
    """An Attention whose additive mask is Where(m, 0, -inf or a large negative) and that has no
    mask_index takes m (boolean, [B, 1, S, T]) as a 3-D int32 mask_index instead: the same
    attention wherever a row keeps one key, and the form QAttention accepts."""
    producers = {out: node for node in model.graph.node for out in node.output}
    shapes = _shapes(model)
    added: list[tuple[int, list[onnx.NodeProto]]] = []
    changed = 0
    for index, node in enumerate(model.graph.node):
        if node.op_type != "Attention" or node.domain != _MS or len(node.input) < 6 or not node.input[5]:
            continue
        if len(node.input) > 3 and node.input[3]:
            continue
        where = producers.get(node.input[5])
        if where is None or where.op_type != "Where":
            continue
        keep, masked = _scalar(model, where.input[1], producers), _scalar(model, where.input[2], producers)
        if keep != 0.0 or masked is None or masked > -1e4:
            continue
        cond = where.input[0]
        # mask_index must be [B, S, T] with the input's own batch: m has to be [B, 1, S, T] (known)
        mask_shape, input_shape = shapes.get(cond), shapes.get(node.input[0])
        if not mask_shape or not input_shape or len(mask_shape) != 4 or mask_shape[1] != 1 \
                or mask_shape[0] in (0, "") or mask_shape[0] != input_shape[0]:
            continue
        stem = f"{node.name or node.output[0]}_mask_index"
        axes = helper.make_tensor(f"{stem}_axes", onnx.TensorProto.INT64, [1], [1])
        model.graph.initializer.append(axes)
        nodes = [helper.make_node("Squeeze", [cond, axes.name], [f"{stem}_3d"], name=f"{stem}_squeeze"),
                 helper.make_node("Cast", [f"{stem}_3d"], [stem], name=f"{stem}_cast", to=onnx.TensorProto.INT32)]
        added.append((index, nodes))
        inputs = list(node.input)
        inputs[3] = stem
        del inputs[5]
        while inputs and not inputs[-1]:
            inputs.pop()
        del node.input[:]
        node.input.extend(inputs)
        changed += 1
    for index, nodes in reversed(added):  # before their Attention, so the graph stays sorted
        for offset, new in enumerate(nodes):
            model.graph.node.insert(index + offset, new)
    return changed


def equal_qkv_sizes(model: onnx.ModelProto) -> int:
    """Drop qkv_hidden_sizes from Attention where the three sizes are equal (the default split)."""
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Attention" or node.domain != _MS:
            continue
        sizes = next((list(a.ints) for a in node.attribute if a.name == "qkv_hidden_sizes"), None)
        if sizes and len(set(sizes)) == 1:
            kept = [a for a in node.attribute if a.name != "qkv_hidden_sizes"]
            del node.attribute[:]
            node.attribute.extend(kept)
            changed += 1
    return changed


def _onnxscript_fusions(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """onnxscript's ONNX Runtime fusions, then constant Concats (packed QKV weights) folded."""
    import onnx_ir as ir
    import onnx_ir.passes.common as passes
    from onnxscript.optimizer import fold_constants_ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    graph = ir.from_proto(model)
    graph, counts = optimize_for_ort(graph)
    big = 1 << 31  # weights may be folded whatever their size: ONNX Runtime would at load anyway
    fold_constants_ir(graph, input_size_limit=big, output_size_limit=big)
    passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(graph)
    passes.RemoveUnusedNodesPass()(graph)
    return ir.to_proto(graph), {k: v for k, v in counts.items() if v}


def erf_gelus(model: onnx.ModelProto) -> int:
    """GELU chains left in their Erf form (x * 0.5 * (1 + erf(x / sqrt 2))) fused in place into
    Gelu, with the bias before them into BiasGelu, by ONNX Runtime's own GELU fusions. The dynamo
    exporter writes GELU in a layout onnxscript's GELU rules do not match (6 of 6 left on MiniLM);
    the onnxruntime.transformers optimizer as optimum calls it fuses them. Returns how many."""
    if not any(n.op_type == "Erf" for n in model.graph.node):
        return 0
    from onnxruntime.transformers.fusion_biasgelu import FusionBiasGelu
    from onnxruntime.transformers.fusion_gelu import FusionGelu
    from onnxruntime.transformers.onnx_model import OnnxModel

    erfs = sum(n.op_type == "Erf" for n in model.graph.node)
    wrapped = OnnxModel(model)  # works on `model` itself
    FusionGelu(wrapped).apply()
    FusionBiasGelu(wrapped, is_fastgelu=False).apply()
    wrapped.prune_graph()
    return erfs - sum(n.op_type == "Erf" for n in model.graph.node)


def _ort_bert_fusions(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's BERT optimizer at opt_level 0 (its fusions only; the serving session still
    runs ORT's own levels): attention in the eager layout, embedding layer norm, GELU."""
    from onnxruntime.transformers.optimizer import optimize_model

    # It warns when the producer is not "pytorch" although model_type is given; noise in the Job log.
    logging.getLogger("onnxruntime.transformers.optimizer").setLevel(logging.ERROR)
    return optimize_model(model, model_type="bert", opt_level=0).model


def _with_onnxscript(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The clean-ups, onnxscript's fusions, then the touches for QAttention (module docstring)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    done = {"scalar_constants": scalar_constants(model)}
    model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    done["identity_reshapes"] = identity_reshapes(model)
    done["constants_second"] = constants_second(model)
    model, counts = _onnxscript_fusions(model)
    done.update(counts)
    done["mask_as_index"] = mask_as_index(model)
    done["equal_qkv_sizes"] = equal_qkv_sizes(model)
    done["erf_gelus"] = erf_gelus(model)
    return model, done


def fuse(source: Path, target: Path) -> dict[str, int]:
    """Write the fused model to `target`; returns what was done (counts by step and operator).

    onnxscript's fusions first (SDPA and eager layouts); where they fuse no attention, ONNX
    Runtime's BERT optimizer on the original, if its result fuses attention or has fewer nodes. Raises ValueError when neither
    fused anything, so the candidate is reported as not applying.
    """
    original = onnx.load(str(source))
    ops_before = Counter(n.op_type for n in original.graph.node)
    try:
        model, done = _with_onnxscript(onnx.load(str(source)))
    except Exception as exc:  # noqa: BLE001 - a graph the rewriter cannot follow: ORT's optimizer may
        model, done = original, {f"onnxscript failed ({type(exc).__name__})": 1}
    if fused_attention_count(model) == 0:  # ORT's optimizer also fuses primitive layer norms
        fallback = _ort_bert_fusions(onnx.load(str(source)))
        if (fused_attention_count(fallback), -len(fallback.graph.node)) > (0, -len(model.graph.node)):
            model, done = fallback, {"onnxruntime_bert_optimizer": 1}
    if Counter(n.op_type for n in model.graph.node) == ops_before:
        raise ValueError("the transformer fusions found no attention, layer-norm or GELU pattern to fuse")
    done["fused_attention"] = fused_attention_count(model)
    domains = {o.domain for o in model.opset_import}
    if _MS not in domains and any(n.domain == _MS for n in model.graph.node):
        model.opset_import.append(helper.make_opsetid(_MS, 1))
    onnx.save(model, str(target))
    return {k: v for k, v in done.items() if v}


if __name__ == "__main__":  # python -m modelship_server.optimize.fusion IN OUT: try it on a file
    import json
    import sys

    print(json.dumps(fuse(Path(sys.argv[1]), Path(sys.argv[2]))))
