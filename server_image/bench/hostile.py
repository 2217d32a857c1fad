"""modelship-server under hostile and heavy traffic: the three benchmarks of issue 13.

    .venv/bin/python server_image/bench/hostile.py fuzz --http 5000 --grpc 2000 [--seed 1]
    .venv/bin/python server_image/bench/hostile.py mix --seconds 60
    .venv/bin/python server_image/bench/hostile.py overload --phase-seconds 10
    .venv/bin/python server_image/bench/hostile.py shed --other-pythonpath /tmp/old/server_image

`fuzz` sends generated requests (tests/server/fuzzing.py: HTTP JSON and binary
alternately, then gRPC) and counts answers a client should never get (5xx,
INTERNAL, UNKNOWN), server crashes and RSS growth. `mix` runs every hostile
client of tests/server/hostile_clients.py at once and reports liveness latency,
good-client success and RSS against the byte budget. `overload` measures the
capacity of a compute-bound model, then offers 1x, 2x and 4x that rate open-loop
and 1x again, and reports goodput per phase, how every refusal was answered and
how long goodput took to recover.

The server is confined to CPU 0 and the clients to CPU 1 (`taskset`, when the
machine has two CPUs or more), so the figures say what the server does, not
how the cores were shared. Each run takes under ~2 minutes. Every server and
client process started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from modelship_server import samples  # noqa: E402
from modelship_server.readiness import wait_until_ok  # noqa: E402
from tests.server.conftest import free_ports  # noqa: E402
from tests.server.procinfo import cpu_seconds, peak_rss_bytes, rss_bytes  # noqa: E402

SERVER_CPU, CLIENT_CPUS = 0, None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pin_client() -> str:
    global CLIENT_CPUS
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "not pinned (one CPU)"
    CLIENT_CPUS = set(cpus[1:])
    os.sched_setaffinity(0, CLIENT_CPUS)
    return f"server on CPU {cpus[0]}, clients on CPUs {sorted(CLIENT_CPUS)}"


class Server:
    def __init__(self, repo: Path, *args: str) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        cmd = [sys.executable, "-m", "modelship_server", "--model-repository", str(repo),
               "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
               "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
               "--metrics-port", str(self.metrics_port), *args]
        if CLIENT_CPUS is not None:
            cmd = ["taskset", "-c", str(SERVER_CPU), *cmd]
        self.log_path = Path(tempfile.mkdtemp()) / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        wait_until_ok(f"http://127.0.0.1:{self.http_port}/v2/health/ready", self.proc, timeout=120,
                      what="server", on_exit=lambda: self.log_path.read_text()[-2000:], interval=0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# -- fuzz ------------------------------------------------------------------------------------


def run_fuzz(args) -> dict:
    import grpc
    from hypothesis import HealthCheck, given, seed, settings

    from tests.server import fuzzing

    repo = fuzzing.write_repository(Path(tempfile.mkdtemp()))
    srv = Server(repo, "--http-max-body-size", "1Mi")
    out: dict = {"seed": args.seed}
    try:
        pid = srv.proc.pid
        rss0 = rss_bytes(pid)
        probe = fuzzing.HttpProbe(srv.http_port)
        counts: dict[str, int] = {}
        bad: list[str] = []

        def tally(key: str, problem: str | None, request: bytes) -> None:
            counts[key] = counts.get(key, 0) + 1
            if problem is not None:
                counts["bad"] = counts.get("bad", 0) + 1
                if len(bad) < 10:
                    bad.append(f"{problem} <- {request[:300]!r}")

        common = dict(derandomize=False, database=None, deadline=None, suppress_health_check=list(HealthCheck))
        half = args.http // 2

        @seed(args.seed)
        @settings(max_examples=max(1, half), **common)
        @given(fuzzing.infer_json())
        def http_json(case):
            model, body, headers = case
            status, payload, got = probe.post(f"/v2/models/{model}/infer", body, headers)
            tally(f"http {status}", fuzzing.http_verdict(status, payload, got, body), body)

        @seed(args.seed)
        @settings(max_examples=max(1, args.http - half), **common)
        @given(fuzzing.infer_binary())
        def http_binary(case):
            model, body, headers = case
            status, payload, got = probe.post(f"/v2/models/{model}/infer", body, headers)
            tally(f"http {status}", fuzzing.http_verdict(status, payload, got, body), body)

        channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
        call = fuzzing.grpc_call(channel)

        @seed(args.seed)
        @settings(max_examples=max(1, args.grpc), **common)
        @given(fuzzing.grpc_request())
        def grpc_case(raw):
            try:
                call(raw, timeout=60)
                code = "OK"
            except grpc.RpcError as err:
                code = err.code().name
            problem = None if code in {c.name for c in fuzzing.GRPC_OK} else code
            if code == "DEADLINE_EXCEEDED" and b"timeout" in raw:
                problem = None  # the request's own `timeout` parameter
            tally(f"grpc {code}", problem, raw)

        t0 = time.monotonic()
        for name, fn, n in (("http json", http_json, half), ("http binary", http_binary, args.http - half),
                            ("grpc", grpc_case, args.grpc)):
            if n <= 0:
                continue
            t = time.monotonic()
            fn()
            log(f"{name}: done in {time.monotonic() - t:.0f} s")
        channel.close()
        probe.close()
        out.update(
            seconds=round(time.monotonic() - t0, 1),
            cases={"http": sum(v for k, v in counts.items() if k.startswith("http ")),
                   "grpc": sum(v for k, v in counts.items() if k.startswith("grpc "))},
            answers=dict(sorted(counts.items())),
            never_allowed=counts.get("bad", 0),
            examples_of_never_allowed=bad,
            server_alive=srv.proc.poll() is None,
            tracebacks_in_log=srv.log_path.read_text(errors="replace").count("Traceback"),
            rss_start_mib=round(rss0 / 2**20, 1),
            rss_end_mib=round(rss_bytes(pid) / 2**20, 1),
            rss_growth_mib=round((rss_bytes(pid) - rss0) / 2**20, 1),
            server_cpu_s=round(cpu_seconds(pid), 1),
        )
    finally:
        srv.stop()
    return out


# -- hostile mix ---------------------------------------------------------------------------------


def run_mix(args) -> dict:
    from tests.server import hostile_clients

    repo = hostile_clients.write_repository(Path(tempfile.mkdtemp()))
    srv = Server(repo, "--max-inflight-bytes", f"{args.budget_mib}Mi", "--http-header-timeout", "2",
                 "--http-idle-timeout", "5")
    try:
        pid = srv.proc.pid
        base = hostile_clients.run_mix(srv.http_port, srv.grpc_port, args.baseline_seconds, attacks=False)
        rss0 = rss_bytes(pid)
        res = hostile_clients.run_mix(srv.http_port, srv.grpc_port, args.seconds, rss_of=lambda: rss_bytes(pid),
                                      slowloris_connections=args.slowloris, pipeliners=4, floods=4)
        lat = res.probe_latencies
        ok_after = srv.proc.poll() is None
        return {
            "seconds": args.seconds,
            "budget_mib": args.budget_mib,
            "baseline_probe_without_attacks": {
                "seconds": args.baseline_seconds, "answered": len(base.probe_latencies),
                "p50_ms": round(percentile(base.probe_latencies, 0.5) * 1e3, 2),
                "p99_ms": round(percentile(base.probe_latencies, 0.99) * 1e3, 2)},
            "probe": {"answered": len(lat), "failed": len(res.probe_failures),
                      "p50_ms": round(percentile(lat, 0.5) * 1e3, 2), "p99_ms": round(percentile(lat, 0.99) * 1e3, 2),
                      "max_ms": round(max(lat) * 1e3, 2) if lat else None},
            "good_client": {"ok": res.good_ok, "failed": len(res.good_failures),
                            "success_pct": round(100 * res.good_ok / max(1, res.good_ok + len(res.good_failures)), 2),
                            "failures": res.good_failures[:5]},
            "attacks": res.attacks,
            "rss_start_mib": round(rss0 / 2**20, 1),
            "rss_peak_mib": round(max(res.rss_samples) / 2**20, 1),
            "rss_peak_growth_mib": round((max(res.rss_samples) - rss0) / 2**20, 1),
            "vmhwm_mib": round(peak_rss_bytes(pid) / 2**20, 1),
            "server_alive": ok_after,
        }
    finally:
        srv.stop()


# -- overload ---------------------------------------------------------------------------------

OVERLOAD_MODEL = dict(size=256, rows=256, repeats=12)
OVERLOAD_CONFIG = """
max_batch_size: 1
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""


