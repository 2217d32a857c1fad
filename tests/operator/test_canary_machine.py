"""The canary state machine and the replica split: pure, so tables of situations and decisions."""

from __future__ import annotations

import dataclasses

import pytest

from modelship.api.v1alpha1 import CanaryStep
from modelship.canary import machine as m
from modelship.canary import report
from modelship.canary.analysis import FAILED, PASSED, WAITING, TrackStats, Verdict
from modelship.render.canary import canary_replicas

STEPS = [CanaryStep(weight=25, pause_seconds=30), CanaryStep(weight=50, pause_seconds=30)]
T0 = "2026-01-01T00:00:00Z"
T10 = "2026-01-01T00:00:10Z"
T40 = "2026-01-01T00:00:40Z"


def verdict(outcome: str, step: int = 0, revision: str = "new", message: str = "m") -> tuple[str, int, Verdict]:
    return revision, step, Verdict(outcome, message)  # type: ignore[arg-type]


def state(phase: str = m.PROGRESSING, step: int = 0, revision: str = "new", started: str = T0) -> m.CanaryState:
    return m.CanaryState(revision=revision, generation=2, phase=phase, step=step, step_started_at=started)


def advance(s: m.CanaryState | None, *, stable: str | None = "old", v=None, now: str = T10, command=None,
            complete: bool = False) -> m.Plan:
    return m.advance(s, revision="new", generation=2, stable_revision=stable, steps=STEPS, verdict=v, now=now,
                     command=command, stable_complete=complete)


def test_nothing_to_compare_with_or_nothing_new_rolls_out_directly() -> None:
    assert advance(None, stable=None) == m.Plan(None, "direct")  # the first rollout
    assert advance(None, stable="new") == m.Plan(None, "direct")  # replicas changed, not the template


def test_a_promotion_whose_status_write_failed_carries_on_promoting() -> None:
    # The promote apply gave stable the new revision; the status saying Promoting never landed.
    plan = advance(state(step=1), stable="new", v=verdict(PASSED, step=1), now=T40)
    assert (plan.state.phase, plan.action) == (m.PROMOTING, "promote"), plan
    assert [e[0] for e in plan.events] == ["CanaryPromoting"]
    done = advance(state(step=1), stable="new", now=T40, complete=True)
    assert (done.state.phase, done.action) == (m.PROMOTED, "direct")
    assert [e[0] for e in done.events] == ["CanaryPromoting", "CanaryPromoted"]
    assert advance(state(revision="older"), stable="new").state is None  # a spec reverted to stable's: direct


def test_a_new_revision_starts_at_step_one() -> None:
    plan = advance(None, now=T0)
    assert plan.action == "canary" and plan.state == dataclasses.replace(state(), message=plan.state.message)
    assert plan.events == (("CanaryStarted", "generation 2: step 1/2, canary weight 25%"),)


@pytest.mark.parametrize(("v", "now", "phase", "step", "action", "event"), [
    (None, T40, m.PROGRESSING, 0, "canary", None),  # no analysis yet: wait, however long
    (verdict(WAITING), T40, m.PROGRESSING, 0, "canary", None),  # too few requests: no verdict
    (verdict(PASSED), T10, m.PROGRESSING, 0, "canary", None),  # passing, but the pause is not over
    (verdict(PASSED), T40, m.PROGRESSING, 1, "canary", "CanaryStep"),  # passed and paused: next step
    (verdict(PASSED, step=1), T40, m.PROGRESSING, 0, "canary", None),  # another step's verdict is ignored
    (verdict(PASSED, revision="older"), T40, m.PROGRESSING, 0, "canary", None),  # another revision's too
    (verdict(FAILED), T10, m.ROLLED_BACK, 0, "rollback", "CanaryRolledBack"),  # a failure ends it at once
])
def test_progressing_at_step_one(v, now, phase, step, action, event) -> None:
    plan = advance(state(), v=v, now=now)
    assert (plan.state.phase, plan.state.step, plan.action) == (phase, step, action), plan
    assert [e[0] for e in plan.events] == ([event] if event else [])
    if step == 1:
        assert plan.state.step_started_at == now  # the next pause counts from here


def test_the_last_step_passing_promotes_and_stable_complete_ends_it() -> None:
    plan = advance(state(step=1), v=verdict(PASSED, step=1), now=T40)
    assert (plan.state.phase, plan.action, plan.events[0][0]) == (m.PROMOTING, "promote", "CanaryPromoting")
    # stable now carries the new revision, its rolling update still under way: the canary keeps serving
    assert advance(plan.state, stable="new").action == "promote"
    done = advance(plan.state, stable="new", complete=True)
    assert (done.state.phase, done.action, done.events[0][0]) == (m.PROMOTED, "direct", "CanaryPromoted")
    assert advance(done.state, stable="new", complete=True) == m.Plan(done.state, "direct")  # and stays


def test_a_failed_revision_stays_failed_until_the_spec_renders_another() -> None:
    failed = advance(state(), v=verdict(FAILED, message="p95 latency 400 ms > SLO 100 ms"))
    assert "failed its analysis at step 1/2 (weight 25%): p95 latency 400 ms > SLO 100 ms" in failed.state.message
    again = advance(failed.state, v=verdict(PASSED), now=T40)
    assert again == m.Plan(failed.state, "rollback")
    newer = m.advance(failed.state, revision="newer", generation=3, stable_revision="old", steps=STEPS,
                      verdict=None, now=T40)
    assert (newer.state.revision, newer.state.phase, newer.action) == ("newer", m.PROGRESSING, "canary")
    # reverting the spec to what stable runs ends the canary record
    assert advance(failed.state, stable="new") == m.Plan(failed.state, "direct")
    assert m.advance(failed.state, revision="old", generation=4, stable_revision="old", steps=STEPS, verdict=None,
                     now=T40) == m.Plan(None, "direct")


