"""What the optimize Job found, read from the Job and its pods, and what follows from it.

The Job's result is the `optimize` container's termination message (contract C1), written
by the optimizer and kept by the kubelet on the finished pod. `parse_summary` reads it and
refuses anything else with one line that says why (garbage, a cut-off message, an unknown
schema); `observe` turns a Job and its pods into a state; `decide` turns that state and the
spec into what to serve, the `Optimized` condition, `status.optimization`, and whether the
rollout of this spec waits or is refused. All pure: the clock is an argument.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from typing import Any, Literal, Mapping, Sequence, cast

from modelship.api.v1alpha1 import ModelService
from modelship.contracts import (
    INPUTS_UNDECLARED_PREFIX, OPTIMIZE_OUTCOMES, SUMMARY_SCHEMA, TENSORRT_PRECISIONS, OptimizeSummary,
)
from modelship.modeluri import redact
from modelship.render.artifact import GatedTensorRT, MeasuredBatching, ModelArtifact, original, variant
from modelship.render.model_config import tensorrt_choice
from modelship.status import conditions as c
from modelship.status.diagnosis import diagnose_pod

CONTAINER = "optimize"
# A Job may report Complete a moment before the watch delivers its pod's final status.
SUMMARY_GRACE_SECONDS = 60

# Reasons of the Optimized condition (contract C4), and the Ready reasons while it matters.
DISABLED = "Disabled"
PENDING = "Pending"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
NO_FASTER_VARIANT = "NoFasterVariant"
ACCURACY_GATE_FAILED = "AccuracyGateFailed"
FAILED = "Failed"
INPUTS_UNDECLARED = "InputsUndeclared"  # generated inputs would be meaningless: spec.model.inputs needed
INPUTS_INVALID = "InputsInvalid"  # spec.model.inputs contradicts the model, or the model cannot run on them
OPTIMIZING = "Optimizing"  # Ready=False while this spec's Job runs
OPTIMIZATION_FAILED = "OptimizationFailed"  # Ready=False under failurePolicy FailClosed

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DATASET_ERROR = re.compile(r"^(error: )?dataset\b")
# The optimizer's exit-2 lines about declared inputs (modelship_server/feeds.py and search.py
# write them; the undeclared one starts with the contract's prefix).
HINTS_NEEDED_PREFIX = INPUTS_UNDECLARED_PREFIX
_INPUTS_UNDECLARED = re.compile(r"^(error: )?" + re.escape(INPUTS_UNDECLARED_PREFIX))
_INPUTS_INVALID = re.compile(r"^(error: )?(spec\.model\.inputs\b|the original model does not run on its inputs)")


class SummaryError(ValueError):
    """The termination message is not a summary this operator can use; says why in one line."""


@dataclasses.dataclass(frozen=True)
class Capacity:
    requests_per_second: float
    percentile: str | None
    latency_ms: float | None
    slo_ms: float | None
    max_batch_size: int
    max_queue_delay_microseconds: int
    concurrency: int | None
    dynamic_batching: bool = True

    def batching(self) -> MeasuredBatching:
        return MeasuredBatching(self.max_batch_size, self.max_queue_delay_microseconds, self.dynamic_batching)

    def wire(self) -> dict[str, Any]:
        out = {
            "requestsPerSecond": self.requests_per_second, "percentile": self.percentile,
            "latencyMilliseconds": self.latency_ms, "sloMilliseconds": self.slo_ms,
            "maxBatchSize": self.max_batch_size, "maxQueueDelayMicroseconds": self.max_queue_delay_microseconds,
            "concurrency": self.concurrency,
        }
        return {k: v for k, v in out.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    status: str
    speedup: float | None
    gate_mean: float | None
    reason: str


@dataclasses.dataclass(frozen=True)
class Summary:
    outcome: str
    chosen: str
    sha256: str | None
    speedup: float | None
    spread: float | None
    apply_args: tuple[str, ...]
    capacity: Capacity | None
    gate: str
    candidates: tuple[Candidate, ...]
    truncated: bool = False
    intra_op_threads: int | None = None  # the chosen variant's session threads; None: runtime default
    inputs: str = ""  # what the gate judged on: "dataset <path>" or "generated (N inputs, seed S)"
    tensorrt: GatedTensorRT | None = None  # the chosen variant is a TensorRT one (it passed the gate)


def parse_summary(text: str | None) -> Summary:
    """The C1 summary in `text`; SummaryError (one line) for anything else. Unknown keys are
    ignored, so the optimizer may add fields without breaking older operators."""
    if text is None or not text.strip():
        raise SummaryError("the optimize container left no summary (its termination message is empty)")
    text = text.strip()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        size = len(text.encode())
        if text.startswith("{") and not text.endswith("}"):
            raise SummaryError(f"the optimize summary is cut off after {size} bytes") from None
        raise SummaryError(f"the optimize summary is not JSON ({error.msg} at character {error.pos}): "
                           f"{_snippet(text)}") from None
    if not isinstance(parsed, dict):
        raise SummaryError(f"the optimize summary must be a JSON object; got {type(parsed).__name__}: {_snippet(text)}")
    # The keys are the contract's (mypy checks the writer's, modelship_server/optimize/report.py); values are checked here.
    doc = cast(OptimizeSummary, parsed)
    if doc.get("schema") != SUMMARY_SCHEMA:
        raise SummaryError(f"the optimize summary has schema {doc.get('schema')!r}; this operator reads {SUMMARY_SCHEMA}")
    outcome = doc.get("outcome")
    if outcome not in OPTIMIZE_OUTCOMES:
        raise SummaryError(f"the optimize summary's outcome must be one of {', '.join(OPTIMIZE_OUTCOMES)}; "
                           f"got {outcome!r}")
    chosen = doc.get("chosen")
    if not isinstance(chosen, str) or not chosen:
        raise SummaryError(f"the optimize summary's chosen must name a variant; got {chosen!r}")
    sha256 = doc.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.match(sha256.lower())):
        raise SummaryError(f"the optimize summary's sha256 must be 64 hex digits; got {_snippet(str(sha256))}")
    apply_args = doc.get("apply_args") or []
    if not isinstance(apply_args, list) or not all(isinstance(a, str) for a in apply_args):
        raise SummaryError(f"the optimize summary's apply_args must be a list of strings; got {_snippet(json.dumps(apply_args))}")
    if outcome == "optimized" and (not apply_args or sha256 is None):
        raise SummaryError(f"the optimize summary chose variant {chosen} but gives no apply_args and sha256 "
                           "to rebuild it in the serving pods")
    if outcome == "optimized" and sha256 is not None:
        expected = apply_args[apply_args.index("--expect-sha256") + 1:][:1] if "--expect-sha256" in apply_args else []
        if [e.lower() for e in expected] != [sha256.lower()]:
            raise SummaryError(f"the optimize summary's apply_args must pass --expect-sha256 {sha256.lower()} (its "
                               f"sha256), or the serving pods would refuse the rebuilt variant; got {expected or 'none'}")
    return Summary(
        outcome=outcome,
        chosen=chosen,
        sha256=sha256.lower() if sha256 else None,
        speedup=_number(doc, "speedup"),
        spread=_number(doc, "spread"),
        apply_args=tuple(apply_args) if outcome == "optimized" else (),
        capacity=_capacity(doc.get("capacity")),
        gate=str(doc.get("gate") or ""),
        candidates=tuple(_candidates(doc.get("candidates"))),
        truncated=bool(doc.get("truncated")),
        intra_op_threads=_session_threads(doc.get("session")),
        inputs=_text(doc, "inputs"),
        tensorrt=_tensorrt(doc.get("tensorrt")),
    )


def _tensorrt(raw: Any) -> GatedTensorRT | None:
    """The chosen variant's TensorRT settings; None when it is not a TensorRT variant."""
    if raw is None:
        return None
    precision = raw.get("precision") if isinstance(raw, dict) else None
    if precision not in TENSORRT_PRECISIONS:
        raise SummaryError(f"the optimize summary's tensorrt must be null or an object with precision one of "
                           f"{', '.join(TENSORRT_PRECISIONS)}; got {_snippet(json.dumps(raw))}")
    profile = raw.get("profile") or {}
    if not isinstance(profile, dict) or not all(
            isinstance(k, str) and k.startswith("trt_profile_") and isinstance(v, str) for k, v in profile.items()):
        raise SummaryError(f"the optimize summary's tensorrt.profile must map trt_profile_* options to shape "
                           f"strings; got {_snippet(json.dumps(profile))}")
    return GatedTensorRT(precision=precision, profile=tuple(sorted(profile.items())))


