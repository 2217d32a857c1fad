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

from . import __version__, grpc_env  # noqa: F401 - grpc_env before any module that imports grpc
from .mirror import MirrorSettings
from .repository import check_repository
from .runtime import GRAPH_LEVELS, PROVIDERS, RuntimeOptions
from .settings import HttpLimits, MonitoringSettings, Settings
from .tracing import parse_trace_config

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
  with --monitoring: HTTP /v2/models/<m>/{monitoring,feedback}, gRPC modelship.monitoring.v1.Monitoring

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
    rt.add_argument("--execution-providers", type=_providers, default=("cuda", "cpu"),
                    metavar="LIST",
                    help="providers to try, in order, when usable here (default cuda,cpu); a config's "
                         "gpu_execution_accelerator list comes first, and is how TensorRT is turned on "
                         "for a model (docs/gpu.md: the operator renders it only where it passed the gate)")
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
    _monitoring_flags(p)
    life.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                      help="log verbosity (default info)")
    _security_flags(p)
    tr = p.add_argument_group(
        "tracing (OpenTelemetry, docs/tracing.md)",
        "Off by default. Triton's --trace-config syntax: [opentelemetry,]KEY=VALUE, repeatable. The standard "
        "OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT / _PROTOCOL, OTEL_TRACES_SAMPLER(_ARG), OTEL_SERVICE_NAME, "
        "OTEL_RESOURCE_ATTRIBUTES and OTEL_SDK_DISABLED fill in what the flags leave unset.")
    tr.add_argument("--trace-config", action="append", default=[], metavar="[opentelemetry,]KEY=VALUE",
                    help="mode=opentelemetry turns tracing on; level=OFF|TIMESTAMPS; rate=N samples one root "
                         "request in N (Triton's) or ratio=0.05 (a share); a caller's sampled traceparent is "
                         "always followed; opentelemetry,url=HOST:PORT[/PATH] the OTLP receiver; "
                         "opentelemetry,protocol=grpc|http/protobuf (default grpc); opentelemetry,resource=K=V; "
                         "opentelemetry,bsp_max_queue_size=N / bsp_schedule_delay=MS / bsp_max_export_batch_size=N. "
                         "Example: --trace-config mode=opentelemetry --trace-config ratio=0.1 "
                         "--trace-config opentelemetry,url=otel-collector:4317")
    _mirror_flags(p)
    return p


# -- authentication and TLS (docs/security.md) --------------------------------


def _list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _accounts(value: str) -> frozenset[str]:
    names = _list(value)
    bad = [n for n in names if n.count("/") != 1 or not all(n.split("/"))]
    if bad:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME[,NAMESPACE/NAME...], got {', '.join(bad)}")
    return frozenset(names)


def _object(value: str) -> tuple[str, str]:
    ns, _, name = value.partition("/")
    if not ns or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME of the ModelService, got {value!r}")
    return ns, name


