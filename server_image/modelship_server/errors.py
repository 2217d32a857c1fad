"""Errors a request can meet, each carrying its HTTP status and gRPC code.

Every failure a client can cause or observe is one of these; the adapters turn
them into `{"error": ...}` bodies or gRPC statuses without knowing the reason.
Anything else that escapes is a server bug (500 / INTERNAL).
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Base class: a message for the client plus how each protocol says it."""

    http_status: int = 500
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    outcome: str = "error"  # the `outcome` label of modelship_requests_total

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServingError):
    """The request is malformed or does not match the model's metadata."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    outcome = "invalid"


class ModelNotFound(ServingError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    outcome = "not_found"


class Unavailable(ServingError):
    """The model (or server) cannot take the request now; retrying later may work."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    outcome = "unavailable"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFull(Unavailable):
    """Load shedding: the model's bounded queue is full."""

    outcome = "shed"


class Overloaded(QueueFull):
    """Load shedding: the bytes of requests in flight would pass the server's budget.

    gRPC says RESOURCE_EXHAUSTED (as for a message over the size cap) so a client
    can tell "the server is full" from "the model is down"; HTTP says 503 with Retry-After.
    """

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class RequestTimeout(ServingError):
    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    outcome = "timeout"


class PayloadTooLarge(ServingError):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    outcome = "invalid"


class Unsupported(ServingError):
    """A valid protocol call this server does not implement (e.g. shared memory)."""

    http_status = 400
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    outcome = "invalid"


class ModelLoadError(Exception):
    """A model in the repository cannot be served; the message says why and where.

    `reason` is a CamelCase word for the kind of failure (the pod's termination message
    starts with it, and the operator puts it in the ModelService's Ready condition)."""

    def __init__(self, message: str, reason: str = "ModelLoadFailed") -> None:
        super().__init__(message)
        self.reason = reason


# ModelLoadError reasons beyond the default one.
WARMUP_FAILED = "WarmupFailed"  # the model could not answer its own warm-up inference
BATCHING_NOT_SUPPORTED = "BatchingNotSupported"  # the config batches a model that cannot batch
# Why the server refused to start with the security flags (docs/security.md); a Secret mounted
# optional and missing shows up here as a file that does not exist.
TLS_CERTIFICATE_INVALID = "TLSCertificateInvalid"  # missing files, a certificate not matching its key
AUTH_CONFIG_INVALID = "AuthConfigInvalid"  # no API keys in the Secret, no token to call TokenReview with