def _request_bytes(port: int) -> bytes:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 256], "data": [0.5] * 256}]}).encode()
    return (b"POST /v2/models/work/infer HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (port, len(body)) + body)


async def _one(pool: list, port: int, request: bytes, record: list, t_send: float) -> None:
    if pool:
        reader, writer = pool.pop()
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        retry = False
        for line in head.split(b"\r\n"):
            low = line.lower()
            if low.startswith(b"content-length:"):
                length = int(line.split(b":")[1])
            elif low.startswith(b"retry-after:"):
                retry = True
        await reader.readexactly(length)
        status = int(head[9:12])
        record.append((t_send, time.monotonic(), status, retry))
        if b"connection: close" in head.lower():
            writer.close()
        else:
            pool.append((reader, writer))
    except (OSError, asyncio.IncompleteReadError) as exc:
        record.append((t_send, time.monotonic(), f"error {type(exc).__name__}", False))
        writer.close()


async def _closed_loop(port: int, clients: int, seconds: float) -> float:
    request = _request_bytes(port)
    done = 0
    end = time.monotonic() + seconds

    async def client():
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        rec: list = []
        while time.monotonic() < end:
            await _one([(reader, writer)], port, request, rec, time.monotonic())
        writer.close()
        done += sum(1 for r in rec if r[2] == 200)

    await asyncio.gather(*(client() for _ in range(clients)))
    return done / seconds


async def _open_loop(port: int, phases: list[tuple[str, float, float]]) -> list:
    """Send at each phase's rate (requests/s) for its seconds, open-loop; every answer recorded."""
    request = _request_bytes(port)
    pool: list = []
    record: list = []
    tasks = set()
    for name, rate, seconds in phases:
        start = time.monotonic()
        n = 0
        while True:
            now = time.monotonic()
            if now - start >= seconds:
                break
            due = int((now - start) * rate)
            while n < due:
                t = asyncio.ensure_future(_one(pool, port, request, record, now))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                n += 1
            await asyncio.sleep(0.002)
        record.append((time.monotonic(), time.monotonic(), f"phase end {name}", False))
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    for _, w in pool:
        w.close()
    return record


def run_overload(args) -> dict:
    repo = Path(tempfile.mkdtemp())
    samples.write_model(repo, "work", samples.slow(**OVERLOAD_MODEL), OVERLOAD_CONFIG)
    srv = Server(repo, "--max-queue-size", str(args.queue))
    try:
        capacity = asyncio.run(_closed_loop(srv.http_port, 8, args.capacity_seconds))
        log(f"capacity (8 closed-loop clients): {capacity:.1f} req/s")
        p = args.phase_seconds
        phases = [("1x", capacity, p), ("2x", 2 * capacity, p), ("4x", 4 * capacity, p), ("back to 1x", capacity, p)]
        t0 = time.monotonic()
        record = asyncio.run(_open_loop(srv.http_port, phases))
        out = {"capacity_rps": round(capacity, 1), "queue": args.queue, "phase_seconds": p, "phases": {}}
        bounds = []
        t = t0
        for name, rate, seconds in phases:
            bounds.append((name, rate, t, t + seconds))
            t += seconds
        answers = [r for r in record if not str(r[2]).startswith("phase end")]
        for name, rate, a, b in bounds:
            sent = [r for r in answers if a <= r[0] < b]
            ok = [r for r in sent if r[2] == 200]
            refused = [r for r in sent if r[2] != 200]
            out["phases"][name] = {
                "offered_rps": round(rate, 1),
                "goodput_rps": round(len(ok) / (b - a), 1),
                "goodput_vs_capacity": round(len(ok) / (b - a) / capacity, 3),
                "refused": len(refused),
                "refused_as_503_with_retry_after": sum(1 for r in refused if r[2] == 503 and r[3]),
                "other_answers": sorted({str(r[2]) for r in refused if not (r[2] == 503 and r[3])}),
                "ok_latency_p50_ms": round(percentile([r[1] - r[0] for r in ok], 0.5) * 1e3, 1),
                "ok_latency_p99_ms": round(percentile([r[1] - r[0] for r in ok], 0.99) * 1e3, 1),
            }
        # Recovery: after the 4x phase ends, the first 1 s window whose goodput is >= 90% of capacity.
        name, rate, a, b = bounds[-1]
        recovery = None
        step = 0.25
        w = a
        while w + 1.0 <= b:
            n = sum(1 for r in answers if r[2] == 200 and w <= r[1] < w + 1.0)
            if n >= 0.9 * capacity:
                recovery = round(w + 1.0 - a, 2)
                break
            w += step
        out["recovery_s"] = recovery
        # The machine is shared: measure capacity again and judge 2x/4x against the larger of the two.
        after = asyncio.run(_closed_loop(srv.http_port, 8, args.capacity_seconds))
        reference = max(capacity, after)
        out["capacity_after_rps"] = round(after, 1)
        for ph in out["phases"].values():
            ph["goodput_vs_best_capacity"] = round(ph["goodput_rps"] / reference, 3)
        out["server_alive"] = srv.proc.poll() is None
        return out
    finally:
        srv.stop()


async def _closed_loop_counts(port: int, clients: int, seconds: float, request: bytes) -> dict:
    """Closed-loop clients, each resending at once whatever the answer; counts by status."""
    counts: dict[str, int] = {}
    end = time.monotonic() + seconds

    async def client():
        pool: list = []
        rec: list = []
        while time.monotonic() < end:
            await _one(pool, port, request, rec, time.monotonic())
        for _, w in pool:
            w.close()
        for r in rec:
            counts[str(r[2])] = counts.get(str(r[2]), 0) + 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return counts


def run_shed(args) -> dict:
    """Many clients with large JSON bodies against a small queue: OK/s with this server, and with
    another checkout's (`--other-pythonpath`), run alternately."""
    repo = Path(tempfile.mkdtemp())
    samples.write_model(repo, "image", samples.image_classifier(), "max_batch_size: 8\ndynamic_batching { }\n")
    body = json.dumps({"inputs": [{"name": "IMAGE", "datatype": "FP32", "shape": [1, 3, 48, 192],
                                   "data": [0.25] * (3 * 48 * 192)}]}).encode()
    servers = [("this branch", "")]
    if args.other_pythonpath:
        servers.append(("other", args.other_pythonpath))
    out: dict = {"clients": args.clients, "queue": args.queue, "body_bytes": len(body), "rounds": []}
    for r in range(args.rounds):
        for name, pythonpath in servers:
            old = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = pythonpath
            try:
                srv = Server(repo, "--max-queue-size", str(args.queue))
            finally:
                if old is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = old
            try:
                request = (b"POST /v2/models/image/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                           % len(body) + body)
                counts = asyncio.run(_closed_loop_counts(srv.http_port, args.clients, args.seconds, request))
            finally:
                srv.stop()
            ok = counts.get("200", 0)
            out["rounds"].append({"server": name, "round": r + 1, "ok_per_s": round(ok / args.seconds, 1),
                                  "answers": counts})
            log(f"{name}: {ok / args.seconds:.1f} OK/s {counts}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("fuzz", help="generated requests: never a 5xx/INTERNAL/UNKNOWN, RSS growth")
    f.add_argument("--http", type=int, default=5000, help="HTTP cases, half JSON and half binary (default 5000)")
    f.add_argument("--grpc", type=int, default=2000, help="gRPC cases (default 2000)")
    f.add_argument("--seed", type=int, default=1)
    m = sub.add_parser("mix", help="every hostile client at once: liveness latency, good-client success, RSS")
    m.add_argument("--seconds", type=float, default=60)
    m.add_argument("--baseline-seconds", type=float, default=15, help="probe and good client alone first")
    m.add_argument("--budget-mib", type=int, default=256, help="--max-inflight-bytes of the server (default 256)")
    m.add_argument("--slowloris", type=int, default=200, help="slowloris connections (default 200)")
    o = sub.add_parser("overload", help="goodput at 1x, 2x and 4x capacity, refusals, recovery")
    o.add_argument("--phase-seconds", type=float, default=10)
    o.add_argument("--capacity-seconds", type=float, default=5)
    o.add_argument("--queue", type=int, default=32, help="--max-queue-size of the server (default 32)")
    sh = sub.add_parser("shed", help="goodput with many clients and large JSON bodies (shedding before decoding)")
    sh.add_argument("--clients", type=int, default=200)
    sh.add_argument("--queue", type=int, default=8, help="--max-queue-size (default 8)")
    sh.add_argument("--seconds", type=float, default=8)
    sh.add_argument("--rounds", type=int, default=2)
    sh.add_argument("--other-pythonpath", default="", help="PYTHONPATH of another checkout's server_image to compare")
    for sp in (f, m, o, sh):
        sp.add_argument("--json", type=Path, help="also write the result here")
        sp.add_argument("--no-pin", action="store_true", help="let the server and the clients share every CPU")
    args = p.parse_args(argv)
    pinning = "not pinned (--no-pin)" if args.no_pin else pin_client()
    log(pinning)
    run = {"fuzz": run_fuzz, "mix": run_mix, "overload": run_overload, "shed": run_shed}[args.what]
    result = {"benchmark": args.what, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "pinning": pinning,
              "load_average_before": os.getloadavg()[0], **run(args)}
    result["load_average_after"] = os.getloadavg()[0]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