def _text(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise SummaryError(f"the optimize summary's {key} must be a string; got {_snippet(json.dumps(value))}")
    return value or ""


def _session_threads(raw: Any) -> int | None:
    """`session.intra_op_threads` of the chosen recipe; 0 (the runtime's default) reads as None."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SummaryError(f"the optimize summary's session must be an object or null; got {_snippet(json.dumps(raw))}")
    threads = _integer(raw, "intra_op_threads", "session.")
    return threads or None


def _number(doc: Mapping[str, Any], key: str, where: str = "") -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        raise SummaryError(f"the optimize summary's {where}{key} must be a non-negative number; got {value!r}")
    return float(value)


def _integer(doc: Mapping[str, Any], key: str, where: str) -> int | None:
    value = _number(doc, key, where)
    if value is not None and value != int(value):
        raise SummaryError(f"the optimize summary's {where}{key} must be a whole number; got {value!r}")
    return None if value is None else int(value)


def _capacity(raw: Any) -> Capacity | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SummaryError(f"the optimize summary's capacity must be an object or null; got {_snippet(json.dumps(raw))}")
    rps = _number(raw, "requests_per_second", "capacity.")
    batch = _integer(raw, "max_batch_size", "capacity.")
    delay = _integer(raw, "max_queue_delay_microseconds", "capacity.")
    if rps is None or batch is None or delay is None:
        raise SummaryError("the optimize summary's capacity needs requests_per_second, max_batch_size and "
                           f"max_queue_delay_microseconds; got keys {sorted(raw)}")
    percentile = raw.get("percentile")
    return Capacity(
        requests_per_second=rps,
        percentile=percentile if isinstance(percentile, str) else None,
        latency_ms=_number(raw, "latency_ms", "capacity."),
        slo_ms=_number(raw, "slo_ms", "capacity."),
        max_batch_size=batch,
        max_queue_delay_microseconds=delay,
        concurrency=_integer(raw, "concurrency", "capacity."),
        dynamic_batching=raw.get("dynamic_batching") is not False,
    )


def _candidates(raw: Any) -> list[Candidate]:
    """Rows [name, status, speedup, gate_mean, reason]; a malformed row is skipped (they
    only explain the decision, they never drive it)."""
    out = []
    for row in raw if isinstance(raw, list) else []:
        if not isinstance(row, list) or len(row) < 5 or not isinstance(row[0], str):
            continue
        speedup, mean = (v if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in row[2:4])
        out.append(Candidate(row[0], str(row[1]), speedup, mean, str(row[4])))
    return out


def _snippet(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


# --- the Job and its pods ---------------------------------------------------------------

State = Literal["pending", "running", "succeeded", "failed"]


@dataclasses.dataclass(frozen=True)
class JobResult:
    state: State
    summary: Summary | None = None
    detail: str = ""  # pending: what it waits for; failed: the error line


def observe(job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]], *, now: str) -> JobResult:
    """The state of one optimize Job from the Job and the pods it owns."""
    if job is None:
        return JobResult("pending", detail="the Job is being created")
    uid = (job.get("metadata") or {}).get("uid")
    name = (job.get("metadata") or {}).get("name")
    mine = sorted((p for p in pods if _owned_by(p, uid, name)), key=_started, reverse=True)
    conditions = {cond.get("type"): cond for cond in (job.get("status") or {}).get("conditions") or []
                  if cond.get("status") == "True"}
    failed = conditions.get("Failed") or conditions.get("FailureTarget")
    if conditions.get("Complete") or conditions.get("SuccessCriteriaMet"):
        for pod in mine:
            terminated = _terminated(pod, CONTAINER)
            if terminated is not None and terminated.get("exitCode") == 0:
                try:
                    return JobResult("succeeded", summary=parse_summary(terminated.get("message")))
                except SummaryError as error:
                    return JobResult("failed", detail=str(error))
        finished = (job.get("status") or {}).get("completionTime")
        if finished and _seconds_between(finished, now) < SUMMARY_GRACE_SECONDS:
            return JobResult("running", detail="finished; reading its report")
        return JobResult("failed", detail="the Job completed but no pod with its report is left "
                                          "(deleted?); delete the Job to optimize again")
    if failed is not None:
        return JobResult("failed", detail=_failure(mine, failed))
    for pod in mine:
        if (pod.get("status") or {}).get("phase") == "Running" and _running(pod, CONTAINER):
            return JobResult("running")
    for pod in mine:
        problem = diagnose_pod(pod)
        if problem is not None:
            return JobResult("pending", detail=problem.message)
    if any((p.get("status") or {}).get("phase") == "Running" for p in mine):
        return JobResult("running", detail="fetching the model")
    if any(_terminated(p, CONTAINER) is not None for p in mine):
        # The pod is done; the Job controller has not recorded it yet (a second or so).
        return JobResult("running", detail="finished; the Job controller is recording it")
    return JobResult("pending", detail="waiting for its pod to start")


def _failure(pods: Sequence[Mapping[str, Any]], condition: Mapping[str, Any]) -> str:
    """The most telling line: the optimizer's error, else the fetch step's, else the Job's."""
    for pod in pods:
        terminated = _terminated(pod, CONTAINER)
        if terminated is not None and terminated.get("exitCode") not in (None, 0):
            message = (terminated.get("message") or "").strip()
            line = message.splitlines()[-1].strip() if message else ""
            return line or f"the optimizer exited with code {terminated.get('exitCode')} ({terminated.get('reason', '')})"
    for pod in pods:
        problem = diagnose_pod(pod)
        if problem is not None:
            return problem.message
    reason, message = condition.get("reason") or "", (condition.get("message") or "").strip()
    return f"{reason}: {message}" if message else reason or "the Job failed"


def _owned_by(pod: Mapping[str, Any], uid: str | None, name: str | None) -> bool:
    meta = pod.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "Job" and (ref.get("uid") == uid if uid else ref.get("name") == name):
            return True
    return False


def _started(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("creationTimestamp") or "")


def _container_status(pod: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == name:
            return status
    return None


def _terminated(pod: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    status = _container_status(pod, name)
    return ((status or {}).get("state") or {}).get("terminated")


def _running(pod: Mapping[str, Any], name: str) -> bool:
    status = _container_status(pod, name)
    return bool(((status or {}).get("state") or {}).get("running"))


def _seconds_between(earlier: str, later: str) -> float:
    def parse(stamp: str) -> datetime.datetime:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))

    try:
        return (parse(later) - parse(earlier)).total_seconds()
    except ValueError:
        return float("inf")


# --- the decision -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Wait:
    """Why this spec does not roll out (yet): Ready says so; `blocked` means it never will
    without a change (failurePolicy FailClosed)."""

    reason: str
    message: str
    blocked: bool = False


@dataclasses.dataclass(frozen=True)
class Decision:
    artifact: ModelArtifact | None  # what to serve; None while the rollout waits or is refused
    condition: c.ConditionSpec
    status: dict[str, Any] | None  # status.optimization; None removes it
    wait: Wait | None = None
    finished: bool = False  # the current Job is done: superseded Jobs may go


def disabled(msvc: ModelService) -> Decision:
    # On a GPU, status still says whether TensorRT runs: forced (ungated) or off, never gated.
    gpu = msvc.spec.resources.gpu.count > 0
    return Decision(
        artifact=original(msvc.spec),
        condition=c.ConditionSpec(c.OPTIMIZED, c.FALSE, DISABLED,
                                  "spec.optimization.enabled is false: serving the original model"),
        status={"tensorrt": _tensorrt_status(msvc, None)} if gpu else None,
        finished=True,
    )


def decide(msvc: ModelService, job_name: str, result: JobResult) -> Decision:
    """What follows from the current Job's state for `msvc`."""
    spec = msvc.spec.optimization
    generation = msvc.metadata.generation
    if result.state in ("pending", "running"):
        reason = PENDING if result.state == "pending" else RUNNING
        doing = "is waiting to start" if result.state == "pending" else "is running"
        detail = f": {result.detail}" if result.detail else ""
        message = f"optimize Job {job_name} {doing}{detail}"
        return Decision(
            artifact=None,
            condition=c.ConditionSpec(c.OPTIMIZED, c.UNKNOWN, reason, message),
            status={"job": job_name},
            wait=Wait(OPTIMIZING, f"generation {generation} rolls out once optimize Job {job_name} has finished "
                                  f"({result.state}{detail})"),
        )
    if result.state == "failed":
        fail_closed = spec.failure_policy == "FailClosed"
        then = ("nothing rolls out (failurePolicy FailClosed)" if fail_closed
                else "serving the original model (failurePolicy FallbackToBaseline)")
        reason, explained = _inputs_failure(result.detail)
        message = f"optimize Job {job_name} {explained or 'failed: ' + _explain(msvc, result.detail)}; {then}"
        return Decision(
            artifact=None if fail_closed else original(msvc.spec),
            condition=c.ConditionSpec(c.OPTIMIZED, c.FALSE, reason, message, warning=True),
            status={"job": job_name, "outcome": "failed"},
            wait=Wait(OPTIMIZATION_FAILED, message, blocked=True) if fail_closed else None,
            finished=True,
        )
    summary = result.summary
    assert summary is not None
    batching = summary.capacity.batching() if summary.capacity is not None else None
    status = {k: v for k, v in {
        "job": job_name, "outcome": summary.outcome, "variant": summary.chosen, "sha256": summary.sha256,
        "speedup": summary.speedup, "spread": summary.spread,
        "capacity": summary.capacity.wire() if summary.capacity is not None else None,
        "gate": summary.gate or None, "inputs": summary.inputs or None,
    }.items() if v is not None}
    capacity = _capacity_sentence(summary.capacity)
    if summary.outcome == "optimized":
        speed = f"{summary.speedup:.2f}x the original's speed" if summary.speedup is not None else "faster than the original"
        spread = f" (run-to-run spread {summary.spread:.1%})" if summary.spread is not None else ""
        judged = f"; it passed the gate ({summary.gate}) on {_inputs_phrase(summary.inputs)}" if summary.gate else ""
        condition = c.ConditionSpec(c.OPTIMIZED, c.TRUE, SUCCEEDED,
                                    f"serving variant {summary.chosen}, {speed}{spread}{judged}{capacity}")
        try:
            artifact = variant(msvc.spec, summary.chosen, summary.apply_args, batching=batching,
                               intra_op_threads=summary.intra_op_threads, tensorrt=summary.tensorrt)
        except ValueError as error:  # the pods could not rebuild it: as good as a failed Job
            return decide(msvc, job_name, JobResult("failed", detail=str(error)))
    elif summary.outcome == "baseline":
        spread = f" ({summary.spread:.1%})" if summary.spread is not None else ""
        closest = _closest_by_speed(summary)
        condition = c.ConditionSpec(c.OPTIMIZED, c.FALSE, NO_FASTER_VARIANT,
                                    f"no variant beat the original by more than the measured spread{spread}"
                                    f"{closest}; serving the original{capacity}")
        artifact = original(msvc.spec, batching=batching)
    else:
        gate = f" ({summary.gate})" if summary.gate else ""
        condition = c.ConditionSpec(c.OPTIMIZED, c.FALSE, ACCURACY_GATE_FAILED,
                                    f"every variant failed the accuracy gate{gate}{_closest_by_gate(summary)}; "
                                    f"serving the original{capacity}")
        artifact = original(msvc.spec, batching=batching)
    if msvc.spec.resources.gpu.count > 0:
        status["tensorrt"] = _tensorrt_status(msvc, artifact.tensorrt)
    return Decision(artifact=artifact, condition=condition, status=status, finished=True)


def _tensorrt_status(msvc: ModelService, gated: GatedTensorRT | None) -> str:
    """status.optimization.tensorrt: `<state>: <why>` (gated, ungated or off)."""
    choice = tensorrt_choice(msvc.spec, gated)
    return f"{choice.state}: {choice.message}"


def _inputs_failure(detail: str) -> tuple[str, str]:
    """(reason, message) when the Job stopped over the model's inputs rather than failing:
    undeclared inputs where generation would mean nothing, or declared ones the model refuses."""
    line = detail.removeprefix("error: ")
    if _INPUTS_UNDECLARED.match(detail):
        return INPUTS_UNDECLARED, (f"stopped before its search: {line} (declare them in spec.model.inputs, or set "
                                   "spec.optimization.dataset)")
    if _INPUTS_INVALID.match(detail):
        return INPUTS_INVALID, f"stopped before its search: {line} (fix spec.model.inputs)"
    return FAILED, ""


def _inputs_phrase(inputs: str) -> str:
    """The summary's inputs as a reader needs them: whether the gate saw real data."""
    if inputs.startswith("dataset"):
        return "spec.optimization.dataset"
    if inputs.startswith("generated"):
        return "inputs generated from the model's shapes (set spec.optimization.dataset to judge on real data)"
    return inputs or "unrecorded inputs"


def _explain(msvc: ModelService, detail: str) -> str:
    """The failure line, with what to do when it is the optimizer refusing the user's dataset
    (its exit-2 lines about the dataset start with `error: dataset`)."""
    dataset = msvc.spec.optimization.dataset
    if dataset is None or not _DATASET_ERROR.match(detail):
        return detail
    return (f"{detail} (the .npz of spec.optimization.dataset, {redact(dataset.uri)}, does not fit the model: it "
            "needs one array per model input, named after the input, with its dtype, either batch-first (samples "
            "on the batch axis) or stacked complete feeds (one axis more than the input); fix the file and "
            "spec.optimization.dataset.sha256, or remove spec.optimization.dataset)")


def _capacity_sentence(capacity: Capacity | None) -> str:
    if capacity is None:
        return ""
    out = f"; one replica sustains {capacity.requests_per_second:g} requests/s"
    if capacity.latency_ms is not None and capacity.percentile:
        out += f" at {capacity.percentile} {capacity.latency_ms:g} ms"
    if capacity.slo_ms is not None:
        out += f" (SLO {capacity.slo_ms:g} ms)"
    return out


def _closest_by_speed(summary: Summary) -> str:
    rows = [r for r in summary.candidates if r.speedup is not None and r.name not in ("baseline", "original")]
    if not rows:
        return ""
    best = max(rows, key=lambda r: r.speedup or 0.0)
    return f"; closest: {best.name} at {best.speedup:.2f}x"


def _closest_by_gate(summary: Summary) -> str:
    """The candidate that came closest to passing, by its gate mean."""
    rows = [r for r in summary.candidates if r.gate_mean is not None and r.name not in ("baseline", "original")]
    if not rows:
        return ""
    higher_is_better = "<=" not in summary.gate
    best = (max if higher_is_better else min)(rows, key=lambda r: r.gate_mean or 0.0)
    return f"; closest: {best.name} with mean {best.gate_mean:g}"
