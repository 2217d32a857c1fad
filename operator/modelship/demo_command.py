"""`modelship demo`: the whole journey on this machine, from a fresh clone.

It starts the local cluster (kube-apiserver and friends, kwok's fake GPU nodes, and the node
agent that runs modelship's own pods as local processes), publishes a small generated model on
the cluster's model store, installs the CRD and the operator's Helm chart, applies a
ModelService, follows the optimize Job and the rollout, then sends a real inference with
tritonclient to a serving pod and compares it with ONNX Runtime on this machine.
`modelship dev-cluster down` (or `make down`) stops every process it started.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from modelship.devcluster.agent.node import AGENT_LABEL, AGENT_LABEL_VALUE, AGENT_TOLERATION

REPO = Path(__file__).resolve().parents[2]
NAME = "demo-mlp"
MODEL_FILE = "demo-mlp.onnx"
OPERATOR_NAMESPACE = "modelship-system"
AGENT_SELECTOR = {AGENT_LABEL: AGENT_LABEL_VALUE}
AGENT_TOLERATIONS = [AGENT_TOLERATION]  # the agent's nodes are tainted so only pods that ask run there


DESCRIPTION = """\
The whole journey on this machine, for real:
  1. start the local cluster (built from Go modules on the first run; several minutes, then cached),
     with a node agent that runs modelship's own pods as local processes;
  2. publish a small generated ONNX model on the cluster's model store;
  3. install the CRD and the operator (Helm chart charts/modelship);
  4. apply a ModelService with optimization and an SLO, and follow the optimize Job and the rollout;
  5. print `kubectl get msvc` and send an inference with tritonclient to every serving pod.
The cluster keeps running afterwards; `modelship dev-cluster down` (make down) stops all of it.
"""


class DemoError(Exception):
    """A step failed; the message says which, what was seen, and where to look."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="the local cluster's folder (default: $MODELSHIP_STATE_DIR or "
                             "~/.local/state/modelship/dev-cluster)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for the service to become Ready (default: 600)")
    parser.add_argument("--reuse", action="store_true",
                        help="use the cluster that is already running instead of starting a fresh one")


def run(args: argparse.Namespace) -> int:
    try:
        Demo(args.state_dir, timeout=args.timeout).run(reuse=args.reuse)
    except DemoError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    return 0


def service_manifest(model_url: str, sha256: str) -> dict[str, Any]:
    """The ModelService the demo applies: optimized, with an SLO, on the agent's nodes."""
    return {
        "apiVersion": "modelship.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": NAME, "namespace": "default"},
        "spec": {
            "model": {"uri": model_url, "sha256": sha256, "name": "mlp"},
            "runtime": "onnxruntime",
            "replicas": 1,
            "resources": {"cpu": "1", "memory": "1Gi"},
            "scheduling": {"nodeSelector": dict(AGENT_SELECTOR), "tolerations": list(AGENT_TOLERATIONS)},
            "optimization": {"enabled": True},
            "slo": {"latencyMilliseconds": 20, "percentile": "p95"},
            "rollout": {"preStopDelaySeconds": 1, "terminationGracePeriodSeconds": 10},
        },
    }


