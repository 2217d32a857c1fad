"""The capacity model: how many requests per second one replica serves within the SLO.

The autoscaler divides the observed request rate by this figure, so it is measured where it
will hold: the real `modelship-server` process serving the chosen variant with the session
settings it will be served with, driven over gRPC by closed-loop clients sending batch-1
requests, as online traffic arrives. Each batching configuration gets a concurrency sweep
(doubling until the latency percentile crosses the SLO or throughput stops growing); the
capacity is the highest throughput whose percentile stays within the SLO. Without an SLO the
sweep's knee stands in: the first level after which throughput grew by less than 10 %.

`pick` and `knee` are pure, so the decision is table-tested; `measure` is the I/O around them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Literal, TextIO

import onnx
from pydantic import BaseModel

from .candidates import Recipe
from ..readiness import free_ports
from .inputs import Feed

Percentile = Literal["p50", "p90", "p95", "p99"]
PLATEAU = 1.10  # a level that adds less than 10 % throughput is past the knee


class Level(BaseModel):
    """One concurrency level of the sweep."""

    concurrency: int
    requests_per_second: float
    latency_ms: dict[str, float]  # p50/p90/p95/p99
    errors: int = 0


class BatchingConfig(BaseModel):
    max_batch_size: int  # 0: the model does not batch
    max_queue_delay_microseconds: int
    dynamic: bool


class Sweep(BaseModel):
    config: BatchingConfig
    levels: list[Level]


class Capacity(BaseModel):
    """The decision: sustained rate at the SLO, and the batching and concurrency that reach it."""

    requests_per_second: float
    percentile: Percentile
    latency_ms: float
    slo_ms: float | None
    max_batch_size: int
    dynamic_batching: bool  # False: requests run as they come, never stacked by the server
    max_queue_delay_microseconds: int
    concurrency: int
    within_slo: bool  # False: even one client at a time misses the SLO
    sweeps: list[Sweep] = []


def knee(levels: list[Level]) -> Level:
    """The last level that still grew throughput by at least PLATEAU over the one before."""
    best = levels[0]
    for level in levels[1:]:
        if level.errors or level.requests_per_second < best.requests_per_second * PLATEAU:
            break
        best = level
    return best


def pick(sweeps: list[Sweep], slo_ms: float | None, percentile: Percentile) -> Capacity:
    """The configuration and level with the highest throughput that meets the SLO.

    No SLO: each sweep's knee competes on throughput. No level meeting the SLO anywhere: the
    lowest-latency level is reported with within_slo False, so the operator can say so.
    """
    candidates: list[tuple[float, float, Sweep, Level]] = []
    for sweep in sweeps:
        usable = [lv for lv in sweep.levels if not lv.errors]
        if not usable:
            continue
        if slo_ms is None:
            chosen = [knee(usable)]
        else:
            chosen = [lv for lv in usable if lv.latency_ms[percentile] <= slo_ms]
        for level in chosen:
            candidates.append((level.requests_per_second, -level.latency_ms[percentile], sweep, level))
    within = bool(candidates)
    if not candidates:
        for sweep in sweeps:
            for level in sweep.levels:
                if not level.errors:
                    candidates.append((-level.latency_ms[percentile], level.requests_per_second, sweep, level))
    if not candidates:
        raise ValueError("no level of any sweep completed without errors")
    _, _, sweep, level = max(candidates, key=lambda c: (c[0], c[1]))
    return Capacity(requests_per_second=round(level.requests_per_second, 2), percentile=percentile,
                    latency_ms=round(level.latency_ms[percentile], 3), slo_ms=slo_ms,
                    max_batch_size=sweep.config.max_batch_size, dynamic_batching=sweep.config.dynamic,
                    max_queue_delay_microseconds=sweep.config.max_queue_delay_microseconds,
                    concurrency=level.concurrency, within_slo=within, sweeps=sweeps)


def batchable(model: onnx.ModelProto) -> bool:
    """Every input and output has a free first dimension, so requests can be stacked."""
    def free_first(value_info: onnx.ValueInfoProto) -> bool:
        dims = value_info.type.tensor_type.shape.dim
        return len(dims) > 0 and (dims[0].HasField("dim_param") or dims[0].dim_value <= 0)

    return all(free_first(v) for v in list(model.graph.input) + list(model.graph.output))


def configs(model: onnx.ModelProto, max_batch_size: int, slo_ms: float | None) -> list[BatchingConfig]:
    """What to try: no server-side batching, then dynamic batching up to 8 and up to the cap.

    The queue delay is a tenth of the SLO (bounded to 100 us .. 2 ms): long enough to gather a
    batch under load, short enough that waiting never eats the latency budget.
    """
    if not batchable(model):
        return [BatchingConfig(max_batch_size=0, max_queue_delay_microseconds=0, dynamic=False)]
    delay = 1000 if slo_ms is None else int(min(2000, max(100, slo_ms * 1000 / 10)))
    sizes = sorted({min(8, max_batch_size), max_batch_size} - {0, 1})
    out = [BatchingConfig(max_batch_size=max(1, max_batch_size), max_queue_delay_microseconds=0, dynamic=False)]
    out += [BatchingConfig(max_batch_size=size, max_queue_delay_microseconds=delay, dynamic=True) for size in sizes]
    return out


def config_pbtxt(config: BatchingConfig) -> str:
    text = f"max_batch_size: {config.max_batch_size}\n"
    if config.dynamic:
        text += f"dynamic_batching {{ max_queue_delay_microseconds: {config.max_queue_delay_microseconds} }}\n"
    return text


def warmup_pbtxt(feed: Feed, config: BatchingConfig, model_dir: Path) -> str:
    """The sweep's request as the server's warm-up sample (written under model_dir/warmup/):
    the server warms up on what it will be sent, not on 1-sized stand-ins a model may refuse."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from modelship_server.triton_warmup import WARMUP_FOLDER, sample_for

    sample, files = sample_for(feed, config.max_batch_size, name="capacity request")
    (model_dir / WARMUP_FOLDER).mkdir(exist_ok=True)
    for name, data in files.items():
        (model_dir / WARMUP_FOLDER / name).write_bytes(data)
    return text_format.MessageToString(mc.ModelConfig(model_warmup=[sample]))


