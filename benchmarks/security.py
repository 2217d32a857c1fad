"""What authentication and TLS add to a request's latency at batch 1, against the same server
with both off, measured side by side in one run (docs/security.md, "Cost").

    .venv/bin/python benchmarks/security.py                 # API keys, TLS, TLS + API key
    .venv/bin/python benchmarks/security.py --tokens        # also ServiceAccount tokens (starts the dev plane)

One server process per configuration, all started at once on loopback, with the same small
model (samples.mlp, one thread). The client keeps one connection per server (HTTP: http.client,
keep-alive, TLS when on; gRPC: tritonclient) and times rounds of requests to each server in
turn, so load on the machine hits every configuration alike. A token is reviewed once by the
real kube-apiserver of the dev plane; every later request is a cache hit, which is what this
measures. Prints p50 per configuration and the difference to "off"; --json writes the figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "server_image"))
sys.path.insert(0, str(REPO / "tests" / "server"))

KEY = "bench-api-key-5b0c1d"


def _free_ports(n):
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Server:
    def __init__(self, name, repo, args, workdir):
        self.name = name
        self.http_port, self.grpc_port, self.metrics_port = _free_ports(3)
        self.tls = "--tls-dir" in args
        self.header = None
        self.log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - open while the server runs
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelship_server", "--model-repository", str(repo),
             "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
             "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
             "--metrics-port", str(self.metrics_port), "--intra-op-threads", "1", *args],
            stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def _connect(server, ca):
    if server.tls:
        return http.client.HTTPSConnection("127.0.0.1", server.http_port, timeout=30,
                                           context=ssl.create_default_context(cafile=str(ca)))
    return http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)


def _wait(server, ca, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise SystemExit(f"server {server.name} exited; its log: {server.log.name}")
        try:
            c = _connect(server, ca)
            c.request("GET", "/v2/health/ready")
            if c.getresponse().status == 200:
                c.close()
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server {server.name} not ready in {timeout} s")


def _body():
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    return json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64],
                                   "data": x.ravel().tolist()}]}).encode()


def _http_round(conn, header, n, body):
    headers = {"Content-Type": "application/json"}
    if header:
        headers["Authorization"] = header
    out = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request("POST", "/v2/models/mlp/infer", body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        out.append(time.perf_counter() - t)
        if r.status != 200:
            raise SystemExit(f"HTTP {r.status}")
    return out


def _grpc_round(client, inputs, header, n):
    headers = {"authorization": header} if header else None
    out = []
    for _ in range(n):
        t = time.perf_counter()
        client.infer("mlp", inputs, headers=headers)
        out.append(time.perf_counter() - t)
    return out


def _plane_token(workdir):
    """Start the dev plane; (plane, reviewer args, a caller's token)."""
    from modelship.devcluster.plane import ControlPlane
    from modelship.devcluster.toolchain import ensure_binaries

    plane = ControlPlane(workdir / "plane", ensure_binaries(print), progress=print, die_with_parent=True)
    plane.up()
    env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}

    def kubectl(*args):
        return subprocess.run([str(plane.bin_dir / "kubectl"), *args], env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    kubectl("create", "namespace", "bench")
    kubectl("-n", "bench", "create", "serviceaccount", "reviewer")
    kubectl("-n", "bench", "create", "serviceaccount", "caller")
    kubectl("create", "clusterrolebinding", "bench-reviewer", "--clusterrole=system:auth-delegator",
            "--serviceaccount=bench:reviewer")
    (workdir / "reviewer-token").write_text(kubectl("-n", "bench", "create", "token", "reviewer", "--duration=1h"))
    import yaml

    entry = yaml.safe_load(plane.kubeconfig.read_text())["clusters"][0]["cluster"]
    ca = entry.get("certificate-authority")
    if ca is None:
        import base64

        (workdir / "kube-ca.crt").write_bytes(base64.b64decode(entry["certificate-authority-data"]))
        ca = str(workdir / "kube-ca.crt")
    args = ["--auth-token-review", "true", "--auth-audiences", "bench", "--auth-cache-ttl", "3600",
            "--auth-kube-api", plane.server, "--auth-kube-token-file", str(workdir / "reviewer-token"),
            "--auth-kube-ca-file", ca]
    caller = kubectl("-n", "bench", "create", "token", "caller", "--audience=bench", "--duration=1h")
    return plane, args, caller


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=20, help="rounds over all configurations (default 20)")
    p.add_argument("--per-round", type=int, default=100, help="requests per configuration per round (default 100)")
    p.add_argument("--tokens", action="store_true", help="also ServiceAccount tokens (starts the dev plane, ~15 s)")
    p.add_argument("--json", type=Path, default=None, help="write the figures there")
    args = p.parse_args(argv)

    import tritonclient.grpc as grpcclient
    from certs import Authority

    from modelship_server import samples

    workdir = Path(tempfile.mkdtemp(prefix="modelship-bench-security-"))
    servers, plane = [], None
    try:
        repo = workdir / "repo"
        samples.write_model(repo, "mlp", samples.mlp(), "max_batch_size: 0\n")
        ca = Authority()
        tls_dir = ca.write_secret(workdir / "tls")
        (workdir / "keys").write_text(KEY + "\n")
        configs = [("off", [], None), ("api-key", ["--auth-api-keys", str(workdir / "keys")], f"Bearer {KEY}"),
                   ("tls", ["--tls-dir", str(tls_dir)], None),
                   ("tls+api-key", ["--tls-dir", str(tls_dir), "--auth-api-keys", str(workdir / "keys")], f"Bearer {KEY}")]
        if args.tokens:
            print("starting the dev plane for TokenReview ...", flush=True)
            plane, review_args, caller = _plane_token(workdir)
            configs.append(("token (cached)", review_args, f"Bearer {caller}"))
        for name, extra, header in configs:
            s = Server(name, repo, extra, workdir)
            s.header = header
            servers.append(s)
        print(f"starting {len(servers)} servers ...", flush=True)
        for s in servers:
            _wait(s, tls_dir / "ca.crt")
        body = _body()
        conns = {s.name: _connect(s, tls_dir / "ca.crt") for s in servers}
        grpcs = {}
        for s in servers:
            if s.tls:
                grpcs[s.name] = grpcclient.InferenceServerClient(f"localhost:{s.grpc_port}", ssl=True,
                                                                 root_certificates=str(tls_dir / "ca.crt"))
            else:
                grpcs[s.name] = grpcclient.InferenceServerClient(f"127.0.0.1:{s.grpc_port}")
        x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
        inp = grpcclient.InferInput("INPUT0", [1, 64], "FP32")
        inp.set_data_from_numpy(x)
        lat = {(s.name, proto): [] for s in servers for proto in ("http", "grpc")}
        for s in servers:  # warm-up (and the one TokenReview of the token case)
            _http_round(conns[s.name], s.header, 50, body)
            _grpc_round(grpcs[s.name], [inp], s.header, 50)
        print(f"measuring {args.rounds} rounds x {args.per_round} requests per configuration and protocol ...",
              flush=True)
        for r in range(args.rounds):
            for s in servers:
                lat[(s.name, "http")] += _http_round(conns[s.name], s.header, args.per_round, body)
                lat[(s.name, "grpc")] += _grpc_round(grpcs[s.name], [inp], s.header, args.per_round)
            if (r + 1) % 5 == 0:
                print(f"  round {r + 1}/{args.rounds}", flush=True)
        results = {}
        print(f"\n{'configuration':<16} {'protocol':<8} {'p50 ms':>8} {'vs off ms':>10} {'p90 ms':>8}")
        for proto in ("http", "grpc"):
            base = statistics.median(lat[("off", proto)]) * 1e3
            for s in servers:
                v = sorted(lat[(s.name, proto)])
                p50, p90 = statistics.median(v) * 1e3, v[int(len(v) * 0.9)] * 1e3
                results[f"{s.name}/{proto}"] = {"p50_ms": round(p50, 4), "p90_ms": round(p90, 4),
                                                "added_p50_ms": round(p50 - base, 4), "requests": len(v)}
                print(f"{s.name:<16} {proto:<8} {p50:>8.3f} {p50 - base:>+10.3f} {p90:>8.3f}")
        if args.json:
            args.json.write_text(json.dumps({"command": "benchmarks/security.py " + " ".join(argv or sys.argv[1:]),
                                             "cpus": os.cpu_count(), "load_1m": os.getloadavg()[0],
                                             "results": results}, indent=2) + "\n")
        for c in conns.values():
            c.close()
        for g in grpcs.values():
            g.close()
    finally:
        for s in servers:
            s.stop()
        if plane is not None:
            plane.down(quiet=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
