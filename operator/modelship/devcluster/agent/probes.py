"""Startup, liveness and readiness probes, and the preStop hook, run for real.

httpGet and tcpSocket go to the pod's own loopback address (the host a kubelet would use is
the pod IP); exec runs inside the container's mount namespace (nsenter) with its environment;
grpc calls the standard grpc.health.v1 service. Thresholds, periods,
initial delays and timeouts follow the kubelet's defaults and rules (`ProbeTracker`, pure).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass
class ProbeTracker:
    """Consecutive results against the thresholds of one probe; `result` is None until decided."""

    spec: Mapping[str, Any]
    started_at: float
    result: bool | None = None
    successes: int = 0
    failures: int = 0
    next_at: float = field(default=0.0)
    last_message: str = ""

    def __post_init__(self) -> None:
        self.next_at = self.started_at + self.initial_delay

    @property
    def initial_delay(self) -> float:
        return float(self.spec.get("initialDelaySeconds", 0))

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds", 1))

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, ok: bool, message: str = "", *, now: float) -> bool | None:
        """Add one result; the decided outcome (True/False) or None while undecided."""
        self.next_at = now + self.period
        self.last_message = message
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= int(self.spec.get("successThreshold", 1)):
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= int(self.spec.get("failureThreshold", 3)):
                self.result = False
        return self.result


def resolve_port(port: Any, ports: list[Mapping[str, Any]]) -> int:
    """A number, or the name of one of the container's ports."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for item in ports:
        if item.get("name") == port:
            return int(item["containerPort"])
    raise ValueError(f"port {port!r} is not a number nor the name of one of the container's ports")


def _unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


_UNVERIFIED = _unverified()


def check(handler: Mapping[str, Any], *, pod_ip: str, ports: list[Mapping[str, Any]], pid: int,
          env: Mapping[str, str], timeout: float) -> tuple[bool, str]:
    """Run one probe (or preStop handler); (success, message)."""
    try:
        if "httpGet" in handler:
            spec = handler["httpGet"]
            host, port = spec.get("host") or pod_ip, resolve_port(spec.get("port"), ports)
            connection: http.client.HTTPConnection
            if str(spec.get("scheme", "HTTP")).upper() == "HTTPS":
                # as the kubelet: TLS without checking the certificate (it has no CA to check it with)
                connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=_UNVERIFIED)
            else:
                connection = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                headers = {h["name"]: h["value"] for h in spec.get("httpHeaders") or []}
                headers.setdefault("User-Agent", "kube-probe/modelship-agent")
                connection.request("GET", spec.get("path") or "/", headers=headers)
                response = connection.getresponse()
                response.read()
            finally:
                connection.close()
            ok = 200 <= response.status < 400
            return ok, "" if ok else f"HTTP probe failed with statuscode: {response.status}"
        if "tcpSocket" in handler:
            spec = handler["tcpSocket"]
            with socket.create_connection((spec.get("host") or pod_ip, resolve_port(spec.get("port"), ports)),
                                          timeout=timeout):
                return True, ""
        if "exec" in handler:
            command = handler["exec"].get("command") or []
            result = subprocess.run(["nsenter", f"--target={pid}", "--mount", "--", *command], env=dict(env),
                                    capture_output=True, timeout=timeout, check=False)
            output = (result.stdout + result.stderr).decode(errors="replace").strip()[-500:]
            return result.returncode == 0, output or f"command exited with {result.returncode}"
        if "grpc" in handler:
            return _grpc(handler["grpc"], pod_ip, timeout)
        if "sleep" in handler:
            time.sleep(float(handler["sleep"].get("seconds", 0)))
            return True, ""
    except subprocess.TimeoutExpired:
        return False, f"command timed out after {timeout:g}s"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return False, f"unsupported handler {sorted(handler)}"


def _grpc(spec: Mapping[str, Any], pod_ip: str, timeout: float) -> tuple[bool, str]:
    """grpc.health.v1.Health/Check, its two one-field messages encoded by hand (no generated
    code needed): request field 1 = service name, response field 1 = status, SERVING = 1."""
    try:
        import grpc
    except ImportError:
        return False, "grpc probes need grpcio, which is not installed"
    service = spec.get("service", "").encode()
    request = (b"\x0a" + _varint(len(service)) + service) if service else b""
    with grpc.insecure_channel(f"{pod_ip}:{spec['port']}") as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            reply = check(request, timeout=timeout)
        except grpc.RpcError as exc:
            return False, f"gRPC health check failed: {exc.code()}"
    status = reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0
    return status == 1, "" if status == 1 else f"service not serving (status {status})"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
