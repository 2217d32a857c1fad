"""Server settings: what the command line decides, in one frozen object passed down."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from modelship.contracts import GRPC_PORT, HTTP_PORT, METRICS_PORT

from .runtime import RuntimeOptions


@dataclasses.dataclass(frozen=True)
class Settings:
    model_repository: Path
    http_address: str = "0.0.0.0"
    http_port: int = HTTP_PORT
    grpc_address: str = "0.0.0.0"
    grpc_port: int = GRPC_PORT
    metrics_address: str = "0.0.0.0"
    metrics_port: int = METRICS_PORT
    allow_http: bool = True
    allow_grpc: bool = True
    allow_metrics: bool = True
    max_body_size: int = 64 * 1024 * 1024
    default_max_batch_size: int = 4
    max_queue_size: int = 256
    request_timeout_s: float = 0.0
    inline_threshold_s: float = 100e-6
    exit_timeout_s: float = 30.0
    exit_on_error: bool = True
    termination_log: Path | None = None  # where the reason of an exit on error is written
    runtime: RuntimeOptions = dataclasses.field(default_factory=RuntimeOptions)