class Demo:
    def __init__(self, state_dir: Path | None, timeout: float) -> None:
        from modelship.devcluster.plane import ControlPlane, default_state_dir

        self.plane = ControlPlane(state_dir or default_state_dir(), progress=self.say)
        self.timeout = timeout
        self.started = time.monotonic()

    def say(self, line: str) -> None:
        print(f"[demo {time.monotonic() - self.started:6.1f}s] {line}", flush=True)

    # ---- steps ------------------------------------------------------------------------

    def run(self, reuse: bool = False) -> None:
        self.cluster(reuse)
        url, digest = self.publish_model()
        self.install()
        self.apply(url, digest)
        self.follow()
        self.show()
        self.infer()
        self.say("done. The cluster keeps running: "
                 f"export KUBECONFIG={self.plane.kubeconfig} PATH={self.plane.bin_dir}:$PATH; "
                 "stop everything with `make down`.")

    def cluster(self, reuse: bool) -> None:
        from modelship.devcluster.errors import DevClusterError
        from modelship.devcluster.toolchain import ensure_binaries

        self.plane.binaries = ensure_binaries(self.say)
        if reuse and self.plane.running():
            self.say(f"reusing the running cluster at {self.plane.server}")
            return
        try:
            self.plane.up()
        except DevClusterError as exc:
            raise DemoError(f"the local cluster did not start: {exc}") from None

    def publish_model(self) -> tuple[str, str]:
        """Write the demo model into the model store and return its URL and sha256."""
        from modelship_server import samples

        store_url = self.plane.read_state().get("model_store_url")
        if not store_url:
            raise DemoError("the cluster has no model store (state.json lacks model_store_url); "
                            "restart it with `make down` then `make demo`")
        import onnx

        folder = self.plane.state_dir / "models"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MODEL_FILE
        onnx.save(samples.mlp((256, 512, 512, 10)), str(path))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        url = f"{store_url.rstrip('/')}/{MODEL_FILE}"
        self.say(f"model: {path} ({path.stat().st_size / 1e6:.1f} MB, sha256 {digest[:12]}...) served at {url}")
        return url, digest

    def install(self) -> None:
        self.say("installing the CRD and the operator (Helm chart charts/modelship)")
        self.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        self.wait_for("the CRD to be established", self._crd_established, 60)
        self._tool("helm", ("upgrade", "--install", "modelship", str(REPO / "charts" / "modelship"),
                            "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
                            "--set-json", f"nodeSelector={json.dumps(AGENT_SELECTOR)}",
                            "--set-json", f"tolerations={json.dumps(AGENT_TOLERATIONS)}", "--wait", "--timeout", "180s"),
                   capture=True)  # its NOTES are for people installing by hand
        self.say("operator pod is Ready")

    def _crd_established(self) -> bool:
        crd = self.plane.api("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/modelservices.modelship.dev")
        return any(c["type"] == "Established" and c["status"] == "True"
                   for c in (crd.get("status") or {}).get("conditions") or [])

    def wait_for(self, what: str, check, seconds: float) -> None:  # noqa: ANN001 - a callable
        deadline = time.monotonic() + seconds
        while not check():
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {seconds:g}s waiting for {what}")
            time.sleep(0.5)

    def apply(self, url: str, digest: str) -> dict[str, Any]:
        manifest = service_manifest(url, digest)
        path = self.plane.state_dir / "demo-modelservice.json"
        path.write_text(json.dumps(manifest, indent=2))
        self.say(f"applying ModelService {NAME} ({path}; edit and `kubectl apply -f` it to try changes)")
        self.kubectl("apply", "-f", str(path))
        return manifest

    def follow(self) -> None:
        """Print each change of the Job, the pods and the conditions until Ready."""
        deadline = time.monotonic() + self.timeout
        seen: set[str] = set()
        while time.monotonic() < deadline:
            msvc = self.plane.api("GET", f"/apis/modelship.dev/v1alpha1/namespaces/default/modelservices/{NAME}")
            lines = []
            for cond in (msvc.get("status") or {}).get("conditions") or []:
                lines.append(f"condition {cond['type']}={cond['status']} ({cond.get('reason')}): "
                             f"{cond.get('message', '')[:160]}")
            selector = "app.kubernetes.io/instance=" + NAME
            pods = self.plane.api("GET", f"/api/v1/namespaces/default/pods?labelSelector={selector}")
            jobs = self.plane.api("GET", "/apis/batch/v1/namespaces/default/jobs")
            for job in jobs.get("items", []):
                done = [c["type"] for c in (job.get("status") or {}).get("conditions") or [] if c["status"] == "True"]
                lines.append(f"job {job['metadata']['name']}: {', '.join(done) or 'running'}")
            for pod in pods.get("items", []) + self._job_pods():
                lines.append(f"pod {pod['metadata']['name']}: {_pod_phase(pod)}")
            for line in lines:
                if line not in seen:
                    seen.add(line)
                    self.say(line)
            if _ready(msvc):
                return
            time.sleep(1.0)
        raise DemoError(f"ModelService {NAME} not Ready after {self.timeout:g}s; see `kubectl describe msvc {NAME}` "
                        f"and the agent's log in {self.plane.logs_dir}")

    def _job_pods(self) -> list[dict[str, Any]]:
        pods = self.plane.api("GET", "/api/v1/namespaces/default/pods?labelSelector=batch.kubernetes.io/job-name")
        return pods.get("items", [])

    def show(self) -> None:
        print(self.kubectl("get", "msvc", "-o", "wide", capture=True), flush=True)

    def infer(self) -> None:
        """One request through tritonclient to each serving pod; compared with local ORT."""
        import numpy as np
        import onnxruntime as ort
        import tritonclient.http as httpclient

        addresses: list[str] = []

        def endpoints() -> bool:  # the endpoints controller may trail the pod's readiness a little
            slices = self.plane.api("GET", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
                                           f"?labelSelector=kubernetes.io/service-name={NAME}")
            addresses[:] = [a for s in slices.get("items", []) for e in s.get("endpoints") or []
                            if (e.get("conditions") or {}).get("ready") for a in e.get("addresses") or []]
            return bool(addresses)

        try:
            self.wait_for(f"a ready endpoint of Service {NAME}", endpoints, 30)
        except DemoError as exc:
            raise DemoError(f"{exc}; see `kubectl get endpointslices` and `kubectl get events`") from None
        x = np.random.default_rng(7).standard_normal((1, 256)).astype(np.float32)
        reference = ort.InferenceSession(str(self.plane.state_dir / "models" / MODEL_FILE),
                                         providers=["CPUExecutionProvider"]).run(None, {"INPUT0": x})[0]
        for address in addresses:
            client = httpclient.InferenceServerClient(f"{address}:8000")
            try:
                request = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
                request.set_data_from_numpy(x)
                started = time.perf_counter()
                served = client.infer("mlp", [request]).as_numpy("OUTPUT0")
                elapsed = (time.perf_counter() - started) * 1000
            finally:
                client.close()
            cosine = float(np.dot(served.ravel(), reference.ravel())
                           / (np.linalg.norm(served) * np.linalg.norm(reference)))
            self.say(f"inference on pod {address}:8000 in {elapsed:.1f} ms: class {int(served.argmax())} "
                     f"(local fp32 ONNX Runtime: class {int(reference.argmax())}, cosine {cosine:.5f})")

    # ---- tools --------------------------------------------------------------------------

    def kubectl(self, *args: str, capture: bool = False) -> str:
        return self._tool("kubectl", args, capture)

    def _tool(self, name: str, args: tuple[str, ...], capture: bool) -> str:
        cmd = [str(self.plane.bin_dir / name), "--kubeconfig", str(self.plane.kubeconfig), *args]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise DemoError(f"`{name} {' '.join(args)}` failed ({result.returncode}): "
                            f"{(result.stderr or result.stdout).strip()[:600]}")
        if not capture and result.stdout.strip():
            for line in result.stdout.strip().splitlines():
                self.say(f"{name}: {line}")
        return result.stdout


def _ready(msvc: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (msvc.get("status") or {}).get("conditions") or [])


def _pod_phase(pod: dict[str, Any]) -> str:
    """The word `kubectl get pods` would show: a waiting reason, Running (ready n/m), or the phase."""
    status = pod.get("status") or {}
    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") not in (None, "PodInitializing", "ContainerCreating"):
            return waiting["reason"]
    containers = status.get("containerStatuses") or []
    if status.get("phase") == "Running":
        return f"Running ({sum(1 for c in containers if c.get('ready'))}/{len(containers)} ready)"
    return status.get("phase", "Pending")
