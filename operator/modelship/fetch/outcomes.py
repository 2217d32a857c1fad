"""How the fetch step ends: exit codes and reasons, the contract between init container and status.

The operator reads a failed init container's exit code (and its termination message for the
detail) and turns it into a ModelService condition reason. Codes start at 10 so they never
collide with Python's own exit codes (1 for an uncaught error, 2 for bad arguments).
"""

from __future__ import annotations

import enum

from modelship.modeluri import redact_text


class FetchOutcome(enum.Enum):
    """(exit code, condition reason) of each way the fetch step can fail."""

    INVALID_URI = (10, "InvalidModelURI")
    UNREACHABLE = (11, "ModelUnreachable")
    CHECKSUM_MISMATCH = (12, "ModelChecksumMismatch")
    ACCESS_DENIED = (13, "ModelAccessDenied")
    NOT_FOUND = (14, "ModelNotFound")
    TOO_LARGE = (15, "ModelTooLarge")  # over the size cap (--max-bytes), or no space left to write it
    REDIRECT_REFUSED = (16, "ModelRedirectRefused")  # to another scheme, or a signed S3 request to another host

    @property
    def exit_code(self) -> int:
        return self.value[0]

    @property
    def reason(self) -> str:
        return self.value[1]

    @classmethod
    def from_exit_code(cls, code: int | None) -> FetchOutcome | None:
        for outcome in cls:
            if outcome.exit_code == code:
                return outcome
        return None


# What no retry can fix: the Job's pod failure policy fails at once on these.
PERMANENT = (FetchOutcome.INVALID_URI, FetchOutcome.CHECKSUM_MISMATCH, FetchOutcome.ACCESS_DENIED,
             FetchOutcome.NOT_FOUND, FetchOutcome.TOO_LARGE, FetchOutcome.REDIRECT_REFUSED)


class FetchError(Exception):
    """A fetch failure with its outcome; the message is for humans and names the URI (redacted)."""

    def __init__(self, outcome: FetchOutcome, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.retry_after = retry_after  # seconds a 429 or 503 asked us to wait, if it said

    def termination_message(self) -> str:
        return redact_text(f"{self.outcome.reason}: {self}")[:4000]  # the kubelet keeps 4096 bytes at most
