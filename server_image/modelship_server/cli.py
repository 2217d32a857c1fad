"""`modelship-server`: serve a Triton-layout model repository with ONNX Runtime.

Flags mirror Triton's (`--model-repository`, `--http-port`, `--grpc-port`,
`--metrics-port`, `--exit-timeout-secs`, ...) so habits and manifests carry over.
A flag mistake (a missing repository, a port in use) prints one line saying
what to do and exits with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from pathlib import Path

from modelship.contracts import GRPC_PORT, HTTP_PORT, METRICS_PORT

from . import __version__
from .repository import check_repository
from .runtime import GRAPH_LEVELS, PROVIDERS, RuntimeOptions
from .settings import HttpLimits, Settings

LISTEN_ENV = "MODELSHIP_LISTEN_ADDRESS"

EPILOG = """\
model repository layout (Triton's):
  <repository>/<model>/config.pbtxt          optional; Triton's ModelConfig text format
  <repository>/<model>/<version>/model.onnx  one folder per integer version

  Without config.pbtxt, inputs, outputs and batching come from the ONNX model:
  if every input and output has a dynamic first dimension the model batches
  (max_batch_size = --default-max-batch-size) with dynamic batching on.

endpoints (KServe v2 / Open Inference Protocol, Triton-compatible):
  HTTP  :8000  /v2/health/{live,ready}, /v2/models/<m>[/versions/<v>]/{ready,config,stats,infer}
  gRPC  :8001  inference.GRPCInferenceService
  metrics :8002  /metrics (Prometheus)

examples:
  modelship-server --model-repository /models
  modelship-server --model-repository ./repo --http-port 9000 --grpc-port 9001 --metrics-port 9002
  curl localhost:8000/v2/health/ready
"""


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _port(value: str) -> int:
    try:
        p = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {value!r}") from None
    if not 1 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 1 and 65535, got {p}")
    return p


_SIZE = re.compile(r"^(\d+)\s*(|k|ki|m|mi|g|gi|kb|mb|gb)$", re.I)
_UNITS = {"": 1, "k": 1000, "kb": 1000, "ki": 1024, "m": 10**6, "mb": 10**6, "mi": 1024**2,
          "g": 10**9, "gb": 10**9, "gi": 1024**3}


def _size(value: str) -> int:
    m = _SIZE.match(value.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size such as 67108864, 64Mi or 100M, got {value!r}")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _non_negative(kind):
    def parse(value: str):
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
        return v

    return parse


def _positive(kind):
    def parse(value: str):
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
        return v

    return parse


_positive_float = _positive(float)
_positive_int = _positive(int)


def _providers(value: str) -> tuple[str, ...]:
    names = tuple(p.strip().lower() for p in value.split(",") if p.strip())
    bad = [p for p in names if p not in PROVIDERS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown execution provider(s) {bad or value!r}; choose from {', '.join(PROVIDERS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelship-server",
        description="Serve the ONNX models of a Triton-layout model repository over the KServe v2 "
        "protocol (HTTP and gRPC, tritonclient-compatible) with ONNX Runtime, dynamic batching "
        "and Prometheus metrics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"modelship-server {__version__}")
    p.add_argument("--model-repository", "--model-store", metavar="DIR",
                   default=os.environ.get("MODELSHIP_MODEL_REPOSITORY"),
                   help="folder of models in Triton's layout (required; env MODELSHIP_MODEL_REPOSITORY)")
    net = p.add_argument_group("network")
    net.add_argument("--http-port", type=_port, default=HTTP_PORT, metavar="PORT", help=f"HTTP/REST port (default {HTTP_PORT})")
    net.add_argument("--grpc-port", type=_port, default=GRPC_PORT, metavar="PORT", help=f"gRPC port (default {GRPC_PORT})")
    net.add_argument("--metrics-port", type=_port, default=METRICS_PORT, metavar="PORT",
                     help=f"Prometheus /metrics port (default {METRICS_PORT})")
    # A node agent that gives each pod its own loopback address sets LISTEN_ENV (see
    # docs/dev-cluster.md); in a real pod it is unset and the server binds every interface.
    listen = os.environ.get(LISTEN_ENV) or "0.0.0.0"
    for name in ("http", "grpc", "metrics"):
        net.add_argument(f"--{name}-address", default=listen, metavar="ADDR",
                         help=f"address to bind {name} on (default: env {LISTEN_ENV}, else 0.0.0.0)")
    net.add_argument("--allow-http", type=_bool, default=True, metavar="BOOL", help="serve HTTP (default true)")
    net.add_argument("--allow-grpc", type=_bool, default=True, metavar="BOOL", help="serve gRPC (default true)")
    net.add_argument("--allow-metrics", type=_bool, default=True, metavar="BOOL", help="serve metrics (default true)")
    net.add_argument("--http-max-body-size", type=_size, default=64 * 1024**2, metavar="SIZE",
                     help="largest request body (and gRPC message) accepted; bigger ones get 413 "
                          "(default 64Mi; accepts 1048576, 512Ki, 64Mi, 100M)")
    lim = p.add_argument_group("limits (what one client may hold; docs/server.md)")
    lim.add_argument("--max-inflight-bytes", type=_size, default=0, metavar="SIZE",
                     help="budget of request bytes in flight, HTTP and gRPC together (each request counts "
                          "3x its size: body, arrays, batch); over it requests are shed with HTTP 503 / gRPC "
                          "RESOURCE_EXHAUSTED and Retry-After before being decoded "
                          "(default: half the container's memory limit, 1Gi without one)")
    lim.add_argument("--http-max-connections", type=_positive_int, default=1024, metavar="N",
                     help="open HTTP connections per process; more are answered 503 and closed (default 1024)")
    lim.add_argument("--http-max-url-size", type=_size, default=8 * 1024, metavar="SIZE",
                     help="longest request URL; longer gets 414 (default 8Ki)")
    lim.add_argument("--http-max-header-size", type=_size, default=64 * 1024, metavar="SIZE",
                     help="largest request headers (all fields together); larger gets 431 (default 64Ki)")
    lim.add_argument("--http-header-timeout", type=_positive_float, default=10.0, metavar="SECONDS",
                     help="time for a request's headers to arrive, from its first byte (or from the "
                          "connection); slower gets 408 and the connection closed (default 10)")
    lim.add_argument("--http-idle-timeout", type=_positive_float, default=60.0, metavar="SECONDS",
                     help="close a keep-alive connection silent this long, or whose body stops arriving "
                          "or whose responses go unread this long (default 60)")
    lim.add_argument("--http-max-pipelined", type=_positive_int, default=16, metavar="N",
                     help="requests parsed ahead on one connection while an earlier one is answered; "
                          "then its reads pause (default 16)")
    sched = p.add_argument_group("scheduling")
    sched.add_argument("--default-max-batch-size", type=_non_negative(int), default=4, metavar="N",
                       help="max_batch_size given to models without a config whose inputs and outputs "
                            "all have a dynamic first dimension; 0 turns batching off for them (default 4)")
    sched.add_argument("--max-queue-size", type=_non_negative(int), default=256, metavar="N",
                       help="requests a model may hold waiting; more are shed with HTTP 503 / gRPC "
                            "UNAVAILABLE (default 256; a config's default_queue_policy.max_queue_size wins)")
    sched.add_argument("--request-timeout", type=_non_negative(float), default=0.0, metavar="SECONDS",
                       help="default per-request timeout: HTTP 504 / gRPC DEADLINE_EXCEEDED after it "
                            "(default 0 = none; a request's own timeout or gRPC deadline wins)")
    sched.add_argument("--inline-compute-threshold", type=_non_negative(float), default=50000.0, metavar="MICROSECONDS",
                       help="run a batch on the event-loop thread instead of a worker thread when its expected "
                            "run time is at most this (a worker thread costs a handoff and a wait for the GIL on "
                            "the way back); longer runs go to a worker thread (default 50000; 0 = always use "
                            "worker threads)")
    sched.add_argument("--inline-turn-budget", type=_non_negative(float), default=50000.0, metavar="MICROSECONDS",
                       help="inline run time the event loop may spend between two polls for I/O, all models "
                            "together; past it, inline runs wait for the next turn, so health probes wait at most "
                            "about this long (default 50000)")
    sched.add_argument("--thread-switch-interval", type=_non_negative(float), default=500.0, metavar="MICROSECONDS",
                       help="Python's GIL switch interval while a model runs on a worker thread, so the "
                            "thread gets the GIL back soon after its run (default 500; 0 = leave Python's 5000)")
    rt = p.add_argument_group("ONNX Runtime")
    rt.add_argument("--execution-providers", type=_providers, default=("tensorrt", "cuda", "cpu"),
                    metavar="LIST",
                    help="providers to try, in order, when usable here (default tensorrt,cuda,cpu); "
                         "a config's gpu_execution_accelerator list comes first")
    rt.add_argument("--intra-op-threads", type=_non_negative(int), default=0, metavar="N",
                    help="threads inside one operator, per session (default 0 = ONNX Runtime's choice; "
                         "config parameter intra_op_thread_count wins)")
    rt.add_argument("--inter-op-threads", type=_non_negative(int), default=0, metavar="N",
                    help="threads across operators, per session (default 0; config parameter "
                         "inter_op_thread_count wins)")
    rt.add_argument("--graph-optimization-level", choices=sorted(GRAPH_LEVELS), default="all",
                    help="ONNX Runtime graph optimizations (default all; config optimization.graph.level wins)")
    rt.add_argument("--allow-spinning", type=_bool, default=False, metavar="BOOL",
                    help="let ONNX Runtime's worker threads busy-wait between runs (default false: "
                         "spinning steals the cores the server and its clients need; config "
                         "parameter allow_spinning wins)")
    rt.add_argument("--cache-dir", default="/tmp/modelship-cache", metavar="DIR",
                    help="writable folder for TensorRT engine caches (default /tmp/modelship-cache)")
    life = p.add_argument_group("lifecycle")
    life.add_argument("--exit-timeout-secs", "--shutdown-grace-period", type=_non_negative(float),
                      default=30.0, metavar="SECONDS",
                      help="after SIGTERM, how long in-flight requests may take before the process "
                           "exits anyway; keep it below the pod's terminationGracePeriodSeconds (default 30)")
    life.add_argument("--exit-on-error", type=_bool, default=True, metavar="BOOL",
                      help="exit with code 1 if any model fails to load (default true, as Triton)")
    life.add_argument("--termination-log", default=None, metavar="FILE",
                      help="on an exit on error, write one line '<Reason>: <why>' there for the orchestrator "
                           "(in a pod: /dev/termination-log); default: none")
    life.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                      help="log verbosity (default info)")
    return p


def parse_settings(argv: list[str] | None) -> tuple[Settings, str]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.model_repository:
        parser.error("--model-repository is required: the folder of models to serve "
                     "(e.g. --model-repository /models)")
    try:
        repo = check_repository(args.model_repository)
    except ValueError as exc:
        parser.error(f"{exc}; pass the folder that holds <model>/<version>/model.onnx")
    enabled = [(args.http_port, "--http-port", args.allow_http), (args.grpc_port, "--grpc-port", args.allow_grpc),
               (args.metrics_port, "--metrics-port", args.allow_metrics)]
    seen: dict[int, str] = {}
    for port, flag, on in enabled:
        if on and port in seen:
            parser.error(f"{flag} and {seen[port]} are both {port}; give each endpoint its own port")
        seen[port] = flag
    return Settings(
        model_repository=repo,
        http_address=args.http_address, http_port=args.http_port,
        grpc_address=args.grpc_address, grpc_port=args.grpc_port,
        metrics_address=args.metrics_address, metrics_port=args.metrics_port,
        allow_http=args.allow_http, allow_grpc=args.allow_grpc, allow_metrics=args.allow_metrics,
        max_body_size=args.http_max_body_size,
        max_inflight_bytes=args.max_inflight_bytes,
        http_limits=HttpLimits(
            max_url_size=args.http_max_url_size,
            max_header_size=args.http_max_header_size,
            header_timeout_s=args.http_header_timeout,
            idle_timeout_s=args.http_idle_timeout,
            max_connections=args.http_max_connections,
            max_pipelined=args.http_max_pipelined,
        ),
        default_max_batch_size=args.default_max_batch_size,
        max_queue_size=args.max_queue_size or 256,
        request_timeout_s=args.request_timeout,
        inline_threshold_s=args.inline_compute_threshold / 1e6,
        inline_turn_budget_s=args.inline_turn_budget / 1e6,
        thread_switch_interval_s=args.thread_switch_interval / 1e6,
        exit_timeout_s=args.exit_timeout_secs,
        exit_on_error=args.exit_on_error,
        termination_log=Path(args.termination_log) if args.termination_log else None,
        runtime=RuntimeOptions(
            providers=args.execution_providers,
            intra_op_threads=args.intra_op_threads,
            inter_op_threads=args.inter_op_threads,
            graph_optimization_level=args.graph_optimization_level,
            allow_spinning=args.allow_spinning,
            cache_dir=Path(args.cache_dir),
        ),
    ), args.log_level


def main(argv: list[str] | None = None) -> int:
    settings, level = parse_settings(argv)
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from .malloc import pin_mmap_threshold
    from .server import BindError, serve  # after parsing: --help stays fast

    pin_mmap_threshold()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the server extra
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        return runner(serve(settings))
    except BindError as exc:
        print(f"modelship-server: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
