"""The optimize report: versioned JSON for machines, a table for people, a summary for Kubernetes.

The summary goes into the Job's termination message, which Kubernetes caps at 4 KiB, so it keeps
only the decision and the figures needed to explain it.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel

from modelship.contracts import SUMMARY_LIMIT, SUMMARY_SCHEMA, OptimizeSummary, SummaryTensorRT

from .candidates import Recipe
from .capacity import Capacity
from .gate import GateResult, GateSpec
from .timing import TimingStats

SCHEMA_VERSION = SUMMARY_SCHEMA  # the full report's schema is the summary's

Status = Literal["chosen", "kept", "rejected", "skipped"]
# optimized: a variant beat the original; baseline: none did beyond the measured spread;
# accuracy_gate_failed: every variant that was built failed the gate. The operator maps these
# to the Optimized condition's reasons.
Outcome = Literal["optimized", "baseline", "accuracy_gate_failed"]


class Candidate(BaseModel):
    name: str
    recipe: Recipe | None = None
    status: Status
    reason: str
    gate: GateResult | None = None
    timing: TimingStats | None = None
    speedup: float | None = None  # baseline median / candidate median
    size_bytes: int | None = None
    build_seconds: float | None = None


class Report(BaseModel):
    schema_version: str = SCHEMA_VERSION
    model_sha256: str
    output_sha256: str
    outcome: Outcome
    chosen: str
    chosen_recipe: Recipe
    spread: float  # the baseline's run-to-run spread: what a variant must beat
    gate: GateSpec
    validation_inputs: int
    input_source: str  # "dataset <path>" or "generated (seed N)"
    onnxruntime_version: str
    duration_seconds: float
    candidates: list[Candidate]
    timing_rounds: int | None = None  # as run: scaled down from the flags when the budget was short
    timing_calls: int | None = None
    capacity: Capacity | None = None
    # How a serving pod rebuilds the chosen file from the original (see `apply`): the exact
    # flags, so the operator passes them on without knowing recipes.
    apply_args: list[str] = []


def outcome_of(chosen: str, candidates: list[Candidate]) -> Outcome:
    """Pure: what the search amounted to, from the chosen name and the candidates' fates."""
    if chosen != "baseline":
        return "optimized"
    gated = [c for c in candidates if c.name != "baseline" and c.gate is not None]
    if gated and not any(c.gate is not None and c.gate.passed for c in gated):
        return "accuracy_gate_failed"
    return "baseline"


def tensorrt_summary(recipe: Recipe) -> SummaryTensorRT | None:
    """The chosen recipe's TensorRT settings, or None when the choice is not a TensorRT one:
    the serving pods turn TensorRT on from this alone (it passed the gate)."""
    if recipe.kind != "tensorrt":
        return None
    options = recipe.provider_options
    return {"precision": "fp16" if options.get("trt_fp16_enable") == "True" else "fp32",
            "profile": {k: v for k, v in options.items() if k.startswith("trt_profile_")}}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(report: Report) -> str:
    """A fixed-width table: one line per candidate, then the decision."""
    width = max([len("candidate")] + [len(c.name) for c in report.candidates])
    header = f"{'candidate':<{width}} {'status':<8} {'median ms':>10} {'spread':>7} {'speedup':>8} " \
             f"{report.gate.metric + ' mean':>18} {'worst':>10}  reason"
    lines = [header, "-" * len(header)]
    for c in report.candidates:
        lines.append(
            f"{c.name:<{width}} {c.status:<8} {_fmt(c.timing.median_ms if c.timing else None, '.4f'):>10} "
            f"{_fmt(c.timing.spread * 100 if c.timing else None, '.1f') + ('%' if c.timing else ''):>7} "
            f"{_fmt(c.speedup, '.3f'):>8} {_fmt(c.gate.mean if c.gate else None, '.6f'):>18} "
            f"{_fmt(c.gate.worst if c.gate else None, '.6f'):>10}  {c.reason}")
    lines.append(f"chosen: {report.chosen} ({report.outcome}; sha256 {report.output_sha256})")
    if report.capacity is not None:
        cap = report.capacity
        batching = f"dynamic batching up to {cap.max_batch_size}, queue delay {cap.max_queue_delay_microseconds} us" \
            if cap.dynamic_batching else "no dynamic batching"
        slo = f"within the SLO of {cap.slo_ms:g} ms" if cap.slo_ms is not None and cap.within_slo else \
            f"MISSES the SLO of {cap.slo_ms:g} ms even at concurrency 1" if cap.slo_ms is not None else "at the knee"
        lines.append(f"capacity per replica: {cap.requests_per_second:.1f} req/s, {cap.percentile} "
                     f"{cap.latency_ms:.3f} ms {slo}, with {batching}, {cap.concurrency} requests in flight")
    return "\n".join(lines)


def summary(report: Report, limit: int = SUMMARY_LIMIT) -> str:
    """Compact JSON of the decision, at most `limit` bytes (reasons cut, then candidates dropped)."""
    chosen = next((c for c in report.candidates if c.name == report.chosen), None)
    rows = [[c.name, c.status, None if c.speedup is None else round(c.speedup, 3),
             None if c.gate is None else round(c.gate.mean, 5), c.reason[:120]] for c in report.candidates]
    cap = report.capacity
    doc: OptimizeSummary = {
        "schema": SCHEMA_VERSION,
        "outcome": report.outcome,
        "chosen": "original" if report.chosen == "baseline" else report.chosen,
        "sha256": report.output_sha256,
        "speedup": None if chosen is None or chosen.speedup is None else round(chosen.speedup, 3),
        "spread": round(report.spread, 4),
        "apply_args": report.apply_args,
        "session": {"intra_op_threads": report.chosen_recipe.intra_op_threads,
                    "graph_optimization_level": report.chosen_recipe.graph_optimization_level},
        "capacity": None if cap is None else cap.model_dump(exclude={"sweeps"}),
        "gate": f"{report.gate.metric} mean>={report.gate.threshold_mean:g} worst>={report.gate.threshold_worst:g}"
        if report.gate.metric in ("cosine", "top1_agreement") else
        f"{report.gate.metric} mean<={report.gate.threshold_mean:g} worst<={report.gate.threshold_worst:g}",
        "inputs": report.input_source[:160],
        "candidates": rows,
        "tensorrt": tensorrt_summary(report.chosen_recipe),
    }
    text = json.dumps(doc, separators=(",", ":"))
    while len(text.encode()) > limit and doc["candidates"]:
        doc["candidates"] = doc["candidates"][:-1]
        doc["truncated"] = True
        text = json.dumps(doc, separators=(",", ":"))
    return text
