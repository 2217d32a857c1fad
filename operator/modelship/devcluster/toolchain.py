"""Build the control plane's binaries from pinned Go modules, once, into a cache outside the repo.

There is no Docker engine and no binary download here, only the Go module proxy, so every
component is compiled from source. Each component is a wrapper module in `hack/tools/<name>/`
whose go.mod pins the version and whose go.sum is committed. The cache key is the component's
version plus a digest of its go.mod and go.sum, so a second build costs nothing and a version
bump rebuilds exactly what changed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from modelship.devcluster.errors import DevClusterError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Binary:
    """One executable: its file name and the Go package whose main it is."""

    name: str
    package: str


@dataclass(frozen=True)
class Component:
    """A wrapper module under hack/tools, the upstream module it pins, and the binaries it yields."""

    module_dir: str
    upstream: str
    binaries: tuple[Binary, ...]
    # Data files copied from the upstream module's source next to the binaries, as <asset_dir>/<file>.
    assets: tuple[str, ...] = ()
    # Version stamps a release build sets with -X; `{version}`, `{major}`, `{minor}` are filled in.
    stamps: tuple[str, ...] = ()
    # Built only when asked for by name (`only=`), never by `make tools`, `make demo` or the plane.
    on_demand: bool = False


COMPONENTS: tuple[Component, ...] = (
    Component(
        "kubernetes",
        "k8s.io/kubernetes",
        (
            Binary("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver"),
            Binary("kube-controller-manager", "k8s.io/kubernetes/cmd/kube-controller-manager"),
            Binary("kube-scheduler", "k8s.io/kubernetes/cmd/kube-scheduler"),
            Binary("kubectl", "k8s.io/kubernetes/cmd/kubectl"),
        ),
        # Without these, binaries report v0.0.0 and clients (helm's kubeVersion checks,
        # `kubectl version`) reject the server, as Kubernetes' own hack/lib/version.sh knows.
        stamps=tuple(
            f"{package}.{field}={value}"
            for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
            for field, value in (
                ("gitVersion", "{version}"), ("gitMajor", "{major}"), ("gitMinor", "{minor}"),
                ("gitTreeState", "clean"), ("buildDate", "1970-01-01T00:00:00Z"),
            )
        ),
    ),
    # The package path ends in /v3, so `go install` would name the binary "server": build with -o.
    Component("etcd", "go.etcd.io/etcd/server/v3", (Binary("etcd", "go.etcd.io/etcd/server/v3"),)),
    # kwok needs "stages" to drive node and pod lifecycles; use the ones its release defines.
    Component(
        "kwok",
        "sigs.k8s.io/kwok",
        (Binary("kwok", "sigs.k8s.io/kwok/cmd/kwok"),),
        assets=(
            "kustomize/stage/node/fast/node-initialize.yaml",
            "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
            "kustomize/stage/pod/fast/pod-ready.yaml",
            "kustomize/stage/pod/fast/pod-complete.yaml",
            "kustomize/stage/pod/fast/pod-delete.yaml",
        ),
    ),
    Component("helm", "helm.sh/helm/v3", (Binary("helm", "helm.sh/helm/v3/cmd/helm"),)),
    Component(
        "kubeconform",
        "github.com/yannh/kubeconform",
        (Binary("kubeconform", "github.com/yannh/kubeconform/cmd/kubeconform"),),
    ),
    # Not part of the plane: an S3-compatible server (in memory) for the fetch step's s3:// tests.
    Component(
        "gofakes3",
        "github.com/johannesboyne/gofakes3",
        (Binary("gofakes3", "github.com/johannesboyne/gofakes3/cmd/gofakes3"),),
    ),
    # Not part of the plane: a gRPC load generator in Go, for server benchmarks without a Python client.
    Component("ghz", "github.com/bojand/ghz", (Binary("ghz", "github.com/bojand/ghz/cmd/ghz"),), on_demand=True),
)

# What a build without `only=` makes: every component but the on-demand ones.
ALL_BINARIES: tuple[str, ...] = tuple(b.name for c in COMPONENTS if not c.on_demand for b in c.binaries)


def tools_dir() -> Path:
    """Where the wrapper modules live: $MODELSHIP_TOOLS_DIR, else hack/tools of this checkout."""
    override = os.environ.get("MODELSHIP_TOOLS_DIR")
    if override:
        return Path(override)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "hack" / "tools"
        if (candidate / "kubernetes" / "go.mod").is_file():
            return candidate
    raise DevClusterError(
        "cannot find the Go wrapper modules (hack/tools/*/go.mod): the local control plane is "
        "built from a modelship source checkout. Install modelship editable from a clone "
        "(pip install -e '.[dev]') or set MODELSHIP_TOOLS_DIR to the clone's hack/tools."
    )


def cache_dir() -> Path:
    """The binary cache: $MODELSHIP_CACHE_DIR, else $XDG_CACHE_HOME/modelship, else ~/.cache/modelship."""
    override = os.environ.get("MODELSHIP_CACHE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelship"


def component_version(component: Component, root: Path) -> str:
    """The upstream version the wrapper's go.mod pins."""
    go_mod = (root / component.module_dir / "go.mod").read_bytes()
    pattern = rb"^\s*(?:require\s+)?" + re.escape(component.upstream.encode()) + rb"\s+(v\S+)"
    match = re.search(pattern, go_mod, re.MULTILINE)
    return match.group(1).decode() if match else "unversioned"