@pytest.mark.parametrize(("command", "phase", "action", "event"), [
    ("abort", m.ABORTED, "rollback", "CanaryAborted"),
    ("promote", m.PROMOTING, "promote", "CanaryPromoting"),
])
def test_an_sre_command_ends_a_progressing_canary(command, phase, action, event) -> None:
    plan = advance(state(), command=command)
    assert (plan.state.phase, plan.action, plan.events[0][0]) == (phase, action, event)
    assert m.COMMAND_ANNOTATION in plan.state.message


def test_the_state_survives_a_round_trip_through_status() -> None:
    s = dataclasses.replace(state(step=1), message="step 2/2")
    assert m.CanaryState.from_status(s.to_status()) == s
    assert m.CanaryState.from_status(None) is None and m.CanaryState.from_status({}) is None


@pytest.mark.parametrize(("stable", "weight", "canary"), [
    (1, 50, 1), (1, 25, 1), (2, 33, 1), (2, 50, 2), (4, 20, 1), (4, 50, 4), (3, 25, 1), (10, 10, 1), (0, 50, 1),
])
def test_canary_replicas_come_nearest_the_weight_and_never_take_stable_down(stable, weight, canary) -> None:
    assert canary_replicas(stable, weight) == canary


def test_conditions_keep_their_meaning() -> None:
    assert report.conditions_of(None) == [] and report.conditions_of(state(m.PROMOTED)) == []
    (progressing,) = report.conditions_of(dataclasses.replace(state(), message="step 1/2"))
    assert (progressing.type, progressing.status, progressing.reason) == ("Progressing", "True", "CanaryProgressing")
    failed = {c.type: c for c in report.conditions_of(dataclasses.replace(state(m.ROLLED_BACK), message="p95 x"))}
    assert (failed["Progressing"].status, failed["Progressing"].reason) == ("False", "RolledBack")
    assert (failed["Degraded"].status, failed["Degraded"].reason) == ("True", "CanaryFailed")
    assert failed["Degraded"].message.startswith("p95 x") and failed["Degraded"].warning
    aborted = {c.type: c for c in report.conditions_of(state(m.ABORTED))}
    assert (aborted["Progressing"].reason, aborted["Degraded"].reason) == ("Aborted", "CanaryAborted")


def test_status_shows_step_weight_and_the_online_speedup() -> None:
    fast = TrackStats(requests=100, buckets=((0.01, 100.0), (float("inf"), 100.0)))
    slow = TrackStats(requests=100, buckets=((0.01, 0.0), (0.02, 100.0), (float("inf"), 100.0)))
    shown = report.status_of(state(step=1), STEPS, canary_replicas=2, stable_replicas=2,
                             verdict=Verdict(PASSED, "ok", canary=fast, stable=slow), percentile="p95")
    assert shown["stepSummary"] == "2/2 50%" and shown["weight"] == 50 and shown["step"] == 2
    assert shown["canary"] == {"requests": 100, "errorRate": 0.0, "shedRate": 0.0, "latencyMilliseconds": 9.5}
    assert shown["onlineSpeedup"] == pytest.approx(19.5 / 9.5, rel=1e-3)
    rolled = report.status_of(state(m.ROLLED_BACK), STEPS, canary_replicas=0, stable_replicas=2, verdict=None,
                              percentile="p95")
    assert rolled["stepSummary"] == "rolled back at 1/2" and rolled["weight"] == 0 and "canary" not in rolled
    assert report.status_of(None, STEPS, canary_replicas=0, stable_replicas=2, verdict=None, percentile="p95") is None


def test_compute_status_lets_a_canary_replace_conditions_of_its_types_only() -> None:
    from modelship.api.v1alpha1 import ModelService
    from modelship.status.compute import Observed, compute_status
    from msvc_samples import body
    from pods import deployment

    failed = report.conditions_of(dataclasses.replace(state(m.ROLLED_BACK), message="p95 latency 400 ms > SLO 100 ms"))
    status, transitions = compute_status(ModelService.from_body(body()), observed=Observed(deployment(), []),
                                         previous=None, now=T0, desired_hash="h1", overrides=failed,
                                         extra_fields={"canary": {"phase": m.ROLLED_BACK}})
    shown = {cond["type"]: (cond["status"], cond["reason"]) for cond in status["conditions"]}
    # kstatus follows: a rolled-back generation is Stalled, which GitOps tools (Flux) read as Failed
    assert shown == {"Ready": ("False", "CanaryFailed"), "Progressing": ("False", "RolledBack"),
                     "Degraded": ("True", "CanaryFailed"), "Reconciling": ("False", "CanaryFailed"),
                     "Stalled": ("True", "CanaryFailed")}
    assert [cond["type"] for cond in status["conditions"]][:3] == ["Ready", "Progressing", "Degraded"]  # in place
    assert status["canary"] == {"phase": "RolledBack"}
    assert {t.reason for t in transitions} >= {"CanaryFailed", "RolledBack"}
