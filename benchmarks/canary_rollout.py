"""Canary rollouts on a fresh local cluster with real serving pods, under steady traffic.

    .venv/bin/python benchmarks/canary_rollout.py --good-runs 20 [--json FILE]   # false rollbacks
    .venv/bin/python benchmarks/canary_rollout.py --bad [--json FILE]            # detection, share

--good-runs N: N good changes in a row (a new pod template each time, the same model), each
through every canary step; counts promotions, false rollbacks and failed requests.
--bad: the same model made slow (tests/e2e/canary_models.py) under the Canary strategy: seconds
from the canary's first answered request to the rollback the operator reports, and the share of
requests the canary answered in that time, counted per pod by the client; then the same slow
change under RollingUpdate: the share the slow pods answered once it rolled out (and whether
anything noticed). The client follows the Service's EndpointSlices as kube-proxy would.

Not a test: it prints figures; docs/rollout.md records them with this command.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
for sub in ("tests", "tests/e2e"):
    sys.path.insert(0, str(REPO / sub))

import numpy as np  # noqa: E402

from canary_models import slow_copy  # noqa: E402
from modelship.devcluster.plane import ControlPlane  # noqa: E402
from modelship.devcluster.toolchain import ensure_binaries  # noqa: E402
from modelship_server import samples  # noqa: E402
from test_canary import NAME, NS, STEPS, Recorder, condition, deployment, msvc, publish, ready  # noqa: E402
from chart_install import AGENT_NODES, AGENT_TOLERATIONS  # noqa: E402
from traffic import Traffic  # noqa: E402
from waiting import wait_for  # noqa: E402

FEED = {"INPUT0": np.ones((1, 64), np.float32)}


class Cluster:
    """The few calls the tests' helpers make on their `cluster` fixture."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.plane.api(method, path, body)

    def kubectl(self, *args: str, check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002 - as the fixture's
        env = {**os.environ, "KUBECONFIG": str(self.plane.kubeconfig)}
        result = subprocess.run([str(self.plane.bin_dir / "kubectl"), *args], env=env, input=input,
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr}")
        return result


def patch(cluster: Cluster, spec: dict[str, Any]) -> None:
    cluster.kubectl("patch", "msvc", NAME, "-n", NS, "--type=merge", "-p", json.dumps({"spec": spec}))


def generation(cluster: Cluster) -> int:
    return int(msvc(cluster)["metadata"]["generation"])


def good_runs(cluster: Cluster, runs: int) -> dict[str, Any]:
    results = []
    for i in range(runs):
        started = time.time()
        with Traffic(cluster.api, NS, NAME, "mlp", FEED, clients=2) as traffic:
            patch(cluster, {"rollout": {"preStopDelaySeconds": 3 if i % 2 == 0 else 2}})
            target = generation(cluster)
            end = wait_for("the canary to end", lambda: (c := (msvc(cluster).get("status") or {}).get("canary"))
                           and c.get("generation") == target and c.get("phase") in ("Promoted", "RolledBack") and c,
                           600, 1)
            if end["phase"] == "Promoted":
                wait_for("generation Ready", lambda: ready(cluster, target), 300, 1)
        results.append({"run": i + 1, "generation": target, "phase": end["phase"], "seconds": round(time.time() - started, 1),
                        "requests": traffic.ok, "failed": traffic.failed, "message": end.get("message")})
        print(json.dumps(results[-1]), flush=True)
    return {"runs": len(results), "promoted": sum(r["phase"] == "Promoted" for r in results),
            "false_rollbacks": sum(r["phase"] == "RolledBack" for r in results),
            "failed_requests": sum(r["failed"] for r in results), "results": results}


def bad_canary(cluster: Cluster, slow: dict[str, str], good: dict[str, str]) -> dict[str, Any]:
    with Traffic(cluster.api, NS, NAME, "mlp", FEED, clients=2) as traffic, Recorder(cluster) as recorder:
        time.sleep(2)
        patch(cluster, {"model": slow})
        wait_for("the rollback", lambda: condition(msvc(cluster), "Progressing").get("reason") == "RolledBack", 600, 0.25)
        rolled_back = time.time()
        wait_for("the canary at zero", lambda: (d := deployment(cluster, f"{NAME}-canary")) is not None
                 and not (d.get("status") or {}).get("replicas"), 120)
        time.sleep(2)
    canary = recorder.canary_addresses
    first = min((t for t, a in traffic.answered if a in canary), default=None)
    during = [a for t, a in traffic.answered if first is not None and first <= t <= rolled_back]
    served = sum(a in canary for a in during)
    degraded = condition(msvc(cluster), "Degraded")
    out = {"detected_seconds_after_first_canary_request": round(rolled_back - first, 1) if first else None,
           "canary_share_while_it_ran": round(served / max(1, len(during)), 3), "canary_requests": served,
           "requests_while_it_ran": len(during), "step_weight_percent": STEPS[0]["weight"],
           "failed_requests": traffic.failed, "degraded": degraded.get("message")}
    print(json.dumps(out), flush=True)
    patch(cluster, {"model": good})  # back to what stable runs: the canary's record ends
    wait_for("the canary Deployment to go", lambda: deployment(cluster, f"{NAME}-canary") is None, 120)
    return out


def rolling_update(cluster: Cluster, slow: dict[str, str]) -> dict[str, Any]:
    before = {p["status"].get("podIP") for p in cluster.api("GET", f"/api/v1/namespaces/{NS}/pods")["items"]}
    with Traffic(cluster.api, NS, NAME, "mlp", FEED, clients=2) as traffic:
        time.sleep(2)
        patch(cluster, {"model": slow, "rollout": {"strategy": "RollingUpdate"}})
        target = generation(cluster)
        wait_for("the slow spec Ready", lambda: ready(cluster, target), 600, 0.5)
        done = time.time()
        time.sleep(10)
    after = [a for t, a in traffic.answered if t >= done]
    m = msvc(cluster)
    out = {"slow_share_after_rollout": round(sum(a not in before for a in after) / max(1, len(after)), 3),
           "requests_after_rollout": len(after), "failed_requests": traffic.failed,
           "ready": condition(m, "Ready").get("status"), "degraded": condition(m, "Degraded").get("status")}
    print(json.dumps(out), flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--good-runs", type=int, default=0, metavar="N", help="good canaries in a row (0: none)")
    parser.add_argument("--bad", action="store_true", help="a slow canary, then the same change as a rolling update")
    parser.add_argument("--json", type=pathlib.Path, help="write the results here too")
    args = parser.parse_args()
    if not args.good_runs and not args.bad:
        parser.error("nothing to do: pass --good-runs N and/or --bad")
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp:
        plane = ControlPlane(pathlib.Path(tmp), ensure_binaries(print), progress=print, die_with_parent=True)
        plane.up()
        cluster = Cluster(plane)
        operator = None
        try:
            cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
            wait_for("the CRD", lambda: cluster.kubectl("get", "crd", "modelservices.modelship.dev", check=False)
                     .returncode == 0, 60)
            cluster.kubectl("create", "namespace", NS)
            log = open(pathlib.Path(tmp) / "operator.log", "wb")
            operator = subprocess.Popen(
                [sys.executable, "-m", "modelship.cli", "run", "--liveness", "off", "--metrics-port", "0",
                 "--namespace", NS], env={**os.environ, "KUBECONFIG": str(plane.kubeconfig)},
                stdout=log, stderr=subprocess.STDOUT)
            base = samples.mlp()
            good = publish(cluster, "canary-mlp.onnx", base)
            # 1000, as in tests/e2e/test_canary.py: 150 (~25 ms quiet) passes the SLO and the 40 ms slack
            slow = publish(cluster, "canary-mlp-slow.onnx", slow_copy(base, matmuls=1000))
            cluster.kubectl("apply", "-f", "-", input=json.dumps({
                "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService",
                "metadata": {"name": NAME, "namespace": NS},
                "spec": {"model": good, "replicas": 2, "resources": {"cpu": "250m", "memory": "256Mi"},
                         "scheduling": {"nodeSelector": AGENT_NODES, "tolerations": AGENT_TOLERATIONS},
                         "slo": {"latencyMilliseconds": 100, "percentile": "p95"},
                         "rollout": {"preStopDelaySeconds": 2, "terminationGracePeriodSeconds": 15,
                                     "strategy": "Canary",
                                     "canary": {"steps": STEPS, "analysis": {
                                         "intervalSeconds": 1, "minRequests": 20, "latencySlackMilliseconds": 40}}}}}))
            wait_for("the first generation Ready", lambda: ready(cluster, 1), 300, 1)
            results: dict[str, Any] = {}
            if args.good_runs:
                results["good"] = good_runs(cluster, args.good_runs)
            if args.bad:
                results["bad_canary"] = bad_canary(cluster, slow, good)
                results["rolling_update"] = rolling_update(cluster, slow)
            print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "results"} for k, v in results.items()},
                             indent=2))
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=2) + "\n")
        finally:
            if operator is not None:
                cluster.kubectl("delete", "msvc", "--all", "-n", NS, "--wait=true", "--timeout=60s", check=False)
                operator.send_signal(signal.SIGTERM)
                try:
                    operator.wait(30)
                except subprocess.TimeoutExpired:
                    operator.kill()
                    operator.wait(10)
            plane.down(quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
