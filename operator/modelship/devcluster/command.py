"""`modelship dev-cluster up|down|status|kubeconfig`: the local control plane from the shell."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from modelship.devcluster.errors import DevClusterError

DESCRIPTION = """\
Run a real Kubernetes control plane on this machine, no Docker needed: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler built from pinned Go modules (the first `up` compiles
them, which takes several minutes; later runs reuse the cache), plus kwok faking the kubelets of
two CPU nodes, two GPU nodes and one MIG-partitioned A100, and a local node agent whose nodes
local-0 and local-1 run modelship's own pods for real as local processes (select them with the
nodeSelector node.modelship.dev/agent=local). A small web server serves the files put in the
state directory's models/ folder (its URL: `status`), for ModelServices' model.uri.

  modelship dev-cluster up            start it (prints progress; returns when pods can be scheduled)
  modelship dev-cluster status        what runs, where, and the nodes
  export KUBECONFIG=$(modelship dev-cluster kubeconfig)
  kubectl get nodes                   (kubectl and helm are in the bin folder `status` prints)
  modelship dev-cluster down          stop every process it started
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    actions = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    for name, help_text in (
        ("up", "build (if needed) and start the plane, create the fake nodes, wait until ready"),
        ("down", "stop every process the plane started"),
        ("status", "show the plane's processes, API server URL, binaries and nodes"),
        ("kubeconfig", "print the path of the admin kubeconfig"),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text)
        action.add_argument(
            "--state-dir", type=Path, default=None,
            help="folder for the plane's data, logs, certificates and kubeconfig "
                 "(default: $MODELSHIP_STATE_DIR or ~/.local/state/modelship/dev-cluster)",
        )
        if name == "up":
            action.add_argument("--apiserver-port", type=int, default=None,
                                help="loopback port for kube-apiserver (default: a free one)")
            action.add_argument("--timeout", type=float, default=120.0,
                                help="seconds to wait for the plane to become ready (default: 120)")


def run(args: argparse.Namespace) -> int:
    from modelship.devcluster.plane import ControlPlane, default_state_dir

    plane = ControlPlane(args.state_dir or default_state_dir(), progress=_say)
    try:
        return _ACTIONS[args.action](plane, args)
    except DevClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _up(plane, args: argparse.Namespace) -> int:  # noqa: ANN001 - ControlPlane, imported lazily
    from modelship.devcluster.toolchain import ensure_binaries

    started = time.monotonic()
    plane.binaries = ensure_binaries(_say)
    plane.up(apiserver_port=args.apiserver_port, timeout=args.timeout)
    _say(f"ready after {time.monotonic() - started:.1f}s in all")
    _say(f"  export KUBECONFIG={plane.kubeconfig}")
    _say(f"  export PATH={plane.bin_dir}:$PATH   # kubectl, helm, kubeconform built for this plane")
    _print_nodes(plane)
    return 0


def _down(plane, _args: argparse.Namespace) -> int:  # noqa: ANN001
    if not plane.processes():
        _say(f"nothing to stop: no control plane recorded in {plane.state_dir}")
        return 0
    stopped = plane.down()
    _say(f"stopped {len(stopped)} process(es); logs stay in {plane.logs_dir} (the next `up` starts a fresh cluster)" if stopped
         else "its processes had already exited; nothing left running")
    return 0


def _status(plane, _args: argparse.Namespace) -> int:  # noqa: ANN001
    records = plane.processes()
    if not records:
        _say(f"not running (no plane recorded in {plane.state_dir}); start one with `modelship dev-cluster up`")
        return 3
    alive = {p.name for p in plane.running()}
    for record in records:
        _say(f"{record.name:24} pid {record.pid:<8} {'running' if record.name in alive else 'EXITED'}")
    _say(f"API server: {plane.server}")
    _say(f"model store: {plane.model_store_url or '-'} (serves {plane.models_dir})")
    _say(f"kubeconfig: {plane.kubeconfig}")
    _say(f"binaries:   {plane.bin_dir} (kubectl, helm, kubeconform, ...)")
    if "kube-apiserver" in alive:
        _print_nodes(plane)
    if len(alive) != len(records):
        _say("some components exited: see their logs in " + str(plane.logs_dir) + ", then `down` and `up`")
        return 1
    return 0


def _kubeconfig(plane, _args: argparse.Namespace) -> int:  # noqa: ANN001
    if not plane.kubeconfig.is_file():
        print(f"error: no kubeconfig in {plane.state_dir}: start the plane with `modelship dev-cluster up`",
              file=sys.stderr)
        return 1
    print(plane.kubeconfig)
    return 0


def _print_nodes(plane) -> None:  # noqa: ANN001
    nodes = plane.api("GET", "/api/v1/nodes").get("items", [])
    _say(f"{'NODE':18} {'READY':6} {'CPU':>4} {'MEMORY':>7}  ACCELERATORS")
    for node in nodes:
        status = node.get("status", {})
        capacity = status.get("capacity", {})
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
        accelerators = ", ".join(f"{k}={v}" for k, v in capacity.items() if k.startswith("nvidia.com/"))
        labels = node["metadata"].get("labels", {})
        product = labels.get("nvidia.com/gpu.product")
        if product:
            accelerators += f" ({product})"
        if labels.get("node.modelship.dev/agent") == "local":
            accelerators = "- (real pods: the local node agent)"
        _say(f"{node['metadata']['name']:18} {str(ready):6} {capacity.get('cpu', '?'):>4} "
             f"{capacity.get('memory', '?'):>7}  {accelerators or '-'}")


def _say(line: str) -> None:
    print(line, flush=True)


_ACTIONS = {"up": _up, "down": _down, "status": _status, "kubeconfig": _kubeconfig}
