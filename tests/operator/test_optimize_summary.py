"""Reading the optimize Job's summary (contract C1) and deciding what follows: pure tables."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelship.api.v1alpha1 import ModelService
from modelship.status import optimization as o
from msvc_samples import SHA, body

VARIANT_SHA = "ab" * 32
NOW = "2026-11-23T12:00:00Z"
JOB = "svc-optimize-0123456789"


def summary(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": "modelship.dev/optimize-report/v1", "outcome": "optimized", "chosen": "ort-all",
        "sha256": VARIANT_SHA, "speedup": 1.42, "spread": 0.031,
        "apply_args": ["--apply-recipe", '{"name":"ort-all"}', "--expect-sha256", VARIANT_SHA,
                       "--samples", "32", "--seed", "0"],
        "session": {"intra_op_threads": 0, "graph_optimization_level": "all"},  # 0: the runtime's default
        "capacity": {"requests_per_second": 812.0, "percentile": "p95", "latency_ms": 4.1, "slo_ms": 50.0,
                     "max_batch_size": 8, "dynamic_batching": True, "max_queue_delay_microseconds": 1000,
                     "concurrency": 4, "within_slo": True},
        "gate": "cosine mean>=0.99 worst>=0.98",
        "inputs": "dataset /dataset/dataset.npz",
        "candidates": [["baseline", "kept", 1.0, 1.0, "the original"],
                       ["ort-all", "chosen", 1.42, 0.99999, "fastest passing"],
                       ["dynamic-int8", "rejected", 2.1, 0.93, "gate: mean 0.93 < 0.99"]],
    }
    doc.update(changes)
    return doc


def test_a_success_summary_parses_with_every_figure() -> None:
    s = o.parse_summary(json.dumps(summary()))
    assert (s.outcome, s.chosen, s.sha256, s.speedup, s.spread) == ("optimized", "ort-all", VARIANT_SHA, 1.42, 0.031)
    assert s.apply_args[0] == "--apply-recipe" and len(s.apply_args) == 8
    assert s.capacity == o.Capacity(812.0, "p95", 4.1, 50.0, 8, 1000, 4, True)
    assert [c.name for c in s.candidates] == ["baseline", "ort-all", "dynamic-int8"]


@pytest.mark.parametrize(("text", "words"), [
    (None, "no summary"),
    ("", "no summary"),
    ("Traceback (most recent call last):\n  File x", "not JSON"),
    (json.dumps(summary())[:300], "cut off after 300 bytes"),
    ("[1, 2]", "must be a JSON object; got list"),
    (json.dumps(summary(schema="modelship.dev/optimize-report/v9")), "schema 'modelship.dev/optimize-report/v9'"),
    (json.dumps(summary(outcome="great")), "outcome must be one of optimized, baseline, accuracy_gate_failed; got 'great'"),
    (json.dumps(summary(chosen="")), "chosen must name a variant"),
    (json.dumps(summary(sha256="xyz")), "sha256 must be 64 hex digits"),
    (json.dumps(summary(apply_args=[])), "gives no apply_args"),
    (json.dumps(summary(apply_args="--apply-recipe")), "apply_args must be a list of strings"),
    (json.dumps(summary(apply_args=["--apply-recipe", "{}", "--expect-sha256", "cd" * 32])),
     "apply_args must pass --expect-sha256 " + VARIANT_SHA),
    (json.dumps(summary(speedup="fast")), "speedup must be a non-negative number; got 'fast'"),
    (json.dumps(summary(inputs=["x.npz"])), "inputs must be a string; got '[\"x.npz\"]'"),
    (json.dumps(summary(capacity={"requests_per_second": 1.0})), "capacity needs requests_per_second"),
    (json.dumps(summary(capacity={"requests_per_second": 1.0, "max_batch_size": 2.5,
                                  "max_queue_delay_microseconds": 0})), "capacity.max_batch_size must be a whole number"),
    (json.dumps(summary(capacity=[1])), "capacity must be an object or null"),
], ids=lambda v: str(v)[:24] if not isinstance(v, str) or len(v) < 30 else v[:24])
def test_anything_else_is_refused_with_one_line_that_says_why(text: str | None, words: str) -> None:
    with pytest.raises(o.SummaryError) as error:
        o.parse_summary(text)
    message = str(error.value)
    assert words in message
    assert "\n" not in message


@pytest.mark.parametrize("outcome", ["baseline", "accuracy_gate_failed"])
def test_outcomes_without_a_variant_need_no_apply_args(outcome: str) -> None:
    s = o.parse_summary(json.dumps(summary(outcome=outcome, chosen="original", speedup=None, apply_args=[])))
    assert s.outcome == outcome and s.apply_args == ()


def test_malformed_candidate_rows_and_a_truncated_list_are_tolerated() -> None:
    s = o.parse_summary(json.dumps(summary(candidates=[["ok", "kept", 1.1, 0.99, "x"], "junk", [1, 2]],
                                           truncated=True, capacity=None)))
    assert [c.name for c in s.candidates] == ["ok"] and s.truncated and s.capacity is None


# --- the Job and its pods ---------------------------------------------------------------


def job(*conditions: str, completion: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": t, "status": "True", "reason": r, "message": m}
                                             for t, r, m in (c.split("|") for c in conditions)]}
    if completion:
        status["completionTime"] = completion
    return {"metadata": {"name": JOB, "uid": "job-uid"}, "status": status}


def pod(name: str = "p1", *, phase: str = "Succeeded", exit_code: int | None = 0, message: str | None = None,
        running: bool = False, init: list[dict[str, Any]] | None = None, created: str = "2026-11-23T11:00:00Z"
        ) -> dict[str, Any]:
    if running:
        state: dict[str, Any] = {"running": {"startedAt": created}}
    elif exit_code is None:
        state = {"waiting": {"reason": "PodInitializing"}}
    else:
        state = {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                **({"message": message} if message is not None else {})}}
    return {
        "metadata": {"name": name, "creationTimestamp": created,
                     "ownerReferences": [{"kind": "Job", "name": JOB, "uid": "job-uid", "controller": True}]},
        "status": {"phase": phase, "containerStatuses": [{"name": "optimize", "state": state}],
                   "initContainerStatuses": init or []},
    }


def test_a_complete_job_yields_its_pods_summary() -> None:
    result = o.observe(job("Complete|Completed|"), [pod(message=json.dumps(summary()))], now=NOW)
    assert result.state == "succeeded" and result.summary is not None and result.summary.chosen == "ort-all"


def test_a_complete_job_with_garbage_is_failed_not_a_crash() -> None:
    result = o.observe(job("Complete|Completed|"), [pod(message="Segmentation fault")], now=NOW)
    assert result.state == "failed" and "not JSON" in result.detail


def test_a_complete_job_whose_pod_is_not_seen_yet_waits_then_fails() -> None:
    early = o.observe(job("Complete|Completed|", completion="2026-11-23T11:59:50Z"), [], now=NOW)
    assert early.state == "running"
    late = o.observe(job("Complete|Completed|", completion="2026-11-23T11:50:00Z"), [], now=NOW)
    assert late.state == "failed" and "no pod with its report" in late.detail


def test_a_failed_job_names_the_optimizers_error_line() -> None:
    line = "error: model file /models/m/1/model.onnx has sha256 00.., expected 11..; the file is not the one you meant"
    result = o.observe(job("Failed|PodFailurePolicy|Container optimize ... exit code 2"),
                       [pod(phase="Failed", exit_code=2, message=line)], now=NOW)
    assert result.state == "failed" and result.detail == line


def test_a_failed_fetch_step_is_named() -> None:
    init = [{"name": "fetch-model", "state": {"terminated": {
        "exitCode": 12, "message": "ModelChecksumMismatch: the file has sha256 00.., expected 11.."}}}]
    result = o.observe(job("Failed|PodFailurePolicy|x"), [pod(phase="Failed", exit_code=None, init=init)], now=NOW)
    assert result.state == "failed" and "model fetch failed: the file has sha256" in result.detail


def test_a_job_past_its_deadline_says_so() -> None:
    result = o.observe(job("Failed|DeadlineExceeded|Job was active longer than specified deadline"), [], now=NOW)
    assert result.state == "failed"
    assert result.detail == "DeadlineExceeded: Job was active longer than specified deadline"


def test_pending_and_running() -> None:
    assert o.observe(None, [], now=NOW).state == "pending"
    assert o.observe(job(), [], now=NOW).state == "pending"
    unschedulable = pod(phase="Pending", exit_code=None)
    unschedulable["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                              "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]
    unschedulable["spec"] = {"containers": [{"resources": {"limits": {"nvidia.com/gpu": 1}}}]}
    pending = o.observe(job(), [unschedulable], now=NOW)
    assert pending.state == "pending" and "waiting for GPU capacity" in pending.detail
    assert o.observe(job(), [pod(phase="Running", running=True)], now=NOW).state == "running"
    # the pod finished, the Job has no condition yet: still running, not "waiting to start"
    finishing = o.observe(job(), [pod(message=json.dumps(summary()))], now=NOW)
    assert finishing.state == "running" and "recording" in finishing.detail


def test_pods_of_another_job_are_ignored() -> None:
    stranger = pod(message=json.dumps(summary()))
    stranger["metadata"]["ownerReferences"][0]["uid"] = "other"
    assert o.observe(job(), [stranger], now=NOW).state == "pending"


# --- the decision -----------------------------------------------------------------------


def msvc(**optimization: Any) -> ModelService:
    return ModelService.from_body(body(spec={"model": {"uri": "https://h/m.onnx", "sha256": SHA},
                                             "optimization": {"enabled": True, **optimization}}))


def succeeded(**changes: Any) -> o.JobResult:
    return o.JobResult("succeeded", summary=o.parse_summary(json.dumps(summary(**changes))))


def test_optimized_serves_the_variant_with_the_measured_batching() -> None:
    d = o.decide(msvc(), JOB, succeeded())
    assert d.artifact is not None and d.artifact.variant == "ort-all" and d.artifact.apply_args[0] == "--apply-recipe"
    assert d.artifact.sha256 == SHA, "the pods fetch the original, then rebuild"
    assert d.artifact.batching is not None and d.artifact.batching.max_batch_size == 8
    assert (d.condition.status, d.condition.reason) == ("True", "Succeeded")
    assert "ort-all" in d.condition.message and "1.42x" in d.condition.message and "812" in d.condition.message
    assert d.status == {"job": JOB, "outcome": "optimized", "variant": "ort-all", "sha256": VARIANT_SHA,
                        "speedup": 1.42, "spread": 0.031,
                        "capacity": {"requestsPerSecond": 812.0, "percentile": "p95", "latencyMilliseconds": 4.1,
                                     "sloMilliseconds": 50.0, "maxBatchSize": 8, "maxQueueDelayMicroseconds": 1000,
                                     "concurrency": 4},
                        "gate": "cosine mean>=0.99 worst>=0.98", "inputs": "dataset /dataset/dataset.npz"}
    assert "passed the gate (cosine mean>=0.99 worst>=0.98) on spec.optimization.dataset" in d.condition.message
    assert d.wait is None and d.finished


def test_a_variant_judged_on_generated_inputs_says_so_and_how_to_use_real_data() -> None:
    s = o.parse_summary(json.dumps(summary(inputs="generated (32 inputs, seed 0)")))
    d = o.decide(msvc(), JOB, o.JobResult("succeeded", summary=s))
    assert d.status["inputs"] == "generated (32 inputs, seed 0)"
    assert "on inputs generated from the model's shapes (set spec.optimization.dataset" in d.condition.message
    # an optimizer older than this field leaves it out: no claim either way
    old = o.parse_summary(json.dumps({k: v for k, v in summary().items() if k != "inputs"}))
    assert old.inputs == "" and "inputs" not in o.decide(msvc(), JOB, o.JobResult("succeeded", summary=old)).status


def test_the_variants_session_threads_are_served_unless_the_spec_sets_them() -> None:
    from modelship.render.model_config import render_pbtxt

    one_thread = succeeded(session={"intra_op_threads": 1, "graph_optimization_level": "all"})
    d = o.decide(msvc(), JOB, one_thread)
    assert d.artifact is not None and d.artifact.intra_op_threads == 1
    assert 'key: "intra_op_thread_count"' in render_pbtxt(msvc().spec, d.artifact.batching, d.artifact.intra_op_threads)
    assert o.decide(msvc(), JOB, succeeded()).artifact.intra_op_threads is None  # 0 reads as the default
    spec = ModelService.from_body(body(spec={"model": {"uri": "https://h.example/m.onnx", "sha256": SHA},
                                             "onnxruntime": {"intraOpThreads": 2}})).spec
    pbtxt = render_pbtxt(spec, None, 1)
    assert 'string_value: "2"' in pbtxt and 'string_value: "1"' not in pbtxt  # the spec wins
    with pytest.raises(o.SummaryError, match="session must be an object"):
        o.parse_summary(json.dumps(summary(session=[1])))


def test_no_faster_variant_serves_the_original_and_names_the_closest() -> None:
    d = o.decide(msvc(), JOB, succeeded(outcome="baseline", chosen="original", apply_args=[], speedup=None))
    assert d.artifact is not None and d.artifact.variant == "original" and d.artifact.apply_args == ()
    assert d.artifact.batching is not None, "the original's capacity still sets the batching"
    assert (d.condition.status, d.condition.reason) == ("False", "NoFasterVariant")
    assert "closest: dynamic-int8 at 2.10x" in d.condition.message


def test_accuracy_gate_failed_serves_the_original_and_names_the_closest_candidate() -> None:
    d = o.decide(msvc(), JOB, succeeded(outcome="accuracy_gate_failed", chosen="original", apply_args=[],
                                        candidates=[["baseline", "kept", 1.0, 1.0, ""],
                                                    ["a", "rejected", 2.0, 0.9, ""], ["b", "rejected", 1.5, 0.97, ""]]))
    assert d.artifact is not None and d.artifact.variant == "original"
    assert (d.condition.status, d.condition.reason) == ("False", "AccuracyGateFailed")
    assert "cosine mean>=0.99 worst>=0.98" in d.condition.message and "closest: b with mean 0.97" in d.condition.message
    errors = o.decide(msvc(), JOB, succeeded(outcome="accuracy_gate_failed", chosen="original", apply_args=[],
                                             gate="max_abs mean<=0.01 worst<=0.05",
                                             candidates=[["a", "rejected", 2.0, 0.5, ""], ["b", "rejected", 1.5, 0.02, ""]]))
    assert "closest: b with mean 0.02" in errors.condition.message


def test_a_failure_falls_back_to_the_original_by_default() -> None:
    d = o.decide(msvc(), JOB, o.JobResult("failed", detail="error: model is not loadable"))
    assert d.artifact is not None and d.artifact.variant == "original" and d.artifact.batching is None
    assert (d.condition.status, d.condition.reason) == ("False", "Failed")
    assert "error: model is not loadable" in d.condition.message and "FallbackToBaseline" in d.condition.message
    assert d.wait is None and d.status == {"job": JOB, "outcome": "failed"}


def test_a_failure_under_fail_closed_rolls_out_nothing_and_says_why() -> None:
    d = o.decide(msvc(failurePolicy="FailClosed"), JOB, o.JobResult("failed", detail="error: bad model"))
    assert d.artifact is None
    assert d.wait is not None and d.wait.blocked and d.wait.reason == "OptimizationFailed"
    assert "FailClosed" in d.wait.message and "error: bad model" in d.wait.message


@pytest.mark.parametrize(("state", "reason"), [("pending", "Pending"), ("running", "Running")])
def test_while_the_job_runs_the_rollout_waits(state: str, reason: str) -> None:
    d = o.decide(msvc(), JOB, o.JobResult(state))
    assert d.artifact is None and not d.finished
    assert (d.condition.status, d.condition.reason) == ("Unknown", reason)
    assert d.wait is not None and not d.wait.blocked and JOB in d.wait.message
    assert d.status == {"job": JOB}


def test_disabled_serves_the_original() -> None:
    m = ModelService.from_body(body())
    d = o.disabled(m)
    assert d.artifact is not None and d.artifact.variant == "original" and d.status is None
    assert (d.condition.status, d.condition.reason) == ("False", "Disabled")
