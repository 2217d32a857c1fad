"""The plane's own lifecycle and its bad-input messages: ports, toolchain, downloads, stale state."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelship.devcluster import toolchain
from modelship.devcluster.errors import DevClusterError
from modelship.devcluster.nodes import DEFAULT_NODES, NodeShape, node_manifest
from modelship.devcluster.plane import ControlPlane


def modelship(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelship.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_gpu_node_manifest_carries_capacity_labels_and_taint():
    node = node_manifest(NodeShape("g", gpus=2, gpu_product="NVIDIA-A100-SXM4-80GB", gpu_memory_mib=81920))
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "2"
    assert node["status"]["allocatable"] == node["status"]["capacity"]
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"


def test_cpu_node_has_no_gpu_and_no_taint():
    node = node_manifest(NodeShape("c"))
    assert not any(k.startswith("nvidia.com/") for k in node["status"]["capacity"])
    assert "taints" not in node["spec"]


def test_default_fleet_has_cpu_gpu_and_mig_nodes():
    capacities = [node_manifest(s)["status"]["capacity"] for s in DEFAULT_NODES]
    assert any("nvidia.com/gpu" not in c and not any("mig" in k for k in c) for c in capacities)
    assert any("nvidia.com/gpu" in c for c in capacities)
    assert any("nvidia.com/mig-1g.10gb" in c for c in capacities)


def test_cache_key_follows_pinned_version_and_go_sum(tmp_path: Path):
    module = tmp_path / "kwok"
    module.mkdir()
    (module / "go.mod").write_text("module x\n\nrequire (\n\tsigs.k8s.io/kwok v0.8.0\n)\n")
    (module / "go.sum").write_text("a\n")
    component = next(c for c in toolchain.COMPONENTS if c.module_dir == "kwok")
    first = toolchain.component_key(component, tmp_path)
    assert first.startswith("kwok-v0.8.0-")
    (module / "go.sum").write_text("b\n")
    assert toolchain.component_key(component, tmp_path) != first


def test_every_component_pins_a_version_in_the_repo():
    root = toolchain.tools_dir()
    for component in toolchain.COMPONENTS:
        assert toolchain.component_version(component, root).startswith("v"), component.module_dir
        assert (root / component.module_dir / "go.sum").is_file(), f"{component.module_dir}: go.sum must be committed"


def test_on_demand_tools_are_not_built_by_make_tools_or_the_plane():
    """ghz is for `make bench-ghz` only: a plain build (make tools, make demo, dev-cluster up)
    must not spend minutes compiling it, yet its cached path is known."""
    assert "ghz" not in toolchain.ALL_BINARIES
    assert {"kube-apiserver", "etcd", "kwok", "gofakes3"} <= set(toolchain.ALL_BINARIES)
    assert toolchain.binary_paths()["ghz"].name == "ghz"


def test_missing_go_toolchain_says_what_to_install(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MODELSHIP_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MODELSHIP_GO", "/nonexistent/go")
    with pytest.raises(DevClusterError, match="no Go toolchain on PATH.*Install Go"):
        toolchain.ensure_binaries(lambda _: None, only=("kubeconform",))


def test_failed_module_download_names_the_proxy(tmp_path: Path, monkeypatch):
    # An empty module cache and no network access to modules: the download must fail cleanly.
    monkeypatch.setenv("MODELSHIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GOMODCACHE", str(tmp_path / "gomod"))
    monkeypatch.setenv("GOPROXY", "off")
    monkeypatch.setenv("GOFLAGS", "-mod=mod")
    with pytest.raises(DevClusterError, match="a Go module download failed: check access to the module proxy"):
        toolchain.ensure_binaries(lambda _: None, only=("kubeconform",))


def test_port_in_use_is_refused_before_anything_starts(tmp_path: Path):
    binaries = toolchain.binary_paths()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        plane = ControlPlane(tmp_path, binaries, progress=lambda _: None)
        with pytest.raises(DevClusterError, match=f"port {port} on 127.0.0.1 is already in use"):
            plane.up(apiserver_port=port)
    assert plane.running() == []


def test_down_with_nothing_running_is_a_calm_no_op(tmp_path: Path):
    result = modelship("dev-cluster", "down", "--state-dir", str(tmp_path))
    assert result.returncode == 0
    assert "nothing to stop" in result.stdout


def test_status_and_kubeconfig_without_a_plane_say_how_to_start_one(tmp_path: Path):
    status = modelship("dev-cluster", "status", "--state-dir", str(tmp_path))
    assert status.returncode == 3 and "modelship dev-cluster up" in status.stdout
    kubeconfig = modelship("dev-cluster", "kubeconfig", "--state-dir", str(tmp_path))
    assert kubeconfig.returncode == 1 and "modelship dev-cluster up" in kubeconfig.stderr
    assert "Traceback" not in status.stderr + kubeconfig.stderr


def test_unreadable_state_file_gives_advice(tmp_path: Path):
    (tmp_path / "state.json").write_text("{not json")
    result = modelship("dev-cluster", "status", "--state-dir", str(tmp_path))
    assert result.returncode == 1
    assert "unreadable" in result.stderr and "remove the state directory" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.cluster
def test_up_over_stale_state_starts_fresh_and_down_leaves_no_process(tmp_path: Path):
    """A plane whose processes died (machine reboot, kill -9) is detected as stale and replaced."""
    state = tmp_path / "plane"
    state.mkdir()
    (state / "etcd").mkdir()
    (state / "state.json").write_text(json.dumps({"processes": [
        {"name": "etcd", "pid": 2 ** 22 + 1, "binary": "/gone/etcd"}]}))
    lines: list[str] = []
    plane = ControlPlane(state, toolchain.ensure_binaries(lambda _: None), progress=lines.append)
    try:
        plane.up(nodes=DEFAULT_NODES[:1])
        assert any("found stale state" in line for line in lines)
        assert {p.name for p in plane.running()} == {
            "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
            "model-store", "node-agent"}
        with pytest.raises(DevClusterError, match="already runs from"):
            plane.up()
    finally:
        records = plane.processes()
        plane.down(quiet=True)
    assert len(records) == 7 and plane.running() == []


KILLED_SESSION = """
import os, sys
from pathlib import Path
from modelship.devcluster.plane import ControlPlane
from modelship.devcluster.toolchain import ensure_binaries
from modelship.devcluster.nodes import DEFAULT_NODES
plane = ControlPlane(Path(sys.argv[1]), ensure_binaries(lambda _: None), progress=lambda _: None,
                     die_with_parent=True)
plane.up(nodes=DEFAULT_NODES[:1])
print(" ".join(str(r.pid) for r in plane.running()), flush=True)
os._exit(9)  # killed: no teardown runs
"""


@pytest.mark.cluster
def test_a_killed_test_session_leaves_no_control_plane_behind(tmp_path: Path):
    result = subprocess.run([sys.executable, "-c", KILLED_SESSION, str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    pids = [int(p) for p in result.stdout.split()]
    assert len(pids) == 7, result.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_runs(pid, tmp_path) for pid in pids):
        time.sleep(0.1)
    assert not [pid for pid in pids if _runs(pid, tmp_path)]


def _runs(pid: int, state: Path) -> bool:
    """The PID is alive (not a zombie) and still one of the plane's processes."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return str(state).encode() in cmdline and stat.rsplit(")", 1)[-1].split()[0] != "Z"
