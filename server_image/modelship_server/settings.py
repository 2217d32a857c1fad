"""Server settings: what the command line decides, in one frozen object passed down."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from modelship.contracts import GRPC_PORT, HTTP_PORT, METRICS_PORT

from .auth.gate import GateConfig
from .mirror import MirrorSettings
from .runtime import RuntimeOptions
from .tls import TlsConfig
from .tracing import TraceSettings


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    """What one HTTP client may hold: a slow or greedy client gets a 4xx/408 or its
    reads paused, never the server's memory or event loop (docs/server.md, "Limits")."""

    max_url_size: int = 8 * 1024  # 414
    max_header_size: int = 64 * 1024  # 431, request line excluded
    header_timeout_s: float = 10.0  # from the first byte of a request (or the connection) to its last header: 408
    idle_timeout_s: float = 60.0  # a keep-alive connection with nothing to say, or a body that stops arriving
    max_connections: int = 1024  # more are answered 503 and closed
    max_pipelined: int = 16  # parsed requests waiting on one connection before its reads pause
    write_buffer_high: int = 256 * 1024  # unsent response bytes before its reads pause


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
    max_inflight_bytes: int = 0  # 0: half the container's memory limit (budget.default_budget)
    http_limits: HttpLimits = dataclasses.field(default_factory=HttpLimits)
    default_max_batch_size: int = 4
    max_queue_size: int = 256
    request_timeout_s: float = 0.0
    inline_threshold_s: float = 50e-3  # a run expected longer always goes to a worker thread
    inline_turn_budget_s: float = 50e-3  # inline run time the loop may spend between two polls for I/O
    thread_switch_interval_s: float = 500e-6  # GIL switch interval while a run is on a worker thread; 0: Python's
    exit_timeout_s: float = 30.0
    exit_on_error: bool = True
    termination_log: Path | None = None  # where the reason of an exit on error is written
    runtime: RuntimeOptions = dataclasses.field(default_factory=RuntimeOptions)
    # -- authentication and TLS (docs/security.md) --
    auth: GateConfig = dataclasses.field(default_factory=GateConfig)
    tls: TlsConfig | None = None
    watch_interval_s: float = 2.0  # how often the API key and TLS files are checked for changes
    monitoring: MonitoringSettings = dataclasses.field(default_factory=lambda: MonitoringSettings())
    tracing: TraceSettings = dataclasses.field(default_factory=TraceSettings)  # --trace-config, OTEL_*
    mirror: MirrorSettings = dataclasses.field(default_factory=MirrorSettings)  # --mirror-to (docs/rollout.md)


# --- monitoring (docs/monitoring.md): all off unless --monitoring --------------------------------
@dataclasses.dataclass(frozen=True)
class MonitoringSettings:
    enabled: bool = False
    sample_rate: float = 1.0
    reference: Path | None = None  # a reference profile; None: freeze the first `reference_size` sampled requests
    reference_size: int = 1000
    window: int = 1000  # samples per drift window and labels per quality window
    psi_threshold: float = 0.2
    p_value: float = 0.01
    feedback_ttl_s: float = 3600.0
    feedback_max_entries: int = 100_000
    capture_dir: Path | None = None
    capture_uri: str = ""
    capture_sample_rate: float = 1.0
    capture_batch_size: int = 100
    peer_address: str = ""  # HOST:PORT other replicas reach this one's HTTP at; put in the ids it makes
