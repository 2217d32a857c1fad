"""Why one static int8 file is fast on CPU and another slow: format x activation type on a corpus model.

    .venv/bin/python benchmarks/int8_formats.py --model ddddocr-det

Quantizes the model statically four ways (QDQ or QOperator, int8 or uint8 activations;
per-channel int8 weights), counts the operators ONNX Runtime actually runs after loading each
file (its optimized graph, so a QDQ file's load-time fusion into QLinear kernels shows), checks
the worst cosine against the original on the corpus's realistic samples, and times each
interleaved with the original (docs/real-models.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import corpus  # noqa: E402
from modelship_server.optimize import candidates as cand  # noqa: E402
from modelship_server.optimize.gate import cosine  # noqa: E402

VARIANTS: dict[str, cand.Recipe] = {
    "qdq, int8 activations (our static-int8-qdq-per-channel)":
        cand.Recipe(name="qdq-s8", kind="static_int8", per_channel=True),
    "qdq, uint8 activations, reduce_range":
        cand.Recipe(name="qdq-u8", kind="static_int8", per_channel=True, activation_type="uint8", reduce_range=True),
    "qoperator, int8 activations, reduce_range":
        cand.Recipe(name="qop-s8", kind="static_int8", per_channel=True, quant_format="qoperator", reduce_range=True),
    "qoperator, uint8 activations, reduce_range (static-int8-qoperator)": cand.STATIC_QOPERATOR,
}


def ops_run(recipe: cand.Recipe, path: Path) -> str:
    """The most common operators of the graph ONNX Runtime runs for this file."""
    options = cand.session_options(recipe)
    options.optimized_model_filepath = str(path.with_suffix(".loaded.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    counts = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return ", ".join(f"{op} {n}" for op, n in counts.most_common(5))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ddddocr-det", choices=sorted(corpus.MODELS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    model = corpus.MODELS[args.model]
    feeds = [model.sample(1, seed=s) for s in range(8)]
    calibration, validation = feeds[:4], feeds[4:]
    sessions = {"original": cand.open_session(cand.baseline_recipe(), model.path())}
    with tempfile.TemporaryDirectory(prefix="modelship-int8-formats-") as tmp:
        for label, recipe in VARIANTS.items():
            built = cand.build(recipe, model.path(), Path(tmp), calibration)
            print(f"{label}: runs {ops_run(recipe, built)}", file=sys.stderr, flush=True)
            sessions[label] = cand.open_session(recipe, built)
        reference = [sessions["original"].run(None, f) for f in validation]
        rounds: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, session in sessions.items():
                start = time.perf_counter()
                for _ in range(args.calls):
                    session.run(None, feeds[0])
                rounds[name].append((time.perf_counter() - start) * 1000.0 / args.calls)
    base = float(np.median(rounds["original"]))
    print(f"| {args.model}: variant | median ms | vs original | worst cosine |\n| --- | --- | --- | --- |")
    for name, session in sessions.items():
        worst = min(cosine(r, o) for ref, f in zip(reference, validation)
                    for r, o in zip(ref, session.run(None, f)))
        median = float(np.median(rounds[name]))
        print(f"| {name} | {median:.1f} | {base / median:.2f}x | {worst:.4f} |")
    print(f"\nload average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; onnxruntime {ort.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
