"""Transformer fusion on a real exporter's graph: a 2-layer BERT (random weights) written by
torch.onnx.export with the default SDPA attention (tests/optimize/data/bert-2l-sdpa.onnx, made by
`benchmarks/export_transformer.py --fixture`; CI has no torch). Before this fusion, the recipe
fused none of its attention; now both blocks become one Attention each, the fused file passes the
default gate, and int8 after it quantizes attention whole (QAttention)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from modelship_server.optimize import candidates as cand
from modelship_server.optimize import fusion
from modelship_server.optimize.gate import GateSpec, evaluate

FIXTURE = Path(__file__).parent / "data" / "bert-2l-sdpa.onnx"
# The same model through torch's dynamo exporter (`export_transformer.py --fixture ... --dynamo`):
# its GELU is an Erf chain onnxscript's rules leave alone.
DYNAMO_FIXTURE = Path(__file__).parent / "data" / "bert-2l-sdpa-dynamo.onnx"


def _feeds(count: int, batch: int = 1, seq: int = 16, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Token ids with padding at the end, as a tokenizer pads a batch (lengths vary)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        ids = rng.integers(1, 100, (batch, seq)).astype(np.int64)
        mask = np.ones((batch, seq), np.int64)
        for row in range(batch):
            mask[row, int(rng.integers(2, seq + 1)):] = 0
        feeds.append({"input_ids": ids * mask, "attention_mask": mask})
    return feeds


def _outputs(path: Path, feeds) -> list[list[np.ndarray]]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(None, feed) for feed in feeds]


def test_the_fixture_is_an_unfused_sdpa_export():
    model = onnx.load(str(FIXTURE))
    ops = [n.op_type for n in model.graph.node]
    assert model.producer_name == "pytorch", model.producer_name
    assert fusion.fused_attention_count(model) == 0
    assert ops.count("Softmax") == 2 and "IsNaN" in ops  # SDPA's decomposition, one per layer


def test_fusion_fuses_every_attention_block_of_the_sdpa_export_and_passes_the_gate(tmp_path):
    target = tmp_path / "fused.onnx"
    done = fusion.fuse(FIXTURE, target)
    fused = onnx.load(str(target))
    assert fusion.fused_attention_count(fused) == 2, done
    assert "Softmax" not in {n.op_type for n in fused.graph.node}
    assert done["sdpa"] == 2 and done["attention"] == 2, done
    feeds = _feeds(8) + _feeds(4, batch=3, seq=9, seed=1)  # other batch and sequence sizes too
    verdict = evaluate(GateSpec(), _outputs(FIXTURE, feeds), _outputs(target, feeds))
    assert verdict.passed and verdict.worst > 0.9999, verdict.reason


def test_the_recipe_builds_the_fused_file_and_int8_quantizes_attention_whole(tmp_path):
    feeds = _feeds(16)
    fused = cand.build(cand.Recipe(name="transformer-fusion", kind="transformer_fusion"), FIXTURE,
                       tmp_path / "w", feeds[:8])
    assert fusion.fused_attention_count(onnx.load(str(fused))) == 2
    int8 = cand.build(cand.Recipe(name="f8", kind="dynamic_int8", per_channel=True, fuse_transformer=True),
                      FIXTURE, tmp_path / "w", feeds[:8])
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert ops.count("QAttention") == 2, sorted(set(ops))
    verdict = evaluate(GateSpec(threshold_mean=0.95, threshold_worst=0.9), _outputs(FIXTURE, feeds[8:]),
                       _outputs(int8, feeds[8:]))
    assert verdict.passed, verdict.reason


def test_a_graph_with_nothing_to_fuse_is_refused_with_a_reason(tmp_path):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    source = tmp_path / "relu.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(source))
    try:
        fusion.fuse(source, tmp_path / "out.onnx")
    except ValueError as exc:
        assert "no attention" in str(exc)
    else:
        raise AssertionError("fuse() accepted a graph with nothing to fuse")


def _where_mask_attention(mask_shape: tuple[int, ...] = (1, 1, 3, 3)) -> onnx.ModelProto:
    """An Attention whose additive mask is Where(m, 0, -inf), as the SDPA export's fusion leaves it."""
    nodes = [
        helper.make_node("Where", ["m", "zero", "minus_inf"], ["bias"]),
        helper.make_node("Attention", ["x", "w", "b", "", "", "bias"], ["y"], name="att", domain="com.microsoft",
                         num_heads=2, qkv_hidden_sizes=[4, 4, 4]),
    ]
    inits = [helper.make_tensor("zero", onnx.TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("minus_inf", onnx.TensorProto.FLOAT, [], [-np.inf]),
             helper.make_tensor("w", onnx.TensorProto.FLOAT, [4, 12], np.linspace(-1, 1, 48).tolist()),
             helper.make_tensor("b", onnx.TensorProto.FLOAT, [12], [0.1] * 12)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4]),
                     helper.make_tensor_value_info("m", onnx.TensorProto.BOOL, list(mask_shape))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8  # what ONNX Runtime reads, whatever the installed onnx writes by default
    return model


