"""A fault-injecting HTTP proxy between the operator and the real kube-apiserver.

Not a mock: every request it lets through reaches the real API server and every answer is the
server's, byte for byte. On the way it can, per rule and at a rate: answer with a status
instead (409, 429 with Retry-After, 5xx, as a Kubernetes Status body), reset the connection
before or after forwarding (the write happened, the answer is lost), stall until the client's
read timeout, answer a watch resume with the 410 Gone event the server sends for an expired
resourceVersion, and cut every open watch stream at once. It records every request it saw,
so a test can count writes per client (one proxy per operator replica).

The client side is plain HTTP on loopback (the operator gets a kubeconfig whose server is the
proxy, with its own ServiceAccount token); the upstream side is TLS to the API server,
verified with the plane's CA. One request per connection (`Connection: close`), so a
response is relayed as raw bytes until the server closes, chunked watch streams included.
Runs its own event loop in a thread; `stop()` closes every socket it opened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import re
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from typing import Any

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REASONS = {409: "Conflict", 410: "Gone", 429: "Too Many Requests", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclasses.dataclass
class Rule:
    """One fault. `fault`: "status" (answer `status`), "reset" (RST before forwarding),
    "reset-after" (forward, then RST instead of the answer), "stall" (hold `stall_seconds`,
    then RST), "gone" (a watch resume gets the 410 ERROR event). It applies to requests
    matching `methods`, `path` (a regex on the path) and `watch` (None: both), at `rate`."""

    fault: str
    rate: float = 1.0
    status: int = 500
    retry_after: float | None = None
    methods: frozenset[str] | None = None
    path: str | None = None
    watch: bool | None = None
    stall_seconds: float = 35.0

    @property
    def label(self) -> str:
        """How a request it hit is recorded: the status ("409") or the fault's name."""
        return str(self.status) if self.fault == "status" else self.fault

    def matches(self, method: str, path: str, watching: bool) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.watch is not None and self.watch != watching:
            return False
        return self.path is None or re.search(self.path, path) is not None


@dataclasses.dataclass(frozen=True)
class Seen:
    at: float  # time.time()
    method: str
    path: str
    query: str
    fault: str | None  # what the proxy did instead of (or after) forwarding (Rule.label); None: passed

    @property
    def write(self) -> bool:
        return self.method in WRITE_METHODS


class FaultProxy:
    def __init__(self, upstream: str, ca_pem: bytes, *, seed: int = 0) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream_host, self.upstream_port = parsed.hostname or "127.0.0.1", parsed.port or 443
        self._ssl = ssl.create_default_context(cadata=ca_pem.decode())
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self.rng = random.Random(seed)
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._watches: set[asyncio.StreamWriter] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._upstreams: set[asyncio.StreamWriter] = set()

    # --- control, from the test's thread --------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        ready = threading.Event()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._shutdown())
            self._loop.close()

        self._thread = threading.Thread(target=main, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self.url

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)
            self._thread = None

    def set_rules(self, *rules: Rule) -> None:
        with self._lock:
            self.rules = list(rules)

    def cut_watches(self) -> int:
        """Drop every open watch stream (as a network blip would); returns how many."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._cut(), self._loop)
        return future.result(10)

    def requests(self, since: float = 0.0) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.at >= since]

    # --- the proxy, on its own loop ---------------------------------------------------------

    async def _cut(self) -> int:
        watches = list(self._watches)
        for writer in watches:
            _reset(writer)
        return len(watches)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            _reset(writer)
        for upstream in list(self._upstreams):
            upstream.transport.abort()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if pending:  # every socket is gone: each relay ends on its own
            await asyncio.wait(pending, timeout=5)

    def _pick(self, method: str, path: str, watching: bool) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path, watching) and self.rng.random() < rule.rate:
                    return rule
        return None

    def _record(self, method: str, path: str, query: str, fault: str | None) -> None:
        with self._lock:
            self.seen.append(Seen(time.time(), method, path, query, fault))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = [tuple(line.split(":", 1)) for line in lines[1:] if ":" in line]
            length = next((int(v) for k, v in headers if k.strip().lower() == "content-length"), 0)
            body = await reader.readexactly(length) if length else b""
            split = urllib.parse.urlsplit(target)
            query = urllib.parse.parse_qs(split.query)
            watching = query.get("watch", [""])[0] in ("true", "1")
            rule = self._pick(method, split.path, watching)
            if rule is not None and rule.fault == "gone" and not (watching and query.get("resourceVersion")):
                rule = None  # only a resume can be too old
            self._record(method, split.path, split.query, rule.label if rule else None)
            if rule is not None and rule.fault != "reset-after":
                await self._inject(rule, writer)
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port, ssl=self._ssl, limit=1 << 20)
            self._upstreams.add(upstream_writer)
            kept = [(k, v) for k, v in headers if k.strip().lower() not in ("host", "connection", "keep-alive")]
            request = [f"{method} {target} HTTP/1.1", f"Host: {self.upstream_host}:{self.upstream_port}",
                       *(f"{k}:{v}" for k, v in kept), "Connection: close", "", ""]
            upstream_writer.write("\r\n".join(request).encode("latin-1") + body)
            await upstream_writer.drain()
            if rule is not None:  # reset-after: the server did the work, the client never hears
                await upstream_reader.read(1)
                _reset(writer)
                return
            response_head = await upstream_reader.readuntil(b"\r\n\r\n")
            response_lines = [line for line in response_head.decode("latin-1").split("\r\n")[:-2]
                              if not line.lower().startswith(("connection:", "keep-alive:"))]
            writer.write("\r\n".join([*response_lines, "Connection: close", "", ""]).encode("latin-1"))
            if watching:
                self._watches.add(writer)
            while True:
                chunk = await upstream_reader.read(65536)
                if not chunk or writer.is_closing():  # the server is done, or the client was cut
                    break
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, ValueError):
            pass
        finally:
            self._watches.discard(writer)
            self._writers.discard(writer)
            if upstream_writer is not None:
                self._upstreams.discard(upstream_writer)
                upstream_writer.transport.abort()  # no TLS goodbye: the request is over either way
            if not writer.is_closing():
                writer.close()

    async def _inject(self, rule: Rule, writer: asyncio.StreamWriter) -> None:
        if rule.fault == "reset":
            _reset(writer)
        elif rule.fault == "stall":
            await asyncio.sleep(rule.stall_seconds)
            _reset(writer)
        elif rule.fault == "gone":
            event = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                 "reason": "Expired", "code": 410,
                                                 "message": "too old resource version (fault proxy)"}}
            payload = json.dumps(event).encode() + b"\n"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(payload):x}\r\n".encode() + payload
                         + b"\r\n0\r\n\r\n")
            await writer.drain()
        else:
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": rule.status,
                      "reason": REASONS.get(rule.status, "Unknown"),
                      "message": f"injected by the fault proxy: {rule.status}"}
            payload = json.dumps(status).encode()
            extra = f"Retry-After: {rule.retry_after:g}\r\n" if rule.retry_after is not None else ""
            writer.write(f"HTTP/1.1 {rule.status} {REASONS.get(rule.status, 'Error')}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n{extra}"
                         "Connection: close\r\n\r\n".encode() + payload)
            await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed peer or a middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


def proxied_kubeconfig(kubeconfig: dict[str, Any], proxy_url: str) -> dict[str, Any]:
    """The same user and token, with the server replaced by the proxy (plain HTTP, loopback)."""
    config = json.loads(json.dumps(kubeconfig))
    for entry in config["clusters"]:
        entry["cluster"] = {"server": proxy_url}
    return config