class _Server:
    """A modelship-server child process on loopback serving one model; always stopped."""

    def __init__(self, model_file: Path, config: BatchingConfig, recipe: Recipe, workdir: Path, feed: Feed) -> None:
        repo = workdir / "repository"
        shutil.rmtree(repo, ignore_errors=True)
        version = repo / "model" / "1"
        version.mkdir(parents=True)
        os.symlink(model_file.resolve(), version / "model.onnx")
        (repo / "model" / "config.pbtxt").write_text(config_pbtxt(config) + warmup_pbtxt(feed, config, repo / "model"))
        self.http, self.grpc, metrics = free_ports(3)
        providers = ",".join(p.removesuffix("ExecutionProvider").lower() for p in recipe.providers)
        args = [sys.executable, "-m", "modelship_server", "--model-repository", str(repo),
                "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--allow-metrics", "false",
                "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(metrics),
                "--intra-op-threads", str(recipe.intra_op_threads),
                "--graph-optimization-level", recipe.graph_optimization_level,
                "--execution-providers", providers, "--log-level", "warning"]
        self.log = workdir / "server.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> None:
        from modelship_server.readiness import wait_until_ok

        wait_until_ok(f"http://127.0.0.1:{self.http}/v2/health/ready", self.proc, timeout=timeout,
                      what="modelship-server", on_exit=lambda: self.log.read_text(errors="replace")[-500:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def measure(model_file: Path, recipe: Recipe, *, feed: Feed, slo_ms: float | None,
            percentile: Percentile = "p95",
            max_batch_size: int = 32, budget_seconds: float = 120.0, level_seconds: float = 1.5,
            max_concurrency: int = 64, progress: TextIO = sys.stderr,
            clock: Callable[[], float] = time.monotonic) -> Capacity:
    """Sweep each batching configuration on a real server and pick the capacity. Every
    request is `feed`: one sample of the inputs the search used (the dataset's or the declared
    shapes), so the sweep times the requests the service will get."""
    from modelship_server.bench import _Target, run_level_async

    start = clock()
    model = onnx.load(str(model_file), load_external_data=False)
    sweeps: list[Sweep] = []
    with tempfile.TemporaryDirectory(prefix="modelship-capacity-") as tmp:
        for config in configs(model, max_batch_size, slo_ms):
            if sweeps and clock() - start > budget_seconds:
                print(f"[capacity] budget of {budget_seconds:g}s spent; not trying {config}", file=progress)
                break
            server = _Server(model_file, config, recipe, Path(tmp), feed)
            levels: list[Level] = []
            try:
                server.wait_ready()
                target = _Target(f"127.0.0.1:{server.grpc}", "grpc", "model", "", 1, {}, "random", True,
                                 feed=feed)
                concurrency = 1
                while concurrency <= max_concurrency:
                    r = run_level_async(target, concurrency, warmup_s=0.3, measure_s=level_seconds)
                    level = Level(concurrency=concurrency, requests_per_second=round(r.throughput_req_s, 2),
                                  errors=r.errors,
                                  latency_ms={"p50": r.latency_p50_ms, "p90": r.latency_p90_ms,
                                              "p95": r.latency_p95_ms, "p99": r.latency_p99_ms})
                    levels.append(level)
                    print(f"[capacity] batch<={config.max_batch_size} {'dynamic' if config.dynamic else 'off':7} "
                          f"c={concurrency:<3} {level.requests_per_second:9.1f} req/s  "
                          f"{percentile} {level.latency_ms[percentile]:8.3f} ms", file=progress, flush=True)
                    over_slo = slo_ms is not None and level.latency_ms[percentile] > slo_ms
                    flat = len(levels) > 1 and level.requests_per_second < levels[-2].requests_per_second * 1.02
                    if level.errors or over_slo or flat or clock() - start > budget_seconds:
                        break
                    concurrency *= 2
            finally:
                server.stop()
            sweeps.append(Sweep(config=config, levels=levels))
    return pick(sweeps, slo_ms, percentile)
