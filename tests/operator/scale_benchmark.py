"""Scale benchmark of the operator: N ModelServices on a fresh local control plane.

Measures, in one run:
  - time from create to Ready=True of each ModelService (kwok pods), p50/p95/max;
  - the operator process's CPU seconds and peak resident memory;
  - API writes by the operator per ModelService (from the API server's audit log, by the
    operator's ServiceAccount user), by verb and resource;
  - writes during 60 idle seconds after convergence (expected: 0).

    python tests/operator/scale_benchmark.py --count 500 --json docs/benchmarks/operator-scale.json

Not a test: it prints figures; docs/benchmarks/operator-scale.md records them with this command.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import yaml

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from kube_helpers import REPO, OperatorProcess  # noqa: E402
from msvc_samples import SHA  # noqa: E402

NAMESPACE = "bench"
OPERATOR_USER = "system:serviceaccount:modelship-system:ms-modelship"


def _proc_stats(pid: int) -> tuple[float, int, int]:
    """(CPU seconds, RSS bytes, peak RSS bytes) of a live process, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    status = dict(line.split(":", 1) for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    kib = lambda key: int(status[key].split()[0]) * 1024  # noqa: E731
    return cpu, kib("VmRSS"), kib("VmHWM")


def _breakdown(audit: pathlib.Path, start: int, end: int, names: set[str]) -> dict[str, float]:
    """Where the time from create to Ready goes, from the API server's own timestamps:
    create -> the operator applies the Deployment -> the last pod turns Ready (controllers,
    scheduler, kwok) -> the operator writes Ready=True."""
    import datetime

    def ts(entry: dict[str, Any]) -> float:
        return datetime.datetime.fromisoformat(entry["stageTimestamp"].replace("Z", "+00:00")).timestamp()

    created: dict[str, float] = {}
    applied: dict[str, float] = {}
    pods_ready: dict[str, float] = {}
    available: dict[str, float] = {}
    ready_written: dict[str, float] = {}
    with open(audit, "rb") as f:
        f.seek(start)
        for line in f.read(end - start).splitlines():
            e = json.loads(line)
            ref = e.get("objectRef") or {}
            name = ref.get("name") or ""
            user = e.get("user", {}).get("username", "")
            if ref.get("resource") == "modelservices" and e["verb"] == "create" and not ref.get("subresource"):
                name = name or (e.get("requestURI", "").rsplit("/", 1)[-1])
            if ref.get("resource") == "modelservices" and e["verb"] == "create":
                created.setdefault(name, ts(e))
            elif user == OPERATOR_USER and ref.get("resource") == "deployments" and e["verb"] == "patch":
                applied.setdefault(name, ts(e))
            elif ref.get("resource") == "pods" and ref.get("subresource") == "status" and user != OPERATOR_USER:
                owner = name.rsplit("-", 2)[0]
                pods_ready[owner] = ts(e)
            elif ref.get("resource") == "deployments" and ref.get("subresource") == "status" and user != OPERATOR_USER:
                available[name] = ts(e)
            elif user == OPERATOR_USER and ref.get("subresource") == "status" and ref.get("resource") == "modelservices":
                ready_written[name] = ts(e)
    spans: dict[str, list[float]] = {"create_to_operator_apply": [], "apply_to_pods_ready": [],
                                     "pods_ready_to_deployment_status": [], "deployment_status_to_status_ready": []}
    for name in names:
        if all(name in d for d in (created, applied, pods_ready, available, ready_written)):
            spans["create_to_operator_apply"].append(applied[name] - created[name])
            spans["apply_to_pods_ready"].append(pods_ready[name] - applied[name])
            spans["pods_ready_to_deployment_status"].append(available[name] - pods_ready[name])
            spans["deployment_status_to_status_ready"].append(ready_written[name] - available[name])
    return {k: round(statistics.median(v), 3) for k, v in spans.items() if v}


def _manifest(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService",
        "metadata": {"name": f"m{i:04d}", "namespace": NAMESPACE},
        "spec": {"model": {"uri": f"https://models.example.com/m{i}.onnx", "sha256": SHA},
                 "resources": {"cpu": "10m", "memory": "32Mi"}},
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--nodes", type=int, default=4, help="fake CPU nodes of 250 pods each")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--json", type=pathlib.Path, help="write the figures here too")
    parser.add_argument("--workers", type=int, default=32, help="the operator's --workers")
    args = parser.parse_args()

    import kubernetes

    from modelship.devcluster.nodes import NodeShape
    from modelship.devcluster.plane import ControlPlane
    from modelship.devcluster.toolchain import ensure_binaries

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="modelship-bench-"))
    plane = ControlPlane(workdir / "plane", ensure_binaries(lambda line: None), progress=lambda line: None,
                         die_with_parent=True)
    nodes = [NodeShape(f"bench-{i}", cpu="128", memory="512Gi", pods=250) for i in range(args.nodes)]
    operator: OperatorProcess | None = None
    try:
        plane.up(nodes=nodes)
        env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
        import subprocess

        kubectl = lambda *a, input=None: subprocess.run(  # noqa: E731
            [str(plane.bin_dir / "kubectl"), *a], env=env, input=input, capture_output=True, text=True, check=True)
        kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        kubectl("wait", "--for=condition=Established", "crd/modelservices.modelship.dev")
        kubectl("create", "namespace", "modelship-system")
        kubectl("create", "namespace", NAMESPACE)
        rendered = subprocess.run([str(plane.bin_dir / "helm"), "template", "ms", str(REPO / "charts" / "modelship"),
                                   "-n", "modelship-system"], capture_output=True, text=True, check=True).stdout
        rbac = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
        kubectl("apply", "--server-side", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}))
        token = kubectl("-n", "modelship-system", "create", "token", "ms-modelship", "--duration=2h").stdout.strip()
        admin = yaml.safe_load(plane.kubeconfig.read_text())
        admin["users"][0]["user"] = {"token": token}
        sa_config = workdir / "operator.kubeconfig"
        sa_config.write_text(yaml.safe_dump(admin))

        operator = OperatorProcess(sa_config, workdir / "operator.log", args=("--workers", str(args.workers)))
        operator.start()
        time.sleep(1)
        while "operator started" not in operator.log():
            time.sleep(0.2)

        api = kubernetes.client.ApiClient(kubernetes.config.new_client_from_config(str(plane.kubeconfig)).configuration)
        custom = kubernetes.client.CustomObjectsApi(api)
        ready_at: dict[str, float] = {}
        stop = threading.Event()

        def watch() -> None:
            w = kubernetes.watch.Watch()
            while not stop.is_set():
                for event in w.stream(custom.list_namespaced_custom_object, "modelship.dev", "v1alpha1", NAMESPACE,
                                      "modelservices", timeout_seconds=5):
                    obj = event["object"]
                    name = obj["metadata"]["name"]
                    for c in (obj.get("status") or {}).get("conditions") or []:
                        if c["type"] == "Ready" and c["status"] == "True" and name not in ready_at:
                            ready_at[name] = time.monotonic()
                    if stop.is_set():
                        break

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        time.sleep(1)
        audit_start = plane.audit_log.stat().st_size
        cpu0, _, _ = _proc_stats(operator.proc.pid)
        created_at: dict[str, float] = {}
        t0 = time.monotonic()
        for i in range(args.count):
            body = _manifest(i)
            created_at[body["metadata"]["name"]] = time.monotonic()
            custom.create_namespaced_custom_object("modelship.dev", "v1alpha1", NAMESPACE, "modelservices", body)
        create_seconds = time.monotonic() - t0
        deadline = time.monotonic() + args.timeout
        while len(ready_at) < args.count and time.monotonic() < deadline:
            time.sleep(0.5)
        converge_seconds = time.monotonic() - t0
        cpu1, rss, peak = _proc_stats(operator.proc.pid)
        audit_converged = plane.audit_log.stat().st_size
        time.sleep(args.idle_seconds)
        audit_idle_end = plane.audit_log.stat().st_size
        cpu2, _, _ = _proc_stats(operator.proc.pid)
        stop.set()

        def writes(start: int, end: int) -> collections.Counter[str]:
            counter: collections.Counter[str] = collections.Counter()
            with open(plane.audit_log, "rb") as f:
                f.seek(start)
                for line in f.read(end - start).splitlines():
                    entry = json.loads(line)
                    if entry.get("user", {}).get("username") != OPERATOR_USER:
                        continue
                    ref = entry.get("objectRef", {})
                    resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
                    counter[f"{entry['verb']} {resource}"] += 1
            return counter

        converging = writes(audit_start, audit_converged)
        breakdown = _breakdown(plane.audit_log, audit_start, audit_converged, set(created_at))
        idle = writes(audit_converged, audit_idle_end)
        latencies = [ready_at[n] - created_at[n] for n in created_at if n in ready_at]
        result = {
            "count": args.count,
            "ready": len(latencies),
            "create_seconds": round(create_seconds, 2),
            "converge_seconds": round(converge_seconds, 2),
            "ready_latency_seconds": {
                "p50": round(_percentile(latencies, 0.50), 2), "p95": round(_percentile(latencies, 0.95), 2),
                "max": round(max(latencies), 2), "mean": round(statistics.fmean(latencies), 2),
            } if latencies else None,
            "operator_cpu_seconds_converging": round(cpu1 - cpu0, 2),
            "operator_cpu_seconds_idle": round(cpu2 - cpu1, 2),
            "operator_rss_mib_end": round(rss / 2**20, 1),
            "operator_peak_rss_mib": round(peak / 2**20, 1),
            "operator_writes_total": sum(converging.values()),
            "operator_writes_per_modelservice": round(sum(converging.values()) / args.count, 2),
            "operator_writes_by_kind": dict(sorted(converging.items())),
            "operator_writes_during_idle": sum(idle.values()),
            "latency_breakdown_p50_seconds": breakdown,
            "idle_seconds": args.idle_seconds,
            "operator_workers": args.workers,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        }
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0 if len(latencies) == args.count else 1
    finally:
        if operator is not None:
            operator.stop()
            calls = [line for line in operator.log().splitlines() if "API calls:" in line]
            if calls:
                print(calls[-1].split("API calls: ", 1)[1])
        plane.down(quiet=True)


if __name__ == "__main__":
    raise SystemExit(main())
