"""The optimize report: versioned JSON for machines, a table for people, a summary for Kubernetes.

The summary goes into the Job's termination message, which Kubernetes caps at 4 KiB, so it keeps
only the decision and the figures needed to explain it.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel

from .candidates import Recipe
from .gate import GateResult, GateSpec
from .timing import TimingStats

SCHEMA_VERSION = "modelship.dev/optimize-report/v1"
SUMMARY_LIMIT = 4096

Status = Literal["chosen", "kept", "rejected", "skipped"]


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
    chosen: str
    chosen_recipe: Recipe
    gate: GateSpec
    validation_inputs: int
    input_source: str  # "dataset <path>" or "generated (seed N)"
    onnxruntime_version: str
    duration_seconds: float
    candidates: list[Candidate]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(report: Report) -> str:
    """A fixed-width table: one line per candidate, then the decision."""
    header = f"{'candidate':<30} {'status':<8} {'median ms':>10} {'spread':>7} {'speedup':>8} " \
             f"{report.gate.metric + ' mean':>18} {'worst':>10}  reason"
    lines = [header, "-" * len(header)]
    for c in report.candidates:
        lines.append(
            f"{c.name:<30} {c.status:<8} {_fmt(c.timing.median_ms if c.timing else None, '.4f'):>10} "
            f"{_fmt(c.timing.spread * 100 if c.timing else None, '.1f') + ('%' if c.timing else ''):>7} "
            f"{_fmt(c.speedup, '.3f'):>8} {_fmt(c.gate.mean if c.gate else None, '.6f'):>18} "
            f"{_fmt(c.gate.worst if c.gate else None, '.6f'):>10}  {c.reason}")
    lines.append(f"chosen: {report.chosen} (sha256 {report.output_sha256})")
    return "\n".join(lines)


def summary(report: Report, limit: int = SUMMARY_LIMIT) -> str:
    """Compact JSON of the decision, at most `limit` bytes (reasons cut, then candidates dropped)."""
    chosen = next((c for c in report.candidates if c.name == report.chosen), None)
    rows = [[c.name, c.status, None if c.speedup is None else round(c.speedup, 3),
             None if c.gate is None else round(c.gate.mean, 5), c.reason[:120]] for c in report.candidates]
    doc = {
        "schema": SCHEMA_VERSION,
        "chosen": report.chosen,
        "sha256": report.output_sha256,
        "speedup": None if chosen is None or chosen.speedup is None else round(chosen.speedup, 3),
        "gate": f"{report.gate.metric} mean>={report.gate.threshold_mean:g} worst>={report.gate.threshold_worst:g}"
        if report.gate.metric in ("cosine", "top1_agreement") else
        f"{report.gate.metric} mean<={report.gate.threshold_mean:g} worst<={report.gate.threshold_worst:g}",
        "candidates": rows,
    }
    text = json.dumps(doc, separators=(",", ":"))
    while len(text.encode()) > limit and doc["candidates"]:
        doc["candidates"] = doc["candidates"][:-1]
        doc["truncated"] = True
        text = json.dumps(doc, separators=(",", ":"))
    return text
