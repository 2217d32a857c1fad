"""Hostile clients, all at once, against one server, while a probe and a good client watch.

Used by tests/server/test_hostile_mix.py (a few seconds, asserting outcomes) and
by server_image/bench/hostile.py (longer, reporting latencies and memory).
Loopback only; every socket and thread started here is closed and joined.

- slowloris: connections that send one header byte at a time and never finish;
- pipeliners: 1 MiB requests pipelined on one connection, responses never read;
- huge BYTES: 16 MiB of empty strings declared as shape [1, 1];
- flood: many threads sending small requests (good and bad) to another model;
- probe: a fresh connection to /v2/health/live every 50 ms (as a kubelet does);
- good client: tritonclient, HTTP and gRPC, checking every answer's values.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import struct
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from modelship_server import samples

HUGE_BYTES_MIB = 16


def write_repository(repo):
    samples.write_model(repo, "identity", samples.identity(), "max_batch_size: 8\n")
    samples.write_model(repo, "strings", samples.strings(), "max_batch_size: 8\n")
    samples.write_model(repo, "multi", samples.multi_io(), "max_batch_size: 8\n")
    return repo


@dataclasses.dataclass
class MixResult:
    probe_latencies: list[float] = dataclasses.field(default_factory=list)
    probe_failures: list[str] = dataclasses.field(default_factory=list)
    good_ok: int = 0
    good_failures: list[str] = dataclasses.field(default_factory=list)
    attacks: dict[str, int] = dataclasses.field(default_factory=dict)
    rss_samples: list[int] = dataclasses.field(default_factory=list)

    def count(self, what: str, n: int = 1) -> None:
        self.attacks[what] = self.attacks.get(what, 0) + n


def _connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _binary(name: str, datatype: str, shape: list[int], blob: bytes, model: str) -> bytes:
    header = json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    return (b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: %d\r\n"
            b"Content-Length: %d\r\n\r\n" % (model.encode(), len(header), len(header) + len(blob)) + header + blob)


def slowloris(port: int, stop: threading.Event, res: MixResult, connections: int = 100) -> None:
    socks: list[socket.socket | None] = [None] * connections
    try:
        while not stop.is_set():
            for i in range(connections):
                s = socks[i]
                try:
                    if s is None:
                        s = socks[i] = _connect(port)
                        s.sendall(b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\n")
                        res.count("slowloris connections")
                    s.sendall(b"X")
                except OSError:
                    res.count("slowloris closed by server")
                    if s is not None:
                        s.close()
                    socks[i] = None
            stop.wait(0.5)
    finally:
        for s in socks:
            if s is not None:
                s.close()


def pipeliner(port: int, stop: threading.Event, res: MixResult) -> None:
    row = np.ones((1, 256 * 1024), np.float32).tobytes()
    one = _binary("x", "FP32", [1, 256 * 1024], row, "identity")
    s = None
    try:
        while not stop.is_set():
            try:
                if s is None:
                    s = _connect(port, timeout=0.5)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
                s.sendall(one)
                res.count("pipelined MiB sent")
            except socket.timeout:
                pass  # the server stopped reading us: backpressure; keep the connection and push again
            except OSError:
                res.count("pipeliner closed by server")
                if s is not None:
                    s.close()
                s = None
                stop.wait(0.2)
    finally:
        if s is not None:
            s.close()


def huge_bytes(port: int, stop: threading.Event, res: MixResult) -> None:
    blob = struct.pack("<I", 0) * (HUGE_BYTES_MIB * 1024 * 1024 // 4)
    one = _binary("text", "BYTES", [1, 1], blob, "strings")
    while not stop.is_set():
        try:
            with _connect(port, timeout=30) as s:
                s.sendall(one)
                reply = s.recv(4096)
            res.count("huge BYTES answered " + reply[9:12].decode(errors="replace"))
        except OSError:
            res.count("huge BYTES connection errors")
            stop.wait(0.2)


def flood(port: int, stop: threading.Event, res: MixResult) -> None:
    good = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
                                  {"name": "k", "datatype": "INT64", "shape": [1, 1], "data": [2]}]}).encode()
    bad = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1]}]}'
    import http.client

    conn = None
    i = 0
    while not stop.is_set():
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/v2/models/multi/infer", body=good if i % 2 else bad)
            r = conn.getresponse()
            r.read()
            res.count(f"flood answered {r.status}")
            i += 1
        except (OSError, http.client.HTTPException):
            res.count("flood connection errors")
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


def probe(port: int, stop: threading.Event, res: MixResult, interval: float = 0.05) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            with _connect(port, timeout=10) as s:
                s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                reply = b""
                while b"\r\n\r\n" not in reply:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
            if reply.startswith(b"HTTP/1.1 200"):
                res.probe_latencies.append(time.perf_counter() - t0)
            else:
                res.probe_failures.append(reply[:100].decode(errors="replace") or "closed without an answer")
        except OSError as exc:
            res.probe_failures.append(repr(exc))
        stop.wait(interval)


def good_client(http_url: str, grpc_url: str, stop: threading.Event, res: MixResult) -> None:
    hc = httpclient.InferenceServerClient(http_url, network_timeout=30, connection_timeout=30)
    gc = grpcclient.InferenceServerClient(grpc_url)
    rng = np.random.default_rng(0)
    try:
        i = 0
        while not stop.is_set():
            x = rng.standard_normal((1, 16)).astype(np.float32)
            try:
                if i % 2:
                    inp = httpclient.InferInput("x", [1, 16], "FP32")
                    inp.set_data_from_numpy(x, binary_data=True)
                    y = hc.infer("identity", [inp]).as_numpy("y")
                else:
                    inp = grpcclient.InferInput("x", [1, 16], "FP32")
                    inp.set_data_from_numpy(x)
                    y = gc.infer("identity", [inp], client_timeout=30).as_numpy("y")
                if np.array_equal(x, y):
                    res.good_ok += 1
                else:
                    res.good_failures.append("wrong values")
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and asserted on
                res.good_failures.append(f"{'http' if i % 2 else 'grpc'}: {exc}"[:300])
            i += 1
            stop.wait(0.01)
    finally:
        hc.close()
        gc.close()


def run_mix(http_port: int, grpc_port: int, seconds: float, *, rss_of=None, slowloris_connections: int = 100,
            pipeliners: int = 4, floods: int = 4, attacks: bool = True) -> MixResult:
    """Every attack at once for `seconds`; the probe and good client run throughout.

    With attacks=False only the probe and the good client run: the baseline.
    """
    res = MixResult()
    stop = threading.Event()
    threads = [
        threading.Thread(target=probe, args=(http_port, stop, res)),
        threading.Thread(target=good_client, args=(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", stop, res)),
    ]
    if attacks:
        threads += [
            threading.Thread(target=slowloris, args=(http_port, stop, res, slowloris_connections)),
            threading.Thread(target=huge_bytes, args=(http_port, stop, res)),
            *[threading.Thread(target=pipeliner, args=(http_port, stop, res)) for _ in range(pipeliners)],
            *[threading.Thread(target=flood, args=(http_port, stop, res)) for _ in range(floods)],
        ]
    for t in threads:
        t.daemon = True
        t.start()
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            if rss_of is not None:
                res.rss_samples.append(rss_of())
            time.sleep(0.25)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    return res