def test_a_where_mask_becomes_mask_index_with_the_same_attention(tmp_path):
    model = _where_mask_attention()
    before = tmp_path / "before.onnx"
    onnx.save(model, str(before))
    assert fusion.mask_as_index(model) == 1 and fusion.equal_qkv_sizes(model) == 1
    after = tmp_path / "after.onnx"
    onnx.save(model, str(after))
    att = next(n for n in model.graph.node if n.op_type == "Attention")
    assert len(att.input) == 4 and att.input[3] and not any(a.name == "qkv_hidden_sizes" for a in att.attribute)
    x = np.random.default_rng(0).standard_normal((1, 3, 4)).astype(np.float32)
    m = np.array([[[[True, True, False]] * 3]])
    feed = {"x": x, "m": m}
    np.testing.assert_allclose(_outputs(after, [feed])[0][0], _outputs(before, [feed])[0][0], rtol=1e-5, atol=1e-6)


def test_a_mask_that_is_not_one_per_batch_row_stays_additive():
    """mask_index is [B, S, T]: a per-head mask or one without the batch cannot become it."""
    assert fusion.mask_as_index(_where_mask_attention((1, 2, 3, 3))) == 0
    model = _where_mask_attention()
    del model.graph.input[1].type.tensor_type.shape.dim[:]  # shape unknown: left alone
    assert fusion.mask_as_index(model) == 0


def test_the_clean_ups_are_exact_rewrites():
    const = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", onnx.TensorProto.FLOAT, [1], [0.0]))
    add = helper.make_node("Add", ["c", "x"], ["y"])
    graph = helper.make_graph([const, add], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    model = helper.make_model(graph)
    assert fusion.scalar_constants(model) == 1 and list(model.graph.node[0].attribute[0].t.dims) == []
    assert fusion.constants_second(model) == 1 and list(model.graph.node[1].input) == ["x", "c"]
    assert fusion.constants_second(model) == 0  # already canonical


def test_fusing_twice_writes_the_same_bytes(tmp_path):
    """A serving pod rebuilds the chosen recipe and checks its digest (apply.py)."""
    fusion.fuse(FIXTURE, tmp_path / "a.onnx")
    fusion.fuse(FIXTURE, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_the_dynamo_exports_erf_gelus_fuse_too_and_the_result_passes_the_gate(tmp_path):
    """ONNX Runtime's optimizer (as optimum calls it) fused the dynamo export's GELUs where ours
    left them as Erf chains; the Erf step closes that gap (benchmarks/fusion_vs_ort.py)."""
    ops = [n.op_type for n in onnx.load(str(DYNAMO_FIXTURE)).graph.node]
    assert ops.count("Erf") == 2 and "Gelu" not in ops and "BiasGelu" not in ops
    target = tmp_path / "fused.onnx"
    done = fusion.fuse(DYNAMO_FIXTURE, target)
    fused_ops = [n.op_type for n in onnx.load(str(target)).graph.node]
    assert "Erf" not in fused_ops and fused_ops.count("BiasGelu") == 2, done
    assert fused_ops.count("Attention") == 2 and done["erf_gelus"] == 2, done
    feeds = _feeds(8) + _feeds(4, batch=3, seq=9, seed=1)
    verdict = evaluate(GateSpec(), _outputs(DYNAMO_FIXTURE, feeds), _outputs(target, feeds))
    assert verdict.passed and verdict.worst > 0.9999, verdict.reason


def test_the_gelu_step_leaves_a_graph_without_erf_as_it_is(tmp_path):
    fusion.fuse(FIXTURE, tmp_path / "fused.onnx")  # onnxscript fused the TorchScript export's GELUs
    model = onnx.load(str(tmp_path / "fused.onnx"))
    snapshot = model.SerializeToString()
    assert fusion.erf_gelus(model) == 0 and model.SerializeToString() == snapshot


def test_fusing_the_dynamo_export_twice_writes_the_same_bytes(tmp_path):
    """apply-variant rebuilds the fused file in the serving pod and checks its digest."""
    fusion.fuse(DYNAMO_FIXTURE, tmp_path / "a.onnx")
    fusion.fuse(DYNAMO_FIXTURE, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
