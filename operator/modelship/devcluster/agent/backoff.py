"""Restart back-off the way a kubelet does it: the first restart at once, then a delay that
starts at `initial` and doubles up to `cap`, forgotten once a run lasted `reset_after`.

The cap is a flag so tests can watch CrashLoopBackOff grow without waiting five minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_INITIAL = 10.0
DEFAULT_CAP = 300.0
RESET_AFTER = 600.0


@dataclass(frozen=True)
class BackoffPolicy:
    initial: float = DEFAULT_INITIAL
    cap: float = DEFAULT_CAP
    reset_after: float = RESET_AFTER

    def delay(self, failures: int) -> float:
        """Seconds to wait before the restart that follows `failures` consecutive failed runs."""
        if failures <= 1:
            return 0.0
        return min(self.cap, self.initial * 2 ** (failures - 2))

    def failures_after_run(self, failures: int, ran_for: float) -> int:
        """The consecutive-failure count once a run of `ran_for` seconds has ended."""
        return 1 if ran_for >= self.reset_after else failures + 1


def should_restart(restart_policy: str, exit_code: int, *, init: bool = False) -> bool:
    """Whether a finished container runs again. Init containers rerun only until they succeed."""
    if init:
        return exit_code != 0 and restart_policy != "Never"
    if restart_policy == "Always":
        return True
    if restart_policy == "OnFailure":
        return exit_code != 0
    return False
