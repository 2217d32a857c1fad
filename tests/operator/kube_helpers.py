"""Helpers for the cluster tests: the operator as a real subprocess, waiting, reading objects."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
from typing import Any, Callable

import waiting

REPO = pathlib.Path(__file__).resolve().parents[2]
CHILD_KINDS = ["deployments", "services", "configmaps", "poddisruptionbudgets", "networkpolicies"]
MANAGED = "app.kubernetes.io/managed-by=modelship"


class OperatorProcess:
    """`modelship run` in its own process group; stopped by PID, even when a test fails."""

    def __init__(self, kubeconfig: pathlib.Path, log_path: pathlib.Path, *, extra_env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.kubeconfig = kubeconfig
        self.args = args
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.extra_env}
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        log.write(f"\n===== start {self.starts} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelship.cli", "run", "--liveness", "off", "--resync-seconds", "30", *self.args],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
        )
        log.close()
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: the crash case, no cleanup runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    """The operator tests' spelling of `waiting.wait_for` (predicate first, `what` by keyword)."""
    return waiting.wait_for(what, predicate, timeout, interval)


def get(cluster: Any, *args: str) -> dict[str, Any]:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def condition(msvc: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (msvc.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return None


def is_ready(msvc: dict[str, Any]) -> bool:
    ready = condition(msvc, "Ready")
    gen = msvc["metadata"]["generation"]
    return bool(
        ready and ready["status"] == "True" and ready.get("observedGeneration") == gen
        and msvc["status"].get("observedGeneration") == gen
    )


def apply(cluster: Any, manifest: dict[str, Any], namespace: str) -> None:
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def children(cluster: Any, namespace: str, name: str) -> dict[str, list[dict[str, Any]]]:
    """Every object of every child kind labelled for ModelService `name`."""
    out = {}
    for kind in CHILD_KINDS:
        items = get(cluster, kind, "-n", namespace, "-l", f"modelship.dev/modelservice={name}")["items"]
        out[kind] = items
    return out


def resource_versions(cluster: Any, namespace: str) -> dict[str, str]:
    """kind/name -> resourceVersion of the ModelServices, their children and pods."""
    versions = {}
    for kind in ["modelservices", *CHILD_KINDS, "pods", "replicasets"]:
        selector = [] if kind == "modelservices" else ["-l", "modelship.dev/modelservice"]
        for item in get(cluster, kind, "-n", namespace, *selector)["items"]:
            versions[f"{kind}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    return versions