def component_key(component: Component, root: Path) -> str:
    """`<name>-<pinned version>-<digest of go.mod, go.sum, version stamps>`: the cache folder's name."""
    module = root / component.module_dir
    go_sum_path = module / "go.sum"
    go_sum = go_sum_path.read_bytes() if go_sum_path.is_file() else b""
    version = component_version(component, root)
    stamps = "\0".join(_stamps(component, version)).encode()
    digest = hashlib.sha256((module / "go.mod").read_bytes() + b"\0" + go_sum + b"\0" + stamps).hexdigest()[:10]
    return f"{component.module_dir}-{version}-{digest}"


def _stamps(component: Component, version: str) -> list[str]:
    major, minor = (version.lstrip("v").split(".") + ["", ""])[:2]
    return [s.format(version=version, major=major, minor=minor) for s in component.stamps]


def binary_paths(root: Path | None = None, cache: Path | None = None) -> dict[str, Path]:
    """Where each binary is (or will be) once built; pure path arithmetic, no build."""
    root = root or tools_dir()
    cache = cache or cache_dir()
    paths = {}
    for component in COMPONENTS:
        folder = cache / "bin" / component_key(component, root)
        for binary in component.binaries:
            paths[binary.name] = folder / binary.name
    return paths


def ensure_binaries(progress: Progress = print, *, only: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Build whatever is missing from the cache and return every binary's path.

    Builds component by component, so an interrupted cold build keeps what it finished.
    """
    root = tools_dir()
    cache = cache_dir()
    paths = binary_paths(root, cache)
    wanted = set(only or ALL_BINARIES)
    for component in COMPONENTS:
        folder = paths[component.binaries[0].name].parent
        missing = [b for b in component.binaries if b.name in wanted and not paths[b.name].is_file()]
        missing_assets = [a for a in component.assets if not (folder / "assets" / Path(a).name).is_file()]
        if missing or (missing_assets and any(b.name in wanted for b in component.binaries)):
            _build(component, missing, root, folder, progress)
    return paths


def _build(component: Component, binaries: list[Binary], root: Path, dest: Path, progress: Progress) -> None:
    version = component_version(component, root)
    go = shutil.which(os.environ.get("MODELSHIP_GO", "go"))
    if go is None:
        raise DevClusterError(
            "no Go toolchain on PATH: the local control plane is compiled from Go modules. "
            "Install Go >= 1.25 (https://go.dev/dl/ or your distribution's golang package), "
            "or point MODELSHIP_GO at a go binary, then run the command again."
        )
    module = root / component.module_dir
    staging = dest.with_name(dest.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN", "local")}
    for binary in binaries:
        progress(f"building {binary.name} from {component.module_dir} "
                 "(the first build downloads its modules and takes minutes; later ones are cached)")
        started = time.monotonic()
        ldflags = " ".join(["-s", "-w", *(f"-X {stamp}" for stamp in _stamps(component, version))])
        cmd = [go, "build", "-trimpath", f"-ldflags={ldflags}", "-o", str(staging / binary.name), binary.package]
        _run_go(cmd, module, env, binary.name, progress)
        progress(f"built {binary.name} in {time.monotonic() - started:.0f}s")
    if component.assets:
        _copy_assets(go, component, module, env, staging / "assets")
    dest.mkdir(parents=True, exist_ok=True)
    for built in staging.iterdir():
        target = dest / built.name
        if target.is_dir():
            shutil.rmtree(target)
        built.replace(target)
    staging.rmdir()


def _run_go(cmd: list[str], module: Path, env: dict[str, str], what: str, progress: Progress,
            heartbeat: float = 30.0) -> None:
    """Run a go command, saying every `heartbeat` seconds that it is still busy."""
    started = time.monotonic()
    with subprocess.Popen(cmd, cwd=module, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(process.stdout or ()), daemon=True)
        reader.start()
        while True:
            try:
                process.wait(timeout=heartbeat)
                break
            except subprocess.TimeoutExpired:
                progress(f"  ... still working on {what} ({time.monotonic() - started:.0f}s)")
        reader.join()
    if process.returncode != 0:
        raise DevClusterError(_explain_build_failure(what, module, "".join(output)))


def _copy_assets(go: str, component: Component, module: Path, env: dict[str, str], dest: Path) -> None:
    """Copy data files out of the upstream module's source (already in the module cache)."""
    result = subprocess.run([go, "list", "-m", "-f", "{{.Dir}}", component.upstream],
                            cwd=module, env=env, capture_output=True, text=True)
    source = Path(result.stdout.strip())
    if result.returncode != 0 or not source.is_dir():
        raise DevClusterError(_explain_build_failure(f"{component.module_dir} assets", module, result.stderr))
    dest.mkdir(parents=True, exist_ok=True)
    for asset in component.assets:
        shutil.copyfile(source / asset, dest / Path(asset).name)


def _explain_build_failure(name: str, module: Path, stderr: str) -> str:
    tail = "\n".join(stderr.strip().splitlines()[-15:])
    download_failures = ("dial tcp", "no such host", "proxy.golang.org", "connection refused", "i/o timeout",
                         "GOPROXY", "module lookup disabled", "reading https://")
    if any(s in stderr for s in download_failures):
        hint = (
            "a Go module download failed: check access to the module proxy "
            f"(GOPROXY={os.environ.get('GOPROXY', 'https://proxy.golang.org,direct')}), "
            "or set GOPROXY to a reachable mirror, then run the command again"
        )
    elif "go.mod requires go" in stderr or "toolchain" in stderr:
        hint = "the local Go is older than the module needs: install a newer Go, or allow GOTOOLCHAIN=auto"
    else:
        hint = f"see the compiler output above; rerun by hand with: cd {module} && go build ./..."
    return f"building {name} failed ({hint}):\n{tail}"


def main() -> int:
    """`python -m modelship.devcluster.toolchain`: build everything and print the paths."""
    try:
        started = time.monotonic()
        paths = ensure_binaries(lambda line: print(line, flush=True))
    except DevClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name in ALL_BINARIES:
        print(f"{name:24} {paths[name]}")
    print(f"control-plane binaries ready in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
