"""The canary's state machine: from what was decided before (kept in status.canary, so a restarted
or newly elected operator carries on), what runs, the latest analysis and an SRE's command, to
what runs next.

Pure: no clock (`now` is passed in) and no I/O. The reconciler turns the `Plan`'s action into
applies: `direct` (no canary: the stable Deployment gets the spec as usual), `canary` (stable held
on the previous spec, canary at the step's weight), `rollback` (stable held, canary at zero) and
`promote` (stable gets the spec, by its own surge-first rolling update; the canary keeps serving
until stable is complete, so no request finds no pod).

A revision is the hash of the rendered pod template: a change of replicas alone is no new
revision and rolls out directly. A rolled-back revision stays rolled back until the spec renders
another one (the spec is never rewritten: GitOps owns it).
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, Literal, Mapping, Sequence

from modelship.api.v1alpha1 import CanaryStep
from modelship.canary.analysis import FAILED, PASSED, Verdict

PROGRESSING, PROMOTING, PROMOTED, ROLLED_BACK, ABORTED = "Progressing", "Promoting", "Promoted", "RolledBack", "Aborted"
Action = Literal["direct", "canary", "rollback", "promote"]
# The ModelService annotation an SRE sets to end a canary early: `promote` or `abort`.
COMMAND_ANNOTATION = "modelship.dev/canary"
COMMANDS = ("promote", "abort")


@dataclasses.dataclass(frozen=True)
class CanaryState:
    revision: str
    generation: int | None
    phase: str
    step: int  # 0-based index into spec.rollout.canary.steps
    step_started_at: str  # RFC 3339
    message: str = ""

    def to_status(self) -> dict[str, Any]:
        return {"revision": self.revision, "generation": self.generation, "phase": self.phase,
                "step": self.step + 1, "stepStartedAt": self.step_started_at, "message": self.message}

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> CanaryState | None:
        if not status or not status.get("revision") or not status.get("phase"):
            return None
        return cls(revision=str(status["revision"]), generation=status.get("generation"), phase=str(status["phase"]),
                   step=max(0, int(status.get("step") or 1) - 1), step_started_at=str(status.get("stepStartedAt") or ""),
                   message=str(status.get("message") or ""))


@dataclasses.dataclass(frozen=True)
class Plan:
    state: CanaryState | None
    action: Action
    events: tuple[tuple[str, str], ...] = ()  # (reason, message), posted on the ModelService


def epoch(stamp: str) -> float | None:
    try:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def advance(state: CanaryState | None, *, revision: str, generation: int | None, stable_revision: str | None,
            steps: Sequence[CanaryStep], verdict: tuple[str, int, Verdict] | None, now: str,
            command: str | None = None, stable_complete: bool = False) -> Plan:
    """The next state and action. `verdict`: the latest analysis as (revision, step index, verdict);
    one of another revision or step is ignored. `stable_revision` None: no stable Deployment yet,
    so nothing to compare against and the spec rolls out directly."""
    if stable_revision is None:
        return Plan(None, "direct")
    if stable_revision == revision:
        events: tuple[tuple[str, str], ...] = ()
        if state is not None and state.revision == revision and state.phase == PROGRESSING:
            # Only a promotion gives stable this revision: its apply landed and the status write
            # that said so did not (a 409, a lost answer). Carry on promoting; never sit Progressing.
            message = f"generation {generation} promoted: stable already runs it"
            state = dataclasses.replace(state, phase=PROMOTING, message=message)
            events = (("CanaryPromoting", message),)
        if state is not None and state.revision == revision and state.phase == PROMOTING:
            if not stable_complete:
                return Plan(state, "promote", events)
            done = dataclasses.replace(state, phase=PROMOTED, message=f"generation {generation} promoted")
            return Plan(done, "direct", (*events, ("CanaryPromoted", f"generation {generation}: stable runs the new "
                                                                     "spec; the canary is removed")))
        kept = state if state is not None and state.revision == revision else None
        return Plan(kept, "direct")

    if state is None or state.revision != revision:
        first = steps[0]
        fresh = CanaryState(revision, generation, PROGRESSING, 0, now, f"step 1/{len(steps)}: weight {first.weight}%")
        return Plan(fresh, "canary", (("CanaryStarted", f"generation {generation}: step 1/{len(steps)}, "
                                                        f"canary weight {first.weight}%"),))
    if state.phase in (ROLLED_BACK, ABORTED):
        return Plan(state, "rollback")
    if state.phase in (PROMOTING, PROMOTED):
        return Plan(dataclasses.replace(state, phase=PROMOTING), "promote")

    step = min(state.step, len(steps) - 1)
    where = f"step {step + 1}/{len(steps)} (weight {steps[step].weight}%)"
    if command == "abort":
        message = f"generation {generation} aborted at {where} by the {COMMAND_ANNOTATION} annotation"
        return Plan(dataclasses.replace(state, phase=ABORTED, message=message), "rollback", (("CanaryAborted", message),))
    if command == "promote":
        message = f"generation {generation} promoted at {where} by the {COMMAND_ANNOTATION} annotation"
        return Plan(dataclasses.replace(state, phase=PROMOTING, message=message), "promote", (("CanaryPromoting", message),))
    current = verdict[2] if verdict is not None and verdict[0] == revision and verdict[1] == step else None
    if current is not None and current.outcome == FAILED:
        message = f"generation {generation} failed its analysis at {where}: {current.message}"
        return Plan(dataclasses.replace(state, phase=ROLLED_BACK, message=message), "rollback",
                    (("CanaryRolledBack", message),))
    started = epoch(state.step_started_at)
    clock = epoch(now)
    elapsed = clock - started if started is not None and clock is not None else 0.0
    pause = steps[step].pause_seconds
    if current is not None and current.outcome == PASSED and elapsed >= pause:
        if step + 1 >= len(steps):
            message = f"generation {generation} passed every step; promoting: {current.message}"
            return Plan(dataclasses.replace(state, phase=PROMOTING, step=step, message=message), "promote",
                        (("CanaryPromoting", message),))
        nxt = steps[step + 1]
        message = f"step {step + 2}/{len(steps)}: weight {nxt.weight}% (step {step + 1} passed: {current.message})"
        return Plan(dataclasses.replace(state, step=step + 1, step_started_at=now, message=message), "canary",
                    (("CanaryStep", message),))
    if current is None:
        message = f"{where}: waiting for the first analysis"
    elif current.outcome == PASSED:
        message = f"{where}: passing, {max(0, int(pause - elapsed))} s of the pause left: {current.message}"
    else:
        message = f"{where}: {current.message}"
    return Plan(dataclasses.replace(state, step=step, message=message), "canary")

