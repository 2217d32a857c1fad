"""Our transformer fusion (modelship_server/optimize/fusion.py) against ONNX Runtime's transformer
optimizer called the way Hugging Face optimum's ORTOptimizer calls it, on the MiniLM exports as
users write them (results: docs/optimize-benchmarks.md, "optimum's fusion").

    ~/.cache/modelship/export-venv/bin/python benchmarks/export_transformer.py     # once: the exports
    taskset -c 1 .venv/bin/python benchmarks/fusion_vs_ort.py --ort-python /tmp/modelship-olive/bin/python \\
        --json docs/benchmarks/fusion-vs-ort.json

optimum's `ORTOptimizer.optimize` hands the file to `onnxruntime.transformers.optimizer.
optimize_model(model_type="bert", opt_level=<its optimization_level>, optimization_options=
FusionOptions)`: its O2 is ONNX Runtime's extended level plus the BERT fusions, O3 adds the GELU
approximation. That optimizer imports torch when opt_level > 0, so it runs in a venv that has
torch (--ort-python, Olive's venv: same onnxruntime as ours); optimum itself is not installed.

For each export: the fused operators each side leaves, by type; our gate (cosine mean >= 0.99,
worst >= 0.98) against the original on the validation half of the 32 tokenized sentences; and
interleaved timing of the original at ORT_ENABLE_ALL, both fused files, and our chosen recipe
(fusion + per-channel dynamic int8, 10 % of the weighted nodes in float), all with the same
session threads (--threads, 1 by default, to pin the process to one core with taskset).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
EXPORTS = ["sdpa-torchscript", "eager-torchscript", "sdpa-dynamo", "eager-dynamo"]
FUSED = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
         "LayerNormalization", "SkipSimplifiedLayerNormalization", "BiasGelu", "Gelu", "FastGelu", "FusedMatMul",
         "QAttention", "DynamicQuantizeMatMul", "MatMulInteger", "MatMul", "Softmax", "Erf")
OURS_INT8 = "fusion+dynamic-int8-per-channel-float-10pct"


def ort_optimize(source: str, target: str, level: str, heads: str, hidden: str) -> None:
    """(Under --ort-python) optimum's O2/O3 call of ONNX Runtime's transformer optimizer, with
    the head count and hidden size optimum reads from the model's config."""
    import logging

    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    logging.disable(logging.WARNING)
    options = FusionOptions("bert")
    options.enable_gelu_approximation = level == "O3"
    model = optimize_model(source, model_type="bert", num_heads=int(heads), hidden_size=int(hidden), opt_level=2,
                           optimization_options=options)
    model.save_model_to_file(target)
    print(json.dumps(model.get_fused_operator_statistics()))


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    counts = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {**{k: counts[k] for k in FUSED if counts[k]}, "nodes": sum(counts.values())}


