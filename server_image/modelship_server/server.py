"""The server's life: bind ports, load and warm up models, serve, drain on SIGTERM.

Ports are bound before models load so that a port clash fails at once and the
liveness endpoint answers while a large model is still loading; readiness
turns true only when every model is warmed up. On SIGTERM (or SIGINT)
readiness turns false at once, requests already in flight complete, and the
process exits when none are left or when --exit-timeout-secs has passed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

from .dataplane import DataPlane
from .metrics import Metrics
from .protocol.grpc import make_server
from .protocol.rest import RestApp
from .registry import LoadOptions, Registry
from .settings import Settings

log = logging.getLogger("modelship_server")


class BindError(Exception):
    """A listening port could not be opened; the message says which flag to change."""


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; the process exit code."""
    loop = asyncio.get_running_loop()
    metrics = Metrics()
    registry = Registry(metrics)
    registry.discover(settings.model_repository)
    if not registry.models and not registry.failed:
        log.warning("model repository %s holds no model folders", settings.model_repository)
    dp = DataPlane(registry, metrics)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    http_server = grpc_server = None
    rest = RestApp(dp, max_body_size=settings.max_body_size)
    if settings.allow_http:
        try:
            http_server = await loop.create_server(
                rest.protocol_factory, settings.http_address, settings.http_port,
                reuse_address=True, backlog=2048,
            )
        except OSError as exc:
            raise BindError(
                f"cannot listen for HTTP on {settings.http_address}:{settings.http_port}: {exc.strerror or exc}. "
                "Stop the process using it or pick another port with --http-port."
            ) from None
    if settings.allow_grpc:
        grpc_server = make_server(dp, max_message_size=settings.max_body_size)
        target = f"{settings.grpc_address}:{settings.grpc_port}"
        try:
            bound = grpc_server.add_insecure_port(target)
        except RuntimeError as exc:
            bound, why = 0, str(exc)
        else:
            why = "address in use"
        if not bound:
            if http_server:
                http_server.close()
            raise BindError(
                f"cannot listen for gRPC on {target}: {why}. "
                "Stop the process using it or pick another port with --grpc-port."
            )
        await grpc_server.start()
    if settings.allow_metrics:
        try:
            metrics.serve(settings.metrics_port, settings.metrics_address)
        except OSError as exc:
            if http_server:
                http_server.close()
            if grpc_server:
                await grpc_server.stop(0)
            raise BindError(
                f"cannot serve metrics on {settings.metrics_address}:{settings.metrics_port}: "
                f"{exc.strerror or exc}. Pick another port with --metrics-port."
            ) from None
    log.info(
        "listening: HTTP %s, gRPC %s, metrics %s",
        f"{settings.http_address}:{settings.http_port}" if http_server else "off",
        f"{settings.grpc_address}:{settings.grpc_port}" if grpc_server else "off",
        f"{settings.metrics_address}:{settings.metrics_port}" if settings.allow_metrics else "off",
    )

    load = loop.create_task(
        registry.load_all(
            LoadOptions(
                runtime=settings.runtime,
                default_max_batch_size=settings.default_max_batch_size,
                max_queue_size=settings.max_queue_size,
                default_timeout_s=settings.request_timeout_s,
                inline_threshold_s=settings.inline_threshold_s,
            )
        )
    )
    stopper = loop.create_task(stop.wait())
    await asyncio.wait({load, stopper}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if load.done():
        failed = [f"{m.name}/{m.version}: {m.reason}" for m in registry.all() if not m.ready]
        failed += [f"{n}: {r}" for n, r in registry.failed.items()]
        if failed and settings.exit_on_error:
            log.error(
                "exiting: %d model(s) failed to load (start with --exit-on-error=false to serve the rest):\n  %s",
                len(failed), "\n  ".join(failed),
            )
            if settings.termination_log is not None:
                write_termination_log(settings.termination_log, failure_line(registry))
            stop.set()
            code = 1
        elif failed:
            log.warning("serving without %d model(s) that failed to load; the server reports not ready", len(failed))
        if not failed:
            log.info("server ready: %d model version(s)", len(registry.all()))
        await stopper
    else:
        load.cancel()

    # Drain: readiness off at once, let in-flight requests finish, then close.
    dp.draining = True
    deadline = time.monotonic() + settings.exit_timeout_s
    if code == 0:
        log.info("shutting down: readiness is now false; waiting for %d in-flight request(s) (up to %.0f s)",
                 dp.inflight, settings.exit_timeout_s)
    # An HTTP response is written just after the data plane is done with it: wait for both.
    while (dp.inflight > 0 or rest.busy()) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    if dp.inflight:
        log.warning("exit timeout reached with %d request(s) still in flight", dp.inflight)
    if http_server:
        http_server.close()
        for conn in list(rest.connections):
            if conn.transport is not None:
                conn.transport.close()
    if grpc_server:
        await grpc_server.stop(max(0.0, min(1.0, deadline - time.monotonic())))
    await registry.stop()
    log.info("stopped")
    return code


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
