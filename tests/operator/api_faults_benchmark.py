"""The API-faults acceptance run: N ModelServices under create/update/delete churn with faults
injected between the operator and a fresh local control plane, then faults off.

Faults (faultproxy.py, test_api_faults.acceptance_faults): 30% of writes 409, 10% 429 with
Retry-After, 20% 5xx, resets before and after writes, rare stalls past the client timeout,
half of all watch resumes answered 410 Gone, and every watch stream cut every 10 s.

Reports: seconds from "faults off" until every live ModelService is Ready at its generation,
orphaned children (of deleted ModelServices, or not controlled by the live one) and duplicated
children, tracebacks in the operator's log, and the fault counts drawn.

    python tests/operator/api_faults_benchmark.py --count 50 --churn-seconds 300 --json docs/benchmarks/api-faults.json

Not a test: it prints figures; docs/reliability.md records them with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import random
import subprocess
import sys
import tempfile
import time
from typing import Any

import yaml

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from accounts import plane_ca, service_account_kubeconfig  # noqa: E402
from faultproxy import FaultProxy, proxied_kubeconfig  # noqa: E402
from kube_helpers import CHILD_KINDS, REPO, OperatorProcess, is_ready  # noqa: E402
from test_api_faults import WatchCutter, acceptance_faults, manifest  # noqa: E402

NAMESPACE = "churn"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--churn-seconds", type=float, default=300)
    parser.add_argument("--converge-timeout", type=float, default=120)
    parser.add_argument("--cut-every", type=float, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()

    from modelship.devcluster.nodes import NodeShape
    from modelship.devcluster.plane import ControlPlane
    from modelship.devcluster.toolchain import ensure_binaries

    rng = random.Random(args.seed)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="modelship-faults-"))
    plane = ControlPlane(workdir / "plane", ensure_binaries(lambda line: None), progress=lambda line: None,
                         die_with_parent=True)
    operator: OperatorProcess | None = None
    proxy: FaultProxy | None = None
    try:
        plane.up(nodes=[NodeShape("churn-0", cpu="128", memory="512Gi", pods=250)])
        env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}

        def kubectl(*a: str, input: str | None = None) -> str:
            return subprocess.run([str(plane.bin_dir / "kubectl"), *a], env=env, input=input, capture_output=True,
                                  text=True, check=True).stdout

        class Plane:  # what accounts.py needs of a cluster
            kubeconfig, server = plane.kubeconfig, plane.server

            @staticmethod
            def kubectl(*a: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run([str(plane.bin_dir / "kubectl"), *a], env=env, capture_output=True,
                                      text=True, check=True)

        kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        kubectl("wait", "--for=condition=Established", "crd/modelservices.modelship.dev")
        kubectl("create", "namespace", "modelship-system")
        kubectl("create", "namespace", NAMESPACE)
        rendered = subprocess.run([str(plane.bin_dir / "helm"), "template", "ms", str(REPO / "charts" / "modelship"),
                                   "-n", "modelship-system"], capture_output=True, text=True, check=True).stdout
        kinds = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
        rbac = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in kinds]
        kubectl("apply", "--server-side", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}))
        proxy = FaultProxy(plane.server, plane_ca(Plane), seed=args.seed)
        proxy.start()
        config = proxied_kubeconfig(service_account_kubeconfig(Plane, "modelship-system", "ms-modelship"), proxy.url)
        path = workdir / "operator.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        operator = OperatorProcess(path, workdir / "operator.log", args=("--resync-seconds", "30"))
        operator.start()
        while "operator started" not in operator.log():
            time.sleep(0.2)

        def apply(body: dict[str, Any]) -> None:
            kubectl("apply", "--server-side", "-n", NAMESPACE, "-f", "-", input=json.dumps(body))

        names = [f"m{i:03d}" for i in range(args.count)]
        batch = dict.fromkeys(names, 8)
        deleted: set[str] = set()
        actions = {"create": 0, "update": 0, "delete": 0}
        proxy.set_rules(*acceptance_faults())
        with WatchCutter(proxy, every=args.cut_every) as cutter:
            for name in names:
                apply(manifest(name))
                actions["create"] += 1
            end = time.monotonic() + args.churn_seconds
            while time.monotonic() < end:
                name = rng.choice(names)
                if name in deleted:
                    apply(manifest(name, batch[name]))
                    deleted.discard(name)
                    actions["create"] += 1
                elif rng.random() < 0.7:
                    batch[name] = 16 if batch[name] == 8 else 8
                    apply(manifest(name, batch[name]))
                    actions["update"] += 1
                else:
                    kubectl("delete", "msvc", name, "-n", NAMESPACE, "--wait=false")
                    deleted.add(name)
                    actions["delete"] += 1
                time.sleep(rng.uniform(0.2, 1.0))
        proxy.set_rules()
        faults_off = time.monotonic()
        faults: dict[str, int] = {}
        for seen in proxy.requests():
            if seen.fault:
                faults[seen.fault] = faults.get(seen.fault, 0) + 1
        live = set(names) - deleted
        converged_after = None
        while time.monotonic() - faults_off < args.converge_timeout:
            items = json.loads(kubectl("get", "msvc", "-n", NAMESPACE, "-o", "json"))["items"]
            ready = {m["metadata"]["name"] for m in items if is_ready(m)}
            if live <= ready:
                converged_after = time.monotonic() - faults_off
                break
            time.sleep(2)
        time.sleep(15)  # the garbage collector's turn for deleted ModelServices' children
        msvcs = {m["metadata"]["name"]: m for m in json.loads(kubectl("get", "msvc", "-n", NAMESPACE, "-o", "json"))["items"]}
        orphans, duplicates = [], []
        for kind in CHILD_KINDS:
            items = json.loads(kubectl("get", kind, "-n", NAMESPACE, "-l", "app.kubernetes.io/managed-by=modelship",
                                       "-o", "json"))["items"]
            per_owner: dict[str, int] = {}
            for item in items:
                owner = item["metadata"]["labels"].get("modelship.dev/modelservice")
                uid = (msvcs.get(owner) or {}).get("metadata", {}).get("uid")
                refs = [r for r in item["metadata"].get("ownerReferences") or [] if r.get("controller")]
                if owner not in msvcs or not refs or refs[0]["uid"] != uid:
                    orphans.append(f"{kind}/{item['metadata']['name']}")
                per_owner[owner] = per_owner.get(owner, 0) + 1
            duplicates += [f"{kind} of {o}: {n}" for o, n in per_owner.items() if n > 1]
        log = operator.log()
        result = {
            "count": args.count, "churn_seconds": args.churn_seconds, "actions": actions,
            "requests_through_proxy": len(proxy.requests()), "faults": faults, "watch_streams_cut": cutter.cuts,
            "live_at_end": len(live), "converged_seconds_after_faults_off": (
                round(converged_after, 1) if converged_after is not None else None),
            "orphaned_children": len(orphans), "duplicated_children": len(duplicates),
            "tracebacks_in_log": log.count("Traceback"),
            "examples": {"orphans": orphans[:5], "duplicates": duplicates[:5]},
            "seed": args.seed,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        }
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        ok = converged_after is not None and not orphans and not duplicates and "Traceback" not in log
        return 0 if ok else 1
    finally:
        if operator is not None:
            operator.stop()
        if proxy is not None:
            proxy.stop()
        plane.down(quiet=True)


if __name__ == "__main__":
    raise SystemExit(main())
