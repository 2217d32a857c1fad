"""Start, check and stop one local control plane in a state directory.

Every process runs in its own session with its log in `<state>/logs/`, and is recorded in
`<state>/state.json` the moment it starts, so `down` (or a test's teardown) can stop exactly
what was started, even after a half-finished `up`. A PID is only ever signalled when its
command line still names our binary, so a recycled PID is never hit.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from modelship.devcluster.agent.backoff import DEFAULT_CAP, DEFAULT_INITIAL
from modelship.devcluster.agent.node import DEFAULT_NODE_NAMES
from modelship.devcluster.errors import DevClusterError
from modelship.devcluster.nodes import DEFAULT_NODES, KWOK_ANNOTATION, KWOK_ANNOTATION_VALUE, NodeShape, node_manifest
from modelship.devcluster.pki import Pki, ensure_pki

Progress = Callable[[str], None]

# Start order; `down` stops in reverse so nothing loses its API server mid-shutdown.
# The last two are Python modules of this package: the model store and the local node agent.
GO_COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
PYTHON_COMPONENTS = {"model-store": "modelship.devcluster.agent.modelstore",
                     "node-agent": "modelship.devcluster.agent"}
COMPONENT_ORDER = (*GO_COMPONENTS, *PYTHON_COMPONENTS)
SERVICE_CIDR = "10.0.0.0/16"  # room for thousands of Services (the 500-ModelService benchmark)
POD_CIDR = "10.244.0.0/16"
STOP_GRACE_SECONDS = 10.0

# Writes only, at Metadata level: enough to count what a controller writes, small enough to keep.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}]},
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}


def default_state_dir() -> Path:
    """$MODELSHIP_STATE_DIR, else $XDG_STATE_HOME/modelship/dev-cluster, else ~/.local/state/..."""
    override = os.environ.get("MODELSHIP_STATE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "modelship" / "dev-cluster"


@dataclass
class ProcessRecord:
    name: str
    pid: int
    binary: str


class ControlPlane:
    """One plane's state directory and the processes recorded in it."""

    def __init__(self, state_dir: Path, binaries: dict[str, Path] | None = None, progress: Progress = print,
                 *, die_with_parent: bool = False, backoff_initial: float = DEFAULT_INITIAL,
                 backoff_cap: float = DEFAULT_CAP) -> None:
        """`die_with_parent` ties every component's life to this process (for test sessions:
        a killed pytest must not leave a control plane behind); `dev-cluster up` detaches instead.
        `backoff_*`: the node agent's CrashLoopBackOff delays (tests shorten them)."""
        self.state_dir = Path(state_dir).resolve()
        self.backoff = (backoff_initial, backoff_cap)
        self.binaries = binaries or {}
        self.progress = progress
        self.die_with_parent = die_with_parent
        self._pki: Pki | None = None

    @property
    def pki(self) -> Pki:
        """The plane's certificates and tokens, created on first use and then read once."""
        if self._pki is None:
            self._pki = ensure_pki(self.state_dir / "pki")
        return self._pki

    # ---- paths -------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def bin_dir(self) -> Path:
        """One folder with every binary (kubectl, helm, kubeconform, ...), for PATH."""
        return self.state_dir / "bin"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def audit_log(self) -> Path:
        return self.logs_dir / "audit.log"

    @property
    def models_dir(self) -> Path:
        """What the model store serves: a file here is at `model_store_url` + its name."""
        return self.state_dir / "models"

    @property
    def agent_dir(self) -> Path:
        """The node agent's pods (volumes, logs, termination messages)."""
        return self.state_dir / "agent"

    @property
    def model_store_url(self) -> str:
        return self.read_state().get("model_store_url", "")

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "state.json"

    # ---- state -------------------------------------------------------------------------

    def read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self._state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as exc:
            raise DevClusterError(
                f"the state file {self._state_file} is unreadable ({exc}); remove the state "
                f"directory {self.state_dir} (after checking no process of it still runs) and retry"
            ) from exc

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self._state_file)

    def processes(self) -> list[ProcessRecord]:
        return [ProcessRecord(**p) for p in self.read_state().get("processes", [])]

    def running(self) -> list[ProcessRecord]:
        return [p for p in self.processes() if _alive(p)]

    @property
    def server(self) -> str:
        return self.read_state().get("server", "")

    # ---- lifecycle ---------------------------------------------------------------------

    def up(self, nodes: Iterable[NodeShape] = DEFAULT_NODES, apiserver_port: int | None = None,
           timeout: float = 120.0) -> None:
        """Start every component, wait until the cluster schedules pods, create the nodes."""
        nodes = list(nodes)
        missing = [n for n in GO_COMPONENTS if not self.binaries.get(n) or not Path(self.binaries[n]).is_file()]
        if missing:
            raise DevClusterError(f"binaries not built: {', '.join(missing)} (run `make tools`)")
        # The node agent runs pods from their images' environments: built (or found cached) here,
        # before the start-up deadline, so the first pod does not wait minutes for one.
        from modelship.devcluster import imageenv

        imageenv.ensure_all((imageenv.SERVER, imageenv.OPERATOR), progress=self.progress)
        self._claim_state_dir()
        started = time.monotonic()
        deadline = started + timeout
        try:
            self._start_all(apiserver_port, deadline)
            self.progress("creating fake nodes")
            for shape in nodes:
                self.add_node(shape)
            self._wait(deadline, "nodes to be Ready (kwok)", lambda: self._nodes_ready([n.name for n in nodes]))
            self._wait(deadline, "the local node agent's nodes to be Ready",
                       lambda: self._nodes_ready(list(DEFAULT_NODE_NAMES)), component="node-agent")
            self._wait(deadline, "the default ServiceAccount", self._default_service_account_exists)
        except BaseException:
            self.progress("start-up failed; stopping what was started")
            self.down(quiet=True)
            raise
        self.progress(f"control plane ready in {time.monotonic() - started:.1f}s; kubeconfig: {self.kubeconfig}")

    def down(self, quiet: bool = False) -> list[str]:
        """Stop every recorded process (SIGTERM, then SIGKILL after a grace period), then any
        pod process the node agent left (it stops its pods itself; this covers a killed agent)."""
        records = self.processes()
        stopped = []
        for record in sorted(records, key=lambda r: -COMPONENT_ORDER.index(r.name) if r.name in COMPONENT_ORDER else 0):
            if _alive(record):
                _terminate(record)
                stopped.append(record.name)
                if not quiet:
                    self.progress(f"stopped {record.name} (pid {record.pid})")
        if self.agent_dir.is_dir():
            from modelship.devcluster.agent.process import sweep

            from modelship.devcluster.agent.addresses import remove_route

            leftovers = sweep(self.agent_dir)
            remove_route(self.agent_dir)
            if leftovers and not quiet:
                self.progress(f"stopped {len(leftovers)} pod process(es) the node agent left behind")
        if self._state_file.exists():
            state = self.read_state()
            state["processes"] = []
            self._write_state(state)
        return stopped

    def add_node(self, shape: NodeShape) -> dict[str, Any]:
        """Create (or keep) a fake node of the given shape."""
        try:
            return self.api("POST", "/api/v1/nodes", node_manifest(shape))
        except DevClusterError as exc:
            if "409" in str(exc):
                return self.api("GET", f"/api/v1/nodes/{shape.name}")
            raise

    # ---- talking to the API server ------------------------------------------------------

    def api(self, method: str, path: str, body: dict[str, Any] | None = None, user: str = "admin") -> dict[str, Any]:
        """A minimal authenticated JSON request to the API server (no client library needed)."""
        payload = self.request(method, path, body, user)
        return json.loads(payload) if payload else {}

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, user: str = "admin") -> bytes:
        """The raw response body of an authenticated request; DevClusterError on failure."""
        pki = self.pki
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method)  # noqa: S310 - the plane's https URL
        request.add_header("Authorization", f"Bearer {pki.tokens[user]}")
        request.add_header("Content-Type", "application/json")
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
                return response.read()
        except urllib.error.HTTPError as exc:
            raise DevClusterError(f"{method} {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise DevClusterError(f"{method} {path}: the API server at {self.server} is unreachable ({exc})") from exc

    # ---- internals ---------------------------------------------------------------------

    def _claim_state_dir(self) -> None:
        alive = self.running()
        if alive:
            names = ", ".join(f"{p.name} (pid {p.pid})" for p in alive)
            raise DevClusterError(
                f"a control plane already runs from {self.state_dir}: {names}. "
                "Use `modelship dev-cluster status` to inspect it or `modelship dev-cluster down` to stop it."
            )
        if self.processes():
            self.progress(f"found stale state in {self.state_dir}: its processes exited without "
                          "`dev-cluster down` (a reboot or a kill); discarding it and starting fresh")
        if (self.state_dir / "etcd").exists():
            for leftover in ("etcd", "state.json", "kubeconfig"):
                _remove(self.state_dir / leftover)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._write_state({"processes": []})
        _remove(self.bin_dir)
        self.bin_dir.mkdir()
        for name, path in self.binaries.items():
            (self.bin_dir / name).symlink_to(path)

    def _start_all(self, apiserver_port: int | None, deadline: float) -> None:
        pki = self.pki
        if apiserver_port is not None and not _port_free(apiserver_port):
            raise DevClusterError(
                f"port {apiserver_port} on 127.0.0.1 is already in use, so kube-apiserver cannot listen "
                "there: stop what holds it, pick another --apiserver-port, or leave the flag out "
                "to use a free port"
            )
        ports = {
            "etcd": _free_port(), "etcd-peer": _free_port(), "apiserver": apiserver_port or _free_port(),
            "controller-manager": _free_port(), "scheduler": _free_port(), "kwok": _free_port(),
        }
        server = f"https://127.0.0.1:{ports['apiserver']}"
        state = self.read_state()
        state.update({"ports": ports, "server": server})
        self._write_state(state)
        kubeconfigs = {
            user: self._write_kubeconfig(
                self.kubeconfig if user == "admin" else self.state_dir / f"{user.split(':')[-1]}.kubeconfig",
                server, pki, user,
            )
            for user in pki.tokens
        }
        audit_policy = self.state_dir / "audit-policy.yaml"
        audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY))

        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        self._spawn("etcd", [
            f"--data-dir={self.state_dir / 'etcd'}", "--name=default",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}", "--unsafe-no-fsync=true",
            "--quota-backend-bytes=8589934592", "--log-level=warn",
        ])
        self._wait(deadline, "etcd", lambda: _http_ok(f"{etcd_url}/health"), component="etcd")

        self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={ports['apiserver']}",
            f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
            f"--token-auth-file={pki.token_file}", "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--enable-admission-plugins=ExtendedResourceToleration",
            "--allow-privileged=true", f"--cert-dir={self.state_dir / 'pki'}",
            f"--audit-policy-file={audit_policy}", f"--audit-log-path={self.audit_log}",
            "--audit-log-maxsize=100", "--audit-log-maxbackup=1",
            "--profiling=false", "--v=0",
        ])
        self._wait(deadline, "kube-apiserver", self._apiserver_ready, component="kube-apiserver")

        self._spawn("kube-controller-manager", [
            f"--kubeconfig={kubeconfigs['system:kube-controller-manager']}",
            f"--authentication-kubeconfig={kubeconfigs['system:kube-controller-manager']}",
            f"--authorization-kubeconfig={kubeconfigs['system:kube-controller-manager']}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['controller-manager']}",
            f"--cert-dir={self.state_dir / 'pki' / 'controller-manager'}",
            "--leader-elect=false", f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca_cert}", "--use-service-account-credentials=true",
            f"--cluster-cidr={POD_CIDR}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--concurrent-deployment-syncs=10", "--concurrent-replicaset-syncs=10",
            "--kube-api-qps=200", "--kube-api-burst=400", "--profiling=false",
        ])
        self._spawn("kube-scheduler", [
            f"--config={self._scheduler_config(kubeconfigs['system:kube-scheduler'])}",
            f"--authentication-kubeconfig={kubeconfigs['system:kube-scheduler']}",
            f"--authorization-kubeconfig={kubeconfigs['system:kube-scheduler']}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}",
            f"--cert-dir={self.state_dir / 'pki' / 'scheduler'}", "--profiling=false",
        ])
        self._spawn("kwok", [
            f"--kubeconfig={kubeconfigs['kwok']}", f"--config={self._kwok_config()}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}={KWOK_ANNOTATION_VALUE}",
            f"--cidr={POD_CIDR}", "--node-ip=10.1.0.1",
            f"--server-address=127.0.0.1:{ports['kwok']}",
            "--node-lease-duration-seconds=40",
        ])
        for name, port in (("kube-controller-manager", ports["controller-manager"]),
                           ("kube-scheduler", ports["scheduler"])):
            self._wait(deadline, name, functools.partial(_http_ok, f"https://127.0.0.1:{port}/healthz", insecure=True),
                       component=name)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        # Picked now, not with the others: the model store starts last, tens of seconds later,
        # and a port picked that early can be taken by then (seen once in a CI run).
        ports["model-store"] = _free_port()
        state = self.read_state()
        state.update({"ports": ports, "model_store_url": f"http://127.0.0.1:{ports['model-store']}/"})
        self._write_state(state)
        self._spawn("model-store", [f"--dir={self.models_dir}", f"--port={ports['model-store']}"])
        self._wait(deadline, "the model store", lambda: _http_ok(f"http://127.0.0.1:{ports['model-store']}/"),
                   component="model-store")
        self._spawn("node-agent", [
            f"--kubeconfig={self.kubeconfig}", f"--state-dir={self.agent_dir}",
            f"--nodes={','.join(DEFAULT_NODE_NAMES)}",
            f"--backoff-initial={self.backoff[0]}", f"--backoff-cap={self.backoff[1]}",
        ])

    def _scheduler_config(self, kubeconfig: Path) -> Path:
        """The scheduler's connection settings; its default profile schedules as a cluster would."""
        config = {
            "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "leaderElection": {"leaderElect": False},
        }
        path = self.state_dir / "scheduler.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _kwok_config(self) -> Path:
        """kwok's stages (node and pod lifecycles), from the files kept next to its binary."""
        stages = sorted((Path(self.binaries["kwok"]).parent / "assets").glob("*.yaml"))
        if not stages:
            raise DevClusterError("kwok's stage files are missing from the binary cache: run `make tools` again")
        path = self.state_dir / "kwok.yaml"
        path.write_text("\n---\n".join(s.read_text() for s in stages))
        return path

    def _spawn(self, name: str, args: list[str]) -> None:
        binary = sys.executable if name in PYTHON_COMPONENTS else str(self.binaries[name])
        if name in PYTHON_COMPONENTS:
            args = ["-m", PYTHON_COMPONENTS[name], *args]
        self.progress(f"starting {name}")
        log = open(self.logs_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            process = subprocess.Popen(
                [binary, *args], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.state_dir,
                # The agent gets SIGTERM rather than SIGKILL: it then stops its pods and removes its route.
                preexec_fn=(_die_with_parent_gently if name in PYTHON_COMPONENTS else _die_with_parent)
                if self.die_with_parent else None,
            )
        finally:
            log.close()
        state = self.read_state()
        record = ProcessRecord(name, process.pid, binary)
        state.setdefault("processes", []).append(vars(record))
        self._write_state(state)
        # Between fork and exec, /proc still shows Python: wait for the exec so liveness checks hold.
        deadline = time.monotonic() + 5
        while not _alive(record) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)

    def _write_kubeconfig(self, path: Path, server: str, pki: Pki, user: str) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "modelship-dev", "cluster": {
                "server": server,
                "certificate-authority-data": base64.b64encode(pki.ca_cert.read_bytes()).decode(),
            }}],
            "users": [{"name": user, "user": {"token": pki.tokens[user]}}],
            "contexts": [{"name": "modelship-dev", "context": {"cluster": "modelship-dev", "user": user}}],
            "current-context": "modelship-dev",
        }
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _wait(self, deadline: float, what: str, check: Callable[[], bool], component: str | None = None) -> None:
        self.progress(f"waiting for {what}")
        while True:
            if component and not any(p.name == component for p in self.running()):
                raise DevClusterError(f"{component} exited during start-up:\n{self._log_tail(component)}\n"
                                      f"full log: {self.logs_dir / (component + '.log')}")
            try:
                if check():
                    return
            except DevClusterError:
                pass
            if time.monotonic() > deadline:
                detail = f"\n{self._log_tail(component)}" if component else ""
                raise DevClusterError(f"timed out waiting for {what}; logs are in {self.logs_dir}{detail}")
            time.sleep(0.2)

    def _apiserver_ready(self) -> bool:
        try:
            return self.request("GET", "/readyz") == b"ok"
        except DevClusterError:
            return False

    def _nodes_ready(self, names: list[str]) -> bool:
        items = self.api("GET", "/api/v1/nodes").get("items", [])
        ready = {
            n["metadata"]["name"] for n in items
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        }
        return set(names) <= ready

    def _default_service_account_exists(self) -> bool:
        self.api("GET", "/api/v1/namespaces/default/serviceaccounts/default")
        return True

    def _log_tail(self, component: str | None, lines: int = 15) -> str:
        if not component:
            return ""
        try:
            text = (self.logs_dir / f"{component}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])


def _alive(record: ProcessRecord) -> bool:
    """True when the PID runs and is still our binary (a recycled PID is not ours)."""
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        stat = Path(f"/proc/{record.pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return cmdline == record.binary and not zombie


def _terminate(record: ProcessRecord) -> None:
    try:
        os.kill(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline:
        if not _alive(record):
            _reap(record.pid)
            return
        _reap(record.pid)
        time.sleep(0.05)
    try:
        os.kill(record.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while _alive(record):
        time.sleep(0.05)
    _reap(record.pid)


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our child (in tests), so it leaves no zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGKILL it when its parent dies (no teardown ran)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _die_with_parent_gently() -> None:
    """As `_die_with_parent`, with SIGTERM: for components that clean up after themselves."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _http_ok(url: str, insecure: bool = False) -> bool:
    context = ssl._create_unverified_context() if insecure else None  # noqa: S323 - self-signed health port
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310 - a health URL we built
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
