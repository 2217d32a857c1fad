"""The server's life: bind ports, load and warm up models, serve, drain on SIGTERM.

Ports are bound before models load so that a port clash fails at once and the
liveness endpoint answers while a large model is still loading; readiness
turns true only when every model is warmed up. On SIGTERM (or SIGINT)
readiness turns false at once, requests already in flight complete, and the
process exits when none are left or when --exit-timeout-secs has passed.
`serve()` is those three stages in order: `bind`, `load`, `drain`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from pathlib import Path

import grpc

from .auth import Gate
from .budget import ByteBudget, cgroup_memory_limit, default_budget
from .dataplane import DataPlane
from .errors import AUTH_CONFIG_INVALID, TLS_CERTIFICATE_INVALID
from .metrics import Metrics
from .mirror import Mirror, MirrorCollector, client_context
from .monitoring.exporter import MonitoringCollector
from .monitoring.monitor import Monitoring
from .monitoring.reference import ReferenceInvalid, load_reference
from .protocol.grpc import make_server
from .protocol.rest import RestApp
from .registry import LoadOptions, Registry
from .settings import Settings
from .tls import TlsFiles
from .tracing import Tracer, make_tracer

log = logging.getLogger("modelship_server")


class StartupError(Exception):
    """The server cannot start as configured; the message says which flag or file to fix.

    `reason` starts the termination log's line, which the operator reads into status."""

    def __init__(self, message: str, reason: str = "StartupFailed") -> None:
        super().__init__(message)
        self.reason = reason


class BindError(StartupError):
    """A listening port could not be opened; the message says which flag to change."""


@dataclasses.dataclass
class Endpoints:
    """What `bind` opened, so `drain` can close exactly that."""

    rest: RestApp
    http: asyncio.AbstractServer | None = None
    grpc: grpc.aio.Server | None = None
    security: Security | None = None

    async def close(self, grace_s: float = 0.0) -> None:
        if self.security is not None:
            self.security.close()
        if self.http is not None:
            self.http.close()
        self.rest.close()
        if self.grpc is not None:
            await self.grpc.stop(grace_s)


@dataclasses.dataclass
class Security:
    """The auth gate and the TLS files, and the timer that reloads both when their files change."""

    gate: Gate | None = None
    tls: TlsFiles | None = None
    watcher: asyncio.Task | None = None

    @classmethod
    def start(cls, settings: Settings, metrics: Metrics) -> Security:
        """Load keys and certificates now; StartupError naming the flag or file when they are wrong."""
        sec = cls()
        try:
            if settings.auth.enabled:
                sec.gate = Gate(settings.auth)
                sec.gate.start()
        except (ValueError, OSError) as exc:
            sec.close()
            raise StartupError(str(exc), AUTH_CONFIG_INVALID) from None
        try:
            if settings.tls is not None:
                sec.tls = TlsFiles(settings.tls)
        except (ValueError, OSError) as exc:
            sec.close()
            raise StartupError(str(exc), TLS_CERTIFICATE_INVALID) from None
        for part in (sec.gate, sec.tls):
            if part is not None:
                metrics.registry.register(part)
        if sec.gate is not None or sec.tls is not None:
            sec.watcher = asyncio.get_running_loop().create_task(sec._watch(settings.watch_interval_s))
        return sec

    async def _watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                if self.gate is not None:
                    self.gate.maybe_reload()
                if self.tls is not None:
                    self.tls.maybe_reload()
            except Exception:  # noqa: BLE001 - a reload bug must not stop the watch
                log.exception("checking the API key and TLS files failed")

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        if self.gate is not None:
            self.gate.close()


def inflight_budget(settings: Settings) -> ByteBudget:
    limit = settings.max_inflight_bytes or default_budget(cgroup_memory_limit())
    return ByteBudget(limit)


