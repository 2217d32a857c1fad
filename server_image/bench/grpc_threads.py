"""Where a gRPC ModelInfer's server CPU goes by thread, under ghz: the echo floor, our server, others.

    .venv/bin/python server_image/bench/grpc_threads.py [--seconds 3] [--rounds 3] \
        [--other-pythonpath /tmp/base/server_image ...] [--env NAME=VALUE ...]

ghz (8 workers over one connection, batch 1, the `mlp` sample, on CPU 1) against, alternately per
round: grpc_path.py's bare grpc.aio echo server (a canned ModelInferResponse: grpcio's own floor
for these message sizes), this checkout's server, each `--other-pythonpath` checkout's server, and
this checkout's server with each `--env` set (e.g. `GRPC_EXPERIMENTS=` for gRPC's own defaults).
Servers run on CPU 0. For each: ServerLive and ModelInfer per second, server CPU per answered call
(utime + stime from /proc), context switches per call, and per thread (the event loop's, grpc.aio's
poller, gRPC core's event_engine threads) its CPU and switches per call. Counts cover ghz's 1 s
warm-up too, so per-call figures are scaled by the measured window's share (seconds / (seconds + 1)).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ghz_compare as g  # noqa: E402 - sibling scripts, not a package
from grpc_path import build_repo, record_responses, start_echo, start_server  # noqa: E402

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def threads(pid: int) -> dict[str, tuple[str, int, int]]:
    """Per thread of `pid`: its name, CPU ticks (utime + stime) and context switches so far."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        switches = sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)
        out[tid] = (stat[stat.index("(") + 1:stat.rindex(")")], int(fields[11]) + int(fields[12]), switches)
    return out


def measure(ghz, protoset, request: Path, url: str, method: str, pid: int, seconds: float) -> dict:
    before = threads(pid)
    r = g.run_ghz(ghz, protoset, request, url, 8, seconds, "127.0.0.1:1", method, [pid])
    after = threads(pid)
    calls = r["count"] * (seconds + 1) / seconds  # the warm-up's calls, at the same rate
    per_thread = []
    for tid, (name, cpu, sw) in sorted(after.items()):
        _, cpu0, sw0 = before.get(tid, (name, 0, 0))
        if sw - sw0 > 10:
            per_thread.append((name, (cpu - cpu0) * TICK_MS / calls, (sw - sw0) / calls))
    return {"per_s": r["ok_per_s"], "cpu_ms": r["server_cpu_ms_per_ok"], "errors": r["errors"],
            "switches": sum(s for _, _, s in per_thread), "threads": per_thread}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="measured window per level (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--other-pythonpath", action="append", default=[], help="another checkout's server_image")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="also this checkout's server with this variable set")
    args = p.parse_args(argv)
    ghz = g.ghz_binary()
    root = Path(tempfile.mkdtemp(prefix="grpc-threads-"))
    repo, _ = build_repo(root)
    protoset = g.write_protoset(root / "inference.protoset")
    infer = g.write_request(root / "mlp.bin", "mlp", 1)
    empty = root / "empty.bin"
    empty.write_bytes(b"")
    canned = record_responses(repo, root)
    servers: list[tuple[str, str | None, dict]] = [("this", None, {})]
    servers += [(f"other{i}", path, {}) for i, path in enumerate(args.other_pythonpath)]
    servers += [(e, None, dict([e.split("=", 1)])) for e in args.env]
    cpu: dict[str, list[float]] = {}
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    for r in range(args.rounds):
        order = [("echo", None, {})] + servers
        for name, path, env in order if r % 2 == 0 else order[::-1]:
            saved = dict(os.environ)
            os.environ.update(env)
            try:
                if name == "echo":
                    proc, url = start_echo(canned, "uvloop")
                else:
                    proc, _, url = start_server(repo, path)
            finally:
                os.environ.clear()
                os.environ.update(saved)
            try:
                for method, request in (("live", empty), ("infer", infer)):
                    res = measure(ghz, protoset, request, url, g.LIVE if method == "live" else g.METHOD,
                                  proc.proc.pid, args.seconds)
                    cpu.setdefault(f"{name} {method}", []).append(res["cpu_ms"])
                    each = "; ".join(f"{n} {c:.3f} ms {s:.1f} sw" for n, c, s in res["threads"])
                    print(f"round {r} {name:>12} {method:5}: {res['per_s']:7.0f}/s, server CPU {res['cpu_ms']:.3f} "
                          f"ms/call, {res['switches']:.1f} switches/call, errors {res['errors'] or 0} [{each}]",
                          flush=True)
            finally:
                proc.stop()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    for key, values in cpu.items():
        print(f"median server CPU per call, {key}: {sorted(values)[len(values) // 2]:.3f} ms ({len(values)} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
