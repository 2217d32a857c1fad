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

from .budget import ByteBudget, cgroup_memory_limit, default_budget
from .dataplane import DataPlane
from .metrics import Metrics
from .protocol.grpc import make_server
from .protocol.rest import RestApp
from .registry import LoadOptions, Registry
from .settings import Settings

log = logging.getLogger("modelship_server")


class BindError(Exception):
    """A listening port could not be opened; the message says which flag to change."""


@dataclasses.dataclass
class Endpoints:
    """What `bind` opened, so `drain` can close exactly that."""

    rest: RestApp
    http: asyncio.AbstractServer | None = None
    grpc: grpc.aio.Server | None = None

    async def close(self, grace_s: float = 0.0) -> None:
        if self.http is not None:
            self.http.close()
        self.rest.close()
        if self.grpc is not None:
            await self.grpc.stop(grace_s)


def inflight_budget(settings: Settings) -> ByteBudget:
    limit = settings.max_inflight_bytes or default_budget(cgroup_memory_limit())
    return ByteBudget(limit)


async def bind(settings: Settings, dp: DataPlane, metrics: Metrics, budget: ByteBudget) -> Endpoints:
    """Open the HTTP, gRPC and metrics ports; BindError (with the flag to change) if one is taken."""
    loop = asyncio.get_running_loop()
    ends = Endpoints(RestApp(dp, max_body_size=settings.max_body_size, budget=budget, limits=settings.http_limits))
    try:
        if settings.allow_http:
            try:
                ends.http = await loop.create_server(
                    ends.rest.protocol_factory, settings.http_address, settings.http_port,
                    reuse_address=True, backlog=2048,
                )
            except OSError as exc:
                raise BindError(
                    f"cannot listen for HTTP on {settings.http_address}:{settings.http_port}: "
                    f"{exc.strerror or exc}. Stop the process using it or pick another port with --http-port."
                ) from None
            ends.rest.start()
        if settings.allow_grpc:
            ends.grpc = make_server(dp, max_message_size=settings.max_body_size, budget=budget)
            target = f"{settings.grpc_address}:{settings.grpc_port}"
            try:
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
        "listening: HTTP %s, gRPC %s, metrics %s; request bytes in flight up to %d",
        f"{settings.http_address}:{settings.http_port}" if ends.http else "off",
        f"{settings.grpc_address}:{settings.grpc_port}" if ends.grpc else "off",
        f"{settings.metrics_address}:{settings.metrics_port}" if settings.allow_metrics else "off",
        budget.limit,
    )
    return ends


async def load(settings: Settings, registry: Registry, stop: asyncio.Event) -> int:
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
    dp = DataPlane(registry, metrics)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    ends = await bind(settings, dp, metrics, budget)
    code = await load(settings, registry, stop)
    await drain(settings, dp, registry, ends, quiet=code != 0)
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