async def bind(settings: Settings, dp: DataPlane, metrics: Metrics, budget: ByteBudget) -> Endpoints:
    """Open the HTTP, gRPC and metrics ports; BindError (with the flag to change) if one is taken."""
    loop = asyncio.get_running_loop()
    sec = Security.start(settings, metrics)
    ends = Endpoints(RestApp(dp, max_body_size=settings.max_body_size, budget=budget, limits=settings.http_limits,
                             gate=sec.gate, require_client_cert=sec.tls is not None and sec.tls.mtls, tracer=dp.tracer),
                     security=sec)
    try:
        if settings.allow_http:
            try:
                ends.http = await loop.create_server(
                    ends.rest.protocol_factory, settings.http_address, settings.http_port,
                    reuse_address=True, backlog=2048, ssl=sec.tls.http_context() if sec.tls else None,
                )
            except OSError as exc:
                raise BindError(
                    f"cannot listen for HTTP on {settings.http_address}:{settings.http_port}: "
                    f"{exc.strerror or exc}. Stop the process using it or pick another port with --http-port."
                ) from None
            ends.rest.start()
        if settings.allow_grpc:
            ends.grpc = make_server(dp, max_message_size=settings.max_body_size, budget=budget, gate=sec.gate, tracer=dp.tracer)
            target = f"{settings.grpc_address}:{settings.grpc_port}"
            try:
                if sec.tls is not None:
                    bound = ends.grpc.add_secure_port(target, sec.tls.grpc_credentials())
                else:
                    bound = ends.grpc.add_insecure_port(target)
            except RuntimeError as exc:
                bound, why = 0, str(exc)
            else:
                why = "address in use"
            if not bound:
                ends.grpc = None
                raise BindError(
                    f"cannot listen for gRPC on {target}: {why}. "
                    "Stop the process using it or pick another port with --grpc-port."
                )
            await ends.grpc.start()
        if settings.allow_metrics:
            try:
                metrics.serve(settings.metrics_port, settings.metrics_address)
            except OSError as exc:
                raise BindError(
                    f"cannot serve metrics on {settings.metrics_address}:{settings.metrics_port}: "
                    f"{exc.strerror or exc}. Pick another port with --metrics-port."
                ) from None
    except BindError:
        await ends.close()
        raise
    log.info(
        "listening: HTTP%s %s, gRPC %s, metrics %s; request bytes in flight up to %d; auth %s",
        "S" if sec.tls else "",
        f"{settings.http_address}:{settings.http_port}" if ends.http else "off",
        f"{settings.grpc_address}:{settings.grpc_port}" if ends.grpc else "off",
        f"{settings.metrics_address}:{settings.metrics_port}" if settings.allow_metrics else "off",
        budget.limit,
        _auth_summary(settings) + (", mTLS" if sec.tls is not None and sec.tls.mtls else ""),
    )
    return ends


def _auth_summary(settings: Settings) -> str:
    a = settings.auth
    parts = (["API keys"] if a.api_keys is not None else []) + (["ServiceAccount tokens"] if a.token_review else [])
    return " + ".join(parts) if parts else "off"