def _security_flags(p: argparse.ArgumentParser) -> None:
    sec = p.add_argument_group(
        "authentication and TLS (docs/security.md)",
        "Off by default. With any --auth-* source on, every endpoint but /v2/health/{live,ready} (and gRPC "
        "ServerLive/ServerReady) needs 'Authorization: Bearer <API key or ServiceAccount token>': 401 / "
        "UNAUTHENTICATED without a valid one, 403 / PERMISSION_DENIED when it is valid but not allowed. "
        "The metrics port stays open.")
    sec.add_argument("--auth-api-keys", metavar="PATH",
                     help="a file with one API key per line, or a mounted Secret folder with one key per entry; "
                          "re-read when it changes (rotate keys by updating the Secret)")
    sec.add_argument("--auth-token-review", type=_bool, default=False, metavar="BOOL",
                     help="accept Kubernetes ServiceAccount tokens, checked with a TokenReview (default false)")
    sec.add_argument("--auth-audiences", type=_list, default=(), metavar="LIST",
                     help="audiences a token must be issued for (comma-separated; default: the API server's own)")
    sec.add_argument("--auth-allowed-service-accounts", type=_accounts, default=frozenset(), metavar="LIST",
                     help="NAMESPACE/NAME of the ServiceAccounts let in (comma-separated; default: any token that "
                          "passes the TokenReview, then --auth-access-review if set)")
    sec.add_argument("--auth-access-review", type=_object, default=None, metavar="NAMESPACE/NAME",
                     help="also ask a SubjectAccessReview: may the caller <verb> this ModelService?")
    sec.add_argument("--auth-access-verb", default="infer", metavar="VERB",
                     help="the verb checked on modelservices by --auth-access-review (default infer)")
    sec.add_argument("--auth-cache-ttl", type=_non_negative(float), default=10.0, metavar="SECONDS",
                     help="how long a token's verdict is remembered (default 10; 0 = review every request)")
    sec.add_argument("--auth-kube-api", default=None, metavar="URL",
                     help="the Kubernetes API for reviews (default: in a pod, https://$KUBERNETES_SERVICE_HOST)")
    sec.add_argument("--auth-kube-token-file", default=None, metavar="FILE",
                     help="the server's own token for reviews (default: the pod's ServiceAccount token)")
    sec.add_argument("--auth-kube-ca-file", default=None, metavar="FILE",
                     help="CA of the Kubernetes API (default: the pod's ServiceAccount ca.crt)")
    sec.add_argument("--tls-dir", default=None, metavar="DIR",
                     help="serve HTTPS and gRPC over TLS from a kubernetes.io/tls Secret folder (tls.crt, tls.key; "
                          "ca.crt for --tls-client-auth); re-read when it changes, open connections kept")
    sec.add_argument("--tls-cert-file", default=None, metavar="FILE", help="certificate chain, PEM (default DIR/tls.crt)")
    sec.add_argument("--tls-key-file", default=None, metavar="FILE", help="private key, PEM (default DIR/tls.key)")
    sec.add_argument("--tls-client-auth", type=_bool, default=False, metavar="BOOL",
                     help="mTLS: require client certificates signed by --tls-client-ca-file (default false)")
    sec.add_argument("--tls-client-ca-file", default=None, metavar="FILE",
                     help="CA that signs client certificates, PEM (default DIR/ca.crt)")
    sec.add_argument("--watch-interval", type=_positive_float, default=2.0, metavar="SECONDS",
                     help="how often the API key and TLS files are checked for changes (default 2)")


