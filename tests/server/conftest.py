"""Fixtures that run the real `modelship-server` process on loopback ports.

Every server started here is stopped in a `finally`, by the PID we started,
whatever the test's outcome.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from modelship_server.readiness import free_ports, wait_until_ok


class ServerProcess:
    """A running server: its ports, URLs, process and log file."""

    def __init__(self, repo: Path, extra_args: list[str], log_path: Path) -> None:
        self.repo = repo
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.log_path = log_path
        self.args = [
            sys.executable, "-m", "modelship_server",
            "--model-repository", str(repo),
            "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port), *extra_args,
        ]
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def wait_ready(self, timeout: float = 60.0) -> None:
        try:
            wait_until_ok(f"http://{self.http_url}/v2/health/ready", self.proc, timeout=timeout, what="server",
                          on_exit=self.log, interval=0.05)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}:\n{self.log()}") from None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self) -> int | None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
            return self.proc.returncode
        finally:
            self._log.close()


def _server_factory(tmp_path_factory):
    """Yield `start(repo, *args, wait=True)`; every server it started is stopped afterwards."""
    started: list[ServerProcess] = []

    def start(repo: Path, *args: str, wait: bool = True) -> ServerProcess:
        log = tmp_path_factory.mktemp("serverlog") / "server.log"
        server = ServerProcess(repo, list(args), log)
        started.append(server)
        if wait:
            server.wait_ready()
        return server

    try:
        yield start
    finally:
        for s in started:
            s.stop()


@pytest.fixture
def start_server(tmp_path_factory):
    """Start servers with `start_server(repo, *args, wait=True)`; all are stopped at teardown."""
    yield from _server_factory(tmp_path_factory)


@pytest.fixture(scope="module")
def module_server_factory(tmp_path_factory):
    """Like start_server, for servers shared by a whole test module."""
    yield from _server_factory(tmp_path_factory)


def has_gpu() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    return os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia/version")
