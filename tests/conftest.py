"""Shared fixtures: the real local control plane, started once per test session.

The plane is the same machinery as `modelship dev-cluster up`: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok built from Go modules, on free loopback ports,
in a temporary state directory. Teardown stops every process it started, pass or fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelship.devcluster.nodes import NodeShape
from modelship.devcluster.plane import ControlPlane
from modelship.devcluster.toolchain import ensure_binaries


@dataclass
class Cluster:
    """What a test needs of the running plane: kubeconfig, binaries, and a few helpers."""

    plane: ControlPlane

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    @property
    def server(self) -> str:
        return self.plane.server

    @property
    def bin_dir(self) -> Path:
        return self.plane.bin_dir

    @property
    def audit_log(self) -> Path:
        return self.plane.audit_log

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess that talks to this plane (kubectl, helm, the operator)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig),
                "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self._run("kubectl", args, check, input, timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self._run("helm", args, check, None, timeout)

    def wait_established(self, crd: str, timeout: float = 60) -> None:
        """Wait until a CRD is Established. `kubectl wait --for=condition=Established` fails at
        once ("accessor error: <nil>") when the CRD has no status yet, so poll instead."""
        from waiting import wait_for

        jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
        wait_for(f"crd/{crd} Established",
                 lambda: self.kubectl("get", f"crd/{crd}", "-o", f"jsonpath={jsonpath}",
                                      check=False).stdout.strip() == "True",
                 timeout=timeout)

    def add_node(self, shape: NodeShape) -> dict[str, Any]:
        return self.plane.add_node(shape)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.plane.api(method, path, body)

    def _run(self, tool: str, args: tuple[str, ...], check: bool, input: str | None,
             timeout: float) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.bin_dir / tool), *args], env=self.env, input=input,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    def progress(line: str) -> None:
        print(f"[dev-cluster] {line}", file=sys.stderr, flush=True)

    binaries = ensure_binaries(progress)
    # Short CrashLoopBackOff delays (1s doubling to 4s) keep the node agent's tests fast.
    plane = ControlPlane(tmp_path_factory.mktemp("dev-cluster"), binaries, progress=progress, die_with_parent=True,
                         backoff_initial=1.0, backoff_cap=4.0)
    try:
        plane.up()
        yield Cluster(plane)
    finally:
        plane.down(quiet=True)
