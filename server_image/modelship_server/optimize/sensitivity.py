"""Which weighted nodes int8 would hurt most, judged without building anything.

Accuracy lost to int8 concentrates in a few layers (those fed by outlier activations); the
mixed-precision recipes keep the worst-ranked fraction in float. Simulating each node's int8
error on its real inputs is far cheaper than quantizing and gating once per choice of nodes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from .inputs import Feed
from .workfolder import locked

WEIGHTED_OPS: dict[str, int] = {"MatMul": 1, "Gemm": 1, "Attention": 1, "Conv": 1}  # op -> weight input


def _fake_int8(values: np.ndarray, per_channel_axis: int | None, symmetric: bool) -> np.ndarray:
    """`values` rounded to the int8/uint8 grid the quantizer would use (per tensor or per channel)."""
    if per_channel_axis is None:
        lo, hi = np.minimum(values.min(), 0.0), np.maximum(values.max(), 0.0)
    else:
        axes = tuple(a for a in range(values.ndim) if a != per_channel_axis % values.ndim)
        lo = np.minimum(values.min(axis=axes, keepdims=True), 0.0)
        hi = np.maximum(values.max(axis=axes, keepdims=True), 0.0)
    if symmetric:
        scale = np.maximum(np.abs(lo), np.abs(hi)) / 127.0
        scale = np.where(scale == 0, 1.0, scale)
        return np.clip(np.round(values / scale), -127, 127) * scale
    scale = (hi - lo) / 255.0
    scale = np.where(scale == 0, 1.0, scale)
    zero = np.round(-lo / scale)
    return (np.clip(np.round(values / scale) + zero, 0, 255) - zero) * scale


def _relative(error: np.ndarray, reference: np.ndarray) -> float:
    norm = float(np.linalg.norm(reference))
    return float(np.linalg.norm(error)) / norm if norm > 0 else 0.0


def int8_sensitivity(model: onnx.ModelProto, calibration: list[Feed], per_channel: bool,
                     op_types: list[str] | None = None, samples: int = 8) -> list[tuple[float, str]]:
    """(simulated relative int8 error, node name) of every weighted node, largest first.

    Each node is judged alone on its real inputs (one float run on calibration inputs, 1 thread
    so the figures do not depend on the core count): activations on the uint8 grid of their
    range, weights on the int8 grid (per output channel or per tensor). MatMul-like nodes
    compare products; Conv, whose product is costly to redo here, adds input and weight error.
    Figures are rounded before ranking so a rebuild on the same hardware ranks the same way.
    """
    from onnx import numpy_helper

    weights = {init.name: init for init in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in WEIGHTED_OPS and (op_types is None or n.op_type in op_types)
             and len(n.input) > WEIGHTED_OPS[n.op_type] and n.input[WEIGHTED_OPS[n.op_type]] in weights
             and n.input[0] not in weights]
    if not nodes or not calibration:
        return []
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    taps = sorted({n.input[0] for n in nodes} - outputs)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in taps)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wanted = {n.input[0] for n in nodes}
    seen: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    for feed in calibration[:samples]:
        for name, value in zip(names, session.run(None, feed)):
            if name in wanted:
                seen[name].append(np.asarray(value, np.float64))
    ranked = []
    for node in nodes:
        w = numpy_helper.to_array(weights[node.input[WEIGHTED_OPS[node.op_type]]]).astype(np.float64)
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
            w = w.T
        errors = []
        for x in seen[node.input[0]]:
            xq = _fake_int8(x, None, symmetric=False)
            if node.op_type == "Conv":
                wq = _fake_int8(w, 0 if per_channel else None, symmetric=True)
                errors.append(_relative(xq - x, x) + _relative(wq - w, w))
            else:
                wq = _fake_int8(w, -1 if per_channel else None, symmetric=True)
                x2 = x.reshape(-1, x.shape[-1])
                errors.append(_relative(xq.reshape(x2.shape) @ wq - x2 @ w, x2 @ w))
        ranked.append((float(f"{np.mean(errors):.4g}"), node.name))
    ranked.sort(key=lambda item: (-item[0], item[1]))
    return ranked


def ranked_once(model: onnx.ModelProto, calibration: list[Feed], per_channel: bool,
                op_types: list[str] | None, workdir: Path) -> list[tuple[float, str]]:
    """int8_sensitivity, computed once per (model, inputs, settings) and work folder: the
    mixed-precision recipes of one search differ only in how many of the ranked nodes they keep,
    and may be built by different worker processes."""
    key = hashlib.sha256(model.SerializeToString())
    for feed in calibration[:8]:
        for name in sorted(feed):
            key.update(name.encode())
            key.update(np.ascontiguousarray(feed[name]).tobytes())
    key.update(repr((per_channel, op_types)).encode())
    path = workdir / f"sensitivity-{key.hexdigest()[:16]}.json"
    with locked(path):
        if not path.is_file():
            ranked = int8_sensitivity(model, calibration, per_channel, op_types)
            path.with_suffix(".partial").write_text(json.dumps(ranked))
            path.with_suffix(".partial").rename(path)
    return [(float(error), str(name)) for error, name in json.loads(path.read_text())]