def _security_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The Settings fields of the security flags; parser.error on a combination that cannot work."""
    from .auth import GateConfig
    from .tls import TlsConfig

    def path(v: str | None) -> Path | None:
        return Path(v) if v else None

    if (args.auth_allowed_service_accounts or args.auth_access_review or args.auth_audiences) \
            and not args.auth_token_review:
        parser.error("--auth-allowed-service-accounts, --auth-access-review and --auth-audiences need "
                     "--auth-token-review true")
    auth = GateConfig(
        api_keys=path(args.auth_api_keys), token_review=args.auth_token_review, audiences=args.auth_audiences,
        allowed_service_accounts=args.auth_allowed_service_accounts, access_review=args.auth_access_review,
        access_verb=args.auth_access_verb, cache_ttl_s=args.auth_cache_ttl, kube_api=args.auth_kube_api,
        kube_token_file=path(args.auth_kube_token_file), kube_ca_file=path(args.auth_kube_ca_file),
    )
    tls = None
    folder = path(args.tls_dir)
    cert = path(args.tls_cert_file) or (folder / "tls.crt" if folder else None)
    key = path(args.tls_key_file) or (folder / "tls.key" if folder else None)
    if cert or key:
        if not (cert and key):
            parser.error("TLS needs both a certificate and a key: pass --tls-dir, or --tls-cert-file and --tls-key-file")
        ca = None
        if args.tls_client_auth:
            ca = path(args.tls_client_ca_file) or (folder / "ca.crt" if folder else None)
            if ca is None:
                parser.error("--tls-client-auth true needs --tls-client-ca-file (or --tls-dir holding ca.crt)")
        tls = TlsConfig(cert, key, ca)
    elif args.tls_client_auth:
        parser.error("--tls-client-auth needs TLS on: pass --tls-dir, or --tls-cert-file and --tls-key-file")
    return {"auth": auth, "tls": tls, "watch_interval_s": args.watch_interval}


# --- monitoring flags (docs/monitoring.md) ---------------------------------------------------


def _fraction(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return v


def _monitoring_flags(p: argparse.ArgumentParser) -> None:
    mon = p.add_argument_group("monitoring (drift, quality from feedback, capture; docs/monitoring.md)")
    mon.add_argument("--monitoring", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
                     help="profile inputs and outputs, measure drift, join feedback, serve "
                          "/v2/models/<m>/monitoring and /feedback (default false)")
    mon.add_argument("--monitoring-sample-rate", type=_fraction, default=1.0, metavar="FRACTION",
                     help="share of requests profiled, 0..1 (default 1.0)")
    mon.add_argument("--monitoring-reference", default=None, metavar="FILE",
                     help="reference profile (JSON, from `modelship optimize` or `python -m "
                          "modelship_server.monitoring reference`); default: freeze the first "
                          "--monitoring-reference-size sampled requests of each model")
    mon.add_argument("--monitoring-reference-size", type=_positive_int, default=1000, metavar="N",
                     help="sampled requests frozen as the reference when no file is given (default 1000)")
    mon.add_argument("--monitoring-window", type=_positive_int, default=1000, metavar="N",
                     help="samples per drift window and labels per quality window (default 1000)")
    mon.add_argument("--drift-psi-threshold", type=_positive_float, default=0.2, metavar="PSI",
                     help="PSI at or over which a feature may be called drifted (default 0.2)")
    mon.add_argument("--drift-p-value", type=_fraction, default=0.01, metavar="P",
                     help="KS p-value under which a feature may be called drifted (default 0.01); "
                          "both must agree")
    mon.add_argument("--feedback-ttl", type=_positive_float, default=3600.0, metavar="SECONDS",
                     help="how long a prediction waits for its label (default 3600)")
    mon.add_argument("--feedback-max-entries", type=_positive_int, default=100_000, metavar="N",
                     help="predictions held for feedback; the oldest go first (default 100000)")
    mon.add_argument("--capture-dir", default=None, metavar="DIR",
                     help="write sampled request/response records to this folder (JSON lines + .npz)")
    mon.add_argument("--capture-uri", default="", metavar="s3://BUCKET/PREFIX",
                     help="write them to S3-compatible storage (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                          "AWS_REGION, AWS_ENDPOINT_URL)")
    mon.add_argument("--capture-sample-rate", type=_fraction, default=1.0, metavar="FRACTION",
                     help="share of requests captured, 0..1 (default 1.0)")
    mon.add_argument("--capture-batch-size", type=_positive_int, default=100, metavar="N",
                     help="records per written batch (a partial batch is written after 1 s; default 100)")
    mon.add_argument("--monitoring-peer-address", default=None, metavar="HOST:PORT",
                     help="where other replicas reach this server's HTTP port; the request ids it makes "
                          "carry it, so feedback landing on another replica is forwarded here once "
                          "(default: env MODELSHIP_POD_IP:--http-port, else --http-address:--http-port "
                          "unless that is 0.0.0.0)")


def _monitoring_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> MonitoringSettings:
    if args.capture_dir and args.capture_uri:
        parser.error("give --capture-dir or --capture-uri, not both")
    if args.capture_uri and not args.capture_uri.startswith("s3://"):
        parser.error(f"--capture-uri: expected s3://bucket/prefix, got {args.capture_uri!r}")
    uses = [f for f, v in (("--monitoring-reference", args.monitoring_reference), ("--capture-dir", args.capture_dir),
                           ("--capture-uri", args.capture_uri)) if v]
    if uses and not args.monitoring:
        parser.error(f"{', '.join(uses)} need(s) --monitoring")
    if args.monitoring_reference:
        from .monitoring.reference import ReferenceInvalid, load_reference

        try:
            load_reference(Path(args.monitoring_reference))
        except ReferenceInvalid as exc:
            parser.error(f"--monitoring-reference: {exc}")
    peer = args.monitoring_peer_address
    if peer is None:
        host = os.environ.get("MODELSHIP_POD_IP") or (args.http_address if args.http_address not in ("0.0.0.0", "::") else "")
        peer = f"{host}:{args.http_port}" if host else ""
    return MonitoringSettings(
        peer_address=peer,
        enabled=args.monitoring, sample_rate=args.monitoring_sample_rate,
        reference=Path(args.monitoring_reference) if args.monitoring_reference else None,
        reference_size=args.monitoring_reference_size, window=args.monitoring_window,
        psi_threshold=args.drift_psi_threshold, p_value=args.drift_p_value,
        feedback_ttl_s=args.feedback_ttl, feedback_max_entries=args.feedback_max_entries,
        capture_dir=Path(args.capture_dir) if args.capture_dir else None, capture_uri=args.capture_uri,
        capture_sample_rate=args.capture_sample_rate, capture_batch_size=args.capture_batch_size,
    )


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
    try:
        tracing = parse_trace_config(args.trace_config, os.environ)
    except ValueError as exc:
        parser.error(str(exc))
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
        **_security_settings(parser, args),
        monitoring=_monitoring_settings(parser, args),
        tracing=tracing,
        mirror=_mirror_settings(parser, args),
    ), args.log_level


# --- output agreement: mirroring to a reference server (docs/rollout.md) -----------------------


def _mirror_flags(p: argparse.ArgumentParser) -> None:
    from .optimize.gate import METRICS

    mir = p.add_argument_group("output agreement (a canary mirrors to stable; docs/rollout.md)")
    mir.add_argument("--mirror-to", default="", metavar="URL",
                     help="after answering, send a sample of requests again to this KServe v2 HTTP server "
                          "(http://host:port) and count whether its answers agree with ours in "
                          "modelship_mirror_requests_total; off the request path, never delays or fails it; "
                          "a server started with it refuses requests mirrored by another (default: off)")
    mir.add_argument("--mirror-sample-rate", type=_fraction, default=0.1, metavar="FRACTION",
                     help="share of answered requests mirrored (default 0.1)")
    mir.add_argument("--mirror-metric", choices=METRICS, default="cosine",
                     help="how two answers are compared, as the optimize gate does (default cosine)")
    mir.add_argument("--mirror-threshold", type=float, default=None, metavar="X",
                     help="a request agrees when its figure is >= X (cosine, top1_agreement) or <= X "
                          "(max_abs, max_rel); default 0.99 for cosine, 1 for top1_agreement, 1e-3 for max_abs "
                          "and max_rel")
    mir.add_argument("--mirror-queue-size", type=_positive_int, default=64, metavar="N",
                     help="samples waiting to be sent; more are dropped and counted (default 64)")
    mir.add_argument("--mirror-max-bytes", type=_positive_int, default=64 * 1024 * 1024, metavar="BYTES",
                     help="input and output bytes the waiting and in-flight samples may hold; more are "
                          "dropped and counted (default 64 MiB)")
    mir.add_argument("--mirror-timeout", type=_positive_float, default=5.0, metavar="SECONDS",
                     help="how long one mirrored request may take before it counts as failed (default 5)")


_MIRROR_THRESHOLDS = {"cosine": 0.99, "top1_agreement": 1.0, "max_abs": 1e-3, "max_rel": 1e-3}


def _mirror_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> MirrorSettings:
    url = args.mirror_to.strip()
    given = [f for f, v in (("--mirror-threshold", args.mirror_threshold is not None),) if v]
    if not url:
        if given:
            parser.error(f"{', '.join(given)} needs --mirror-to")
        return MirrorSettings()
    if not url.startswith(("http://", "https://")) or not url.split("://", 1)[1].strip("/"):
        parser.error(f"--mirror-to: expected http://host:port or https://host:port, got {args.mirror_to!r}")
    threshold = args.mirror_threshold if args.mirror_threshold is not None else _MIRROR_THRESHOLDS[args.mirror_metric]
    return MirrorSettings(url=url, sample_rate=args.mirror_sample_rate, metric=args.mirror_metric,
                          threshold=threshold, queue_size=args.mirror_queue_size, max_bytes=args.mirror_max_bytes,
                          timeout_s=args.mirror_timeout)


def main(argv: list[str] | None = None) -> int:
    settings, level = parse_settings(argv)
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from . import malloc
    from .server import StartupError, serve  # after parsing: --help stays fast

    malloc.tune()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the server extra
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        return runner(serve(settings))
    except StartupError as exc:
        print(f"modelship-server: error: {exc}", file=sys.stderr)
        if settings.termination_log is not None:
            from .server import write_termination_log

            write_termination_log(settings.termination_log, f"{exc.reason}: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
