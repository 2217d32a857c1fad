"""`modelship optimize` on transformers as users export them (results: docs/optimize-benchmarks.md).

    ~/.cache/modelship/export-venv/bin/python benchmarks/export_transformer.py     # once: the exports
    .venv/bin/python benchmarks/optimize_exports.py                                 # all four exports
    .venv/bin/python benchmarks/optimize_exports.py --only sdpa-torchscript --repeat 2

For each export of all-MiniLM-L6-v2 (benchmarks/export_transformer.py: torch.onnx.export, SDPA or
eager attention, TorchScript or dynamo exporter), runs the CLI as the optimize Job does
(`modelship optimize --dataset minilm-sentences.npz --budget-seconds 600 --capacity-seconds 0`),
then times the original at ORT_ENABLE_ALL and the chosen file interleaved in one process
(15 rounds of 20 calls, batch 1, sequence 128) and gates the chosen file with the default gate
(cosine mean >= 0.99, min >= 0.98) on the validation half. JSON: --json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from optimize_models import head_to_head, machine, run_ours  # noqa: E402

EXPORTS = ["sdpa-torchscript", "eager-torchscript", "sdpa-dynamo", "eager-dynamo"]


def one(name: str, folder: Path, work: Path, budget: float) -> dict:
    model, data = folder / f"minilm-{name}.onnx", folder / "minilm-sentences.npz"
    ours = run_ours(model, data, work / name, budget, 0)
    report = ours["report"]
    chosen = report["chosen"]
    contenders = {} if chosen == "baseline" else {f"chosen: {chosen}": (work / name / "model.onnx",
                                                                       report["chosen_recipe"])}
    timed = head_to_head(model, data, contenders, rounds=15, calls=20)
    fusion = next((c for c in report["candidates"] if c["name"] == "transformer-fusion"), {})
    return {"export": name, "chosen": chosen, "search_seconds": report["duration_seconds"],
            "job_wall_seconds": ours["wall_seconds"], "timing_rounds_planned": report["timing_rounds"],
            "rounds_timed": {c["name"]: len(c["timing"]["rounds_ms"]) for c in report["candidates"] if c.get("timing")},
            "search_speedups": {c["name"]: c.get("speedup") for c in report["candidates"] if c.get("speedup")},
            "transformer_fusion": {"status": fusion.get("status"), "reason": fusion.get("reason"),
                                   "speedup": fusion.get("speedup")},
            "head_to_head": timed, "command": ours["command"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exports", type=Path, default=Path.home() / ".cache" / "modelship" / "export")
    parser.add_argument("--work", type=Path, default=Path("/tmp/modelship-bench-exports"))
    parser.add_argument("--only", action="append", choices=EXPORTS)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--budget-seconds", type=float, default=600)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {"machine": machine(), "runs": []}
    for _ in range(args.repeat):
        for name in args.only or EXPORTS:
            started = time.strftime("%H:%M:%S", time.gmtime())
            load = os.getloadavg()[0]
            run = one(name, args.exports, args.work, args.budget_seconds)
            run.update(started_utc=started, load_average_1m=round(load, 2))
            results["runs"].append(run)
            best = run["head_to_head"]
            print(json.dumps({"export": name, "chosen": run["chosen"], "load": run["load_average_1m"],
                              "search_s": run["search_seconds"],
                              "head_to_head": {k: (v["speedup_vs_original"], v["gate_passed"]) for k, v in best.items()}}),
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