async def load(settings: Settings, registry: Registry, stop: asyncio.Event, monitoring: Monitoring | None = None) -> int:
    """Load and warm up every model, then wait for `stop`; the exit code so far."""
    loop = asyncio.get_running_loop()
    loading = loop.create_task(
        registry.load_all(
            LoadOptions(
                runtime=settings.runtime,
                default_max_batch_size=settings.default_max_batch_size,
                max_queue_size=settings.max_queue_size,
                default_timeout_s=settings.request_timeout_s,
                inline_threshold_s=settings.inline_threshold_s,
                inline_turn_budget_s=settings.inline_turn_budget_s,
                thread_switch_interval_s=settings.thread_switch_interval_s,
            )
        )
    )
    stopper = loop.create_task(stop.wait())
    await asyncio.wait({loading, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not loading.done():
        loading.cancel()
        return 0
    code = 0
    failed = [f"{m.name}/{m.version}: {m.reason}" for m in registry.all() if not m.ready]
    failed += [f"{n}: {r}" for n, r in registry.failed.items()]
    if failed and settings.exit_on_error:
        log.error(
            "exiting: %d model(s) failed to load (start with --exit-on-error=false to serve the rest):\n  %s",
            len(failed), "\n  ".join(failed),
        )
        if settings.termination_log is not None:
            write_termination_log(settings.termination_log, failure_line(registry))
        return 1
    if monitoring is not None:
        try:
            monitoring.attach([m for m in registry.all() if m.ready])
        except ReferenceInvalid as exc:
            log.error("exiting: %s", exc)
            if settings.termination_log is not None:
                write_termination_log(settings.termination_log, f"MonitoringReferenceInvalid: {exc}")
            return 1
    if failed:
        log.warning("serving without %d model(s) that failed to load; the server reports not ready", len(failed))
    else:
        log.info("server ready: %d model version(s)", len(registry.all()))
    await stopper
    return code


async def drain(settings: Settings, dp: DataPlane, registry: Registry, ends: Endpoints, quiet: bool) -> None:
    """Readiness off at once, let in-flight requests finish (up to the exit timeout), then close."""
    dp.draining = True
    deadline = time.monotonic() + settings.exit_timeout_s
    if not quiet:
        log.info("shutting down: readiness is now false; waiting for %d in-flight request(s) (up to %.0f s)",
                 dp.inflight, settings.exit_timeout_s)
    # An HTTP response is written just after the data plane is done with it: wait for both.
    while (dp.inflight > 0 or ends.rest.busy()) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    if dp.inflight:
        log.warning("exit timeout reached with %d request(s) still in flight", dp.inflight)
    await ends.close(max(0.0, min(1.0, deadline - time.monotonic())))
    await registry.stop()


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; the process exit code."""
    loop = asyncio.get_running_loop()
    metrics = Metrics()
    registry = Registry(metrics)
    registry.discover(settings.model_repository)
    if not registry.models and not registry.failed:
        log.warning("model repository %s holds no model folders", settings.model_repository)
    budget = inflight_budget(settings)
    metrics.budget = budget
    dp = DataPlane(registry, metrics, make_tracer(settings.tracing))
    monitoring = start_monitoring(settings, dp, metrics, registry)
    mirror = start_mirror(settings, dp, metrics, registry)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    ends = await bind(settings, dp, metrics, budget)
    code = await load(settings, registry, stop, monitoring)
    await drain(settings, dp, registry, ends, quiet=code != 0)
    if monitoring is not None:
        monitoring.close()
    if mirror is not None:
        await mirror.close()
    if dp.tracer is not None:
        await stop_tracer(dp.tracer)
    log.info("stopped")
    return code


def start_monitoring(settings: Settings, dp: DataPlane, metrics: Metrics, registry: Registry) -> Monitoring | None:
    """With --monitoring: the hub (the drain on this event loop, capture writer) wired to the data plane and /metrics."""
    cfg = settings.monitoring
    if not cfg.enabled:
        return None
    reference = load_reference(cfg.reference) if cfg.reference is not None else None
    hub = Monitoring(cfg, reference, asyncio.get_running_loop())
    dp.monitoring = hub
    metrics.registry.register(MonitoringCollector(hub, lambda: [m for m in registry.all() if m.ready]))
    log.info("monitoring on: sample rate %g, window %d, reference %s, capture %s", cfg.sample_rate, cfg.window,
             cfg.reference or f"frozen from the first {cfg.reference_size} sampled requests of each model",
             cfg.capture_dir or cfg.capture_uri or "off")
    return hub


def start_mirror(settings: Settings, dp: DataPlane, metrics: Metrics, registry: Registry) -> Mirror | None:
    """With --mirror-to: the queue and senders that compare a sample of answers with the reference's."""
    cfg = settings.mirror
    if not cfg.enabled:
        return None
    tls = settings.tls
    context = None
    if tls is not None and cfg.url.startswith("https://"):  # stable serves with the same Secret
        context = client_context(tls.cert_file, tls.key_file, tls.client_ca_file or tls.cert_file.parent / "ca.crt")
    mirror = Mirror(cfg, ssl_context=context)
    mirror.start()
    dp.mirror = mirror
    metrics.registry.register(MirrorCollector(mirror, lambda: sorted({m.name for m in registry.all()})))
    log.info("mirroring %g of answered requests to %s, comparing by %s (agree at %g)", cfg.sample_rate, cfg.url,
             cfg.metric, cfg.threshold)
    return mirror


async def stop_tracer(tracer: Tracer, timeout_s: float = 5.0) -> None:
    """Flush the spans still queued, but never let an unreachable collector hold the exit."""
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, tracer.shutdown), timeout_s)
    except asyncio.TimeoutError:
        log.warning("tracing: spans not exported within %.0f s of shutdown were dropped", timeout_s)


def failure_line(registry: Registry) -> str:
    """One line for the orchestrator, `<Reason>: <why>`, of the first model that failed to
    load (the operator reads the reason into the ModelService's Ready condition)."""
    for name, why in sorted(registry.failed.items()):
        return f"ModelLoadFailed: model {name!r}: {why}"
    for m in registry.all():
        if not m.ready:
            return f"{m.failure or 'ModelLoadFailed'}: {m.reason}"
    return "ModelLoadFailed: no model was loaded"


def write_termination_log(path: Path, line: str) -> None:
    """Best effort: outside a pod the file may not be writable; the log has the line too."""
    try:
        path.write_text(" ".join(line.split())[:4000] + "\n")
    except OSError as exc:
        log.warning("cannot write the termination log %s: %s", path, exc)