def one(name: str, args: argparse.Namespace) -> dict:
    import onnxruntime as ort

    from modelship_server.optimize import candidates as cand
    from modelship_server.optimize.fusion import fuse
    from modelship_server.optimize.gate import GateSpec, evaluate
    from modelship_server.optimize.timing import speedup, time_interleaved

    source = args.exports / f"minilm-{name}.onnx"
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    with np.load(args.exports / "minilm-sentences.npz") as data:
        arrays = {k: data[k] for k in data.files}
    rows = [{k: v[i:i + 1] for k, v in arrays.items()} for i in range(len(next(iter(arrays.values()))))]
    calibration, validation = rows[:len(rows) // 2], rows[len(rows) // 2:]  # modelship optimize's split

    files = {"original": source}
    started = time.monotonic()
    ours_steps = fuse(source, work / "ours-fused.onnx")
    files["ours: fusion"] = work / "ours-fused.onnx"
    seconds = {"ours: fusion": round(time.monotonic() - started, 1)}
    for level in ("O2", "O3"):
        target = work / f"ort-{level}.onnx"
        started = time.monotonic()
        subprocess.run([args.ort_python, __file__, "ort-optimize", str(source), str(target), level,
                        str(args.num_heads), str(args.hidden_size)], check=True,
                       capture_output=True, text=True)
        files[f"optimum {level}: onnxruntime.transformers"] = target
        seconds[f"optimum {level}: onnxruntime.transformers"] = round(time.monotonic() - started, 1)
    recipe = next(r for r in cand.default_recipes(gpu_unavailable="not timed here", transformer=True)[0] if r.name == OURS_INT8)
    files[f"ours: {OURS_INT8}"] = cand.build(recipe, source, work / "int8", calibration)

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = args.threads
    options.log_severity_level = 3
    sessions = {label: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for label, path in files.items()}
    reference = [sessions["original"].run(None, f) for f in validation]
    gates = {label: evaluate(GateSpec(), reference, [s.run(None, f) for f in validation]) for label, s in sessions.items()}
    print(f"== {name}: timing {len(sessions)} files, {args.rounds} rounds x {args.calls} calls", file=sys.stderr, flush=True)
    timed = time_interleaved({label: (lambda s=s: s.run(None, validation[0])) for label, s in sessions.items()},
                             rounds=args.rounds, calls=args.calls)
    return {"export": name, "ours_fusion_steps": ours_steps, "build_seconds": seconds, "files": {
        label: {"ops": op_counts(path), "median_ms": round(timed[label].median_ms, 3),
                "spread": round(timed[label].spread, 4),
                "speedup_vs_original": round(speedup(timed["original"], timed[label]), 3),
                "gate_passed": gates[label].passed, "cosine_mean": round(gates[label].mean, 6),
                "cosine_worst": round(gates[label].worst, 6)} for label, path in files.items()}}


def markdown(runs: list[dict]) -> str:
    lines = ["| export | file | fused operators | speedup vs original (1 thread) | gate (mean / worst cosine) |",
             "| --- | --- | --- | --- | --- |"]
    for run in runs:
        for label, row in run["files"].items():
            ops = ", ".join(f"{v} {k}" for k, v in row["ops"].items() if k not in ("MatMul", "nodes"))
            lines.append(f"| {run['export']} | {label} | {ops}; {row['ops'].get('MatMul', 0)} MatMul; "
                         f"{row['ops']['nodes']} nodes | {row['speedup_vs_original']:.2f}x ({row['median_ms']:.1f} ms, "
                         f"spread {row['spread'] * 100:.0f} %) | {'pass' if row['gate_passed'] else '**fail**'} "
                         f"{row['cosine_mean']:.4f} / {row['cosine_worst']:.4f} |")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) == 7 and sys.argv[1] == "ort-optimize":  # under --ort-python
        ort_optimize(*sys.argv[2:])
        return 0
    sys.path.insert(0, str(REPO / "server_image"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ort-python", default="/tmp/modelship-olive/bin/python",
                        help="a Python with onnxruntime and torch (Olive's venv: benchmarks/requirements-olive.txt)")
    parser.add_argument("--exports", type=Path, default=Path.home() / ".cache" / "modelship" / "export")
    parser.add_argument("--only", action="append", choices=EXPORTS)
    parser.add_argument("--num-heads", type=int, default=12, help="as optimum passes it from config.json (MiniLM: 12)")
    parser.add_argument("--hidden-size", type=int, default=384, help="as optimum passes it (MiniLM: 384)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of every session (default 1)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path("/tmp/modelship-fusion-vs-ort"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not Path(args.ort_python).is_file():
        parser.error(f"--ort-python {args.ort_python} does not exist (make bench-olive-corpus builds Olive's venv)")
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_average_at_start": os.getloadavg(),
            "affinity": sorted(os.sched_getaffinity(0)), "command": " ".join(sys.argv)}
    runs = [one(name, args) for name in args.only or EXPORTS]
    meta["load_average_at_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")
    print(markdown(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
