"""The local node agent on the real control plane: modelship's pods run as local processes.

Real parts throughout: the session's kube-apiserver, scheduler and controllers, the agent the
plane starts, the real fetch init step downloading from the plane's model store, the real
modelship-server answering tritonclient on the pod's own loopback address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from waiting import wait_for

from modelship.devcluster.agent.node import AGENT_TOLERATION
from modelship.devcluster.agent.process import AGENT_DIR_ENV, POD_UID_ENV, processes_with

pytestmark = pytest.mark.cluster

LOCAL = {"node.modelship.dev/agent": "local"}
TOLERATE = [AGENT_TOLERATION]  # the agent's nodes are tainted NoSchedule
SERVER_IMAGE = "ghcr.io/modelship/modelship-server:0.1.0"


def get_json(cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def apply(cluster, namespace: str, *objects: dict) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def pod(name: str, containers: list[dict], **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeSelector": LOCAL, "tolerations": TOLERATE, "containers": containers, **spec}}


def python(name: str, code: str, **extra) -> dict:
    return {"name": name, "image": SERVER_IMAGE, "command": ["python", "-c", code], **extra}


def condition(p: dict, kind: str) -> str | None:
    return next((c["status"] for c in p["status"].get("conditions", []) if c["type"] == kind), None)


def tiny_model(path: Path) -> str:
    """y = x @ W + b, 4 -> 3, written with onnx.helper; returns its sha256."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    bias = np.array([1.0, -1.0, 0.5], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def serving_objects(name: str, uri: str, sha256: str, replicas: int) -> list[dict]:
    """A Deployment shaped like the operator's (fetch init step, probes on the v2 health
    endpoints, preStop sleep) and a Service in front of it."""
    labels = {"app": name}
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 1, "timeoutSeconds": 2}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": {
        "replicas": replicas, "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {
            "nodeSelector": LOCAL, "tolerations": TOLERATE, "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 10,
            "volumes": [{"name": "model-repository", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
            "initContainers": [{
                "name": "fetch-model", "image": SERVER_IMAGE, "command": ["python", "-m", "modelship.fetch"],
                "args": [f"--uri={uri}", f"--sha256={sha256}", "--dest=/models/tiny/1/model.onnx"],
                "volumeMounts": [{"name": "model-repository", "mountPath": "/models"},
                                 {"name": "tmp", "mountPath": "/tmp"}]}],
            "containers": [{
                "name": "server", "image": SERVER_IMAGE,
                "command": ["modelship-server", "--model-repository", "/models"],
                "ports": [{"name": "http", "containerPort": 8000}, {"name": "grpc", "containerPort": 8001},
                          {"name": "metrics", "containerPort": 8002}],
                "startupProbe": {**probe, "httpGet": {"path": "/v2/health/live", "port": "http"},
                                 "failureThreshold": 60},
                "livenessProbe": {**probe, "httpGet": {"path": "/v2/health/live", "port": "http"}},
                "readinessProbe": probe,
                "lifecycle": {"preStop": {"sleep": {"seconds": 1}}},
                "volumeMounts": [{"name": "model-repository", "mountPath": "/models", "readOnly": True},
                                 {"name": "tmp", "mountPath": "/tmp"}]}],
        }}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {
        "selector": labels, "ports": [{"name": "http", "port": 8000, "targetPort": "http"}]}}
    return [deployment, service]


def test_a_server_deployment_fetches_from_the_model_store_becomes_ready_and_serves(cluster, namespace):
    import tritonclient.http as httpclient

    file = f"{namespace}/tiny.onnx"
    sha256 = tiny_model(cluster.plane.models_dir / file)
    uri = cluster.plane.model_store_url + file
    apply(cluster, namespace, *serving_objects("tiny", uri, sha256, replicas=2))

    def ready_pods():
        pods = get_json(cluster, "pods", "-n", namespace, "-l", "app=tiny")["items"]
        ready = [p for p in pods if condition(p, "Ready") == "True"]
        return ready if len(ready) == 2 else None

    pods = wait_for("2 Ready server pods", ready_pods, timeout=120)
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 2 and all(ipaddress.ip_address(ip) in ipaddress.ip_network("198.18.0.0/15") for ip in ips)
    assert {p["spec"]["nodeName"] for p in pods} <= {"local-0", "local-1"}
    for p in pods:
        fetch = p["status"]["initContainerStatuses"][0]
        assert fetch["state"]["terminated"]["exitCode"] == 0, fetch
        server = p["status"]["containerStatuses"][0]
        assert server["ready"] and server["started"] and "running" in server["state"]

    def slice_addresses():
        slices = get_json(cluster, "endpointslices", "-n", namespace,
                          "-l", "kubernetes.io/service-name=tiny")["items"]
        ready = {a for s in slices for e in s.get("endpoints") or [] if e["conditions"].get("ready")
                 for a in e["addresses"]}
        return ready if ready == ips else None

    wait_for("the EndpointSlice to list both pod IPs as ready", slice_addresses, timeout=30)

    x = np.array([[1, 2, 3, 4]], dtype=np.float32)
    expected = x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10) + np.array([1.0, -1.0, 0.5], np.float32)
    for ip in ips:  # both pods listen on 8000, each on its own address
        client = httpclient.InferenceServerClient(f"{ip}:8000")
        tensor = httpclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("tiny", [tensor]).as_numpy("y")
        np.testing.assert_allclose(result, expected, rtol=1e-6)


def test_a_job_completes_and_its_termination_message_is_in_pod_status(cluster, namespace):
    code = ("import json, os; open('/dev/termination-log', 'w').write(json.dumps("
            "{'outcome': 'optimized', 'pod': os.environ['POD'], 'ip': os.environ['MODELSHIP_LISTEN_ADDRESS']}))")
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "optimize"}, "spec": {
        "backoffLimit": 0, "template": {"spec": {
            "nodeSelector": LOCAL, "tolerations": TOLERATE, "restartPolicy": "Never",
            "containers": [python("optimize", code, env=[
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}])]}}}}
    apply(cluster, namespace, job)
    wait_for("the Job to complete", lambda: any(
        c["type"] == "Complete" and c["status"] == "True"
        for c in get_json(cluster, "job", "optimize", "-n", namespace)["status"].get("conditions", [])), timeout=60)
    [p] = get_json(cluster, "pods", "-n", namespace, "-l", "job-name=optimize")["items"]
    assert p["status"]["phase"] == "Succeeded"
    terminated = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "Completed" and terminated["exitCode"] == 0
    assert json.loads(terminated["message"]) == {"outcome": "optimized", "pod": p["metadata"]["name"],
                                                 "ip": p["status"]["podIP"]}


def test_a_failing_job_pod_ends_failed_with_its_log_as_message(cluster, namespace):
    apply(cluster, namespace, pod("fails", [python("main", "import sys; print('error: bad model'); sys.exit(2)",
                                                   terminationMessagePolicy="FallbackToLogsOnError")],
                                  restartPolicy="Never"))
    p = wait_for("the pod to fail", lambda: (lambda p: p if p["status"].get("phase") == "Failed" else None)(
        get_json(cluster, "pod", "fails", "-n", namespace)))
    terminated = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 2 and terminated["reason"] == "Error"
    assert terminated["message"].strip() == "error: bad model"


def test_an_unknown_image_waits_like_a_failed_pull(cluster, namespace):
    image = "nvcr.io/nvidia/tritonserver:24.01-py3"
    apply(cluster, namespace, pod("triton", [{"name": "server", "image": image}]))
    reasons = set()

    def waiting():
        p = get_json(cluster, "pod", "triton", "-n", namespace)
        state = (p["status"].get("containerStatuses") or [{}])[0].get("state", {}).get("waiting", {})
        reasons.add(state.get("reason"))
        return p if state.get("reason") == "ImagePullBackOff" else None

    p = wait_for("ImagePullBackOff", waiting, timeout=30, interval=0.1)
    assert "ErrImagePull" in reasons
    message = p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    assert image in message and "modelship-server" in message
    assert p["status"]["phase"] == "Pending" and condition(p, "Ready") == "False"
    events = get_json(cluster, "events", "-n", namespace, "--field-selector", "involvedObject.name=triton")["items"]
    assert any(e["reason"] == "Failed" and image in e["message"] for e in events), events


def test_a_command_that_exits_at_once_crash_loops_with_growing_back_off(cluster, namespace):
    apply(cluster, namespace, pod("crash", [python("main", "raise SystemExit(1)")]))
    delays = []

    def restarts():
        status = get_json(cluster, "pod", "crash", "-n", namespace)["status"]
        container = (status.get("containerStatuses") or [{}])[0]
        message = container.get("state", {}).get("waiting", {}).get("message", "")
        match = re.match(r"back-off (\d+)s restarting failed container=main", message)
        if match and (not delays or delays[-1] != int(match.group(1))):
            delays.append(int(match.group(1)))
        return container if container.get("restartCount", 0) >= 4 else None

    container = wait_for("4 restarts", restarts, timeout=60, interval=0.1)
    assert delays[:3] == [1, 2, 4], delays  # the session's agent: 1s doubling to a 4s cap
    assert container["lastState"]["terminated"]["exitCode"] == 1
    p = wait_for("back-off again", lambda: (lambda p: p if p["status"]["containerStatuses"][0]["state"].get(
        "waiting") else None)(get_json(cluster, "pod", "crash", "-n", namespace)), interval=0.1)
    assert p["status"]["phase"] == "Running" and condition(p, "Ready") == "False"  # as a kubelet shows it
    events = get_json(cluster, "events", "-n", namespace, "--field-selector", "involvedObject.name=crash")["items"]
    assert any(e["reason"] == "BackOff" for e in events), events


def test_a_readiness_probe_that_never_succeeds_keeps_the_pod_unready(cluster, namespace):
    apply(cluster, namespace, pod("unready", [python(
        "main", "import time; time.sleep(600)",
        readinessProbe={"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 1})]))
    wait_for("the container to run", lambda: get_json(cluster, "pod", "unready", "-n", namespace)["status"].get(
        "phase") == "Running")
    time.sleep(3)
    p = get_json(cluster, "pod", "unready", "-n", namespace)
    assert condition(p, "Ready") == "False" and condition(p, "ContainersReady") == "False"
    ready = next(c for c in p["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ContainersNotReady" and "[main]" in ready["message"]
    assert p["status"]["containerStatuses"][0]["restartCount"] == 0


def test_a_liveness_failure_restarts_the_container(cluster, namespace):
    apply(cluster, namespace, pod("dead", [python(
        "main", "import time; time.sleep(600)",
        livenessProbe={"exec": {"command": ["python", "-c", "raise SystemExit(1)"]}, "periodSeconds": 1,
                       "failureThreshold": 2})], terminationGracePeriodSeconds=1))
    container = wait_for("a restart after failed liveness probes", lambda: (lambda c: c if c.get(
        "restartCount", 0) >= 1 else None)((get_json(cluster, "pod", "dead", "-n", namespace)["status"].get(
            "containerStatuses") or [{}])[0]), timeout=60)
    last = container["lastState"]["terminated"]
    assert last["exitCode"] == 143 and "Liveness probe failed" in last["message"]


TRAPS_SIGTERM = """
import os, signal, sys, time, subprocess
EVENTS = os.environ['OUT'] + '/events'
child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
def term(*_):
    open(EVENTS, 'a').write('sigterm\\n'); time.sleep(0.5); sys.exit(0)
signal.signal(signal.SIGTERM, term)
open(EVENTS, 'a').write('started\\n')
time.sleep(600)
"""


def _pod_processes(cluster, uid: str) -> list[int]:
    agent = set(processes_with(AGENT_DIR_ENV, str(cluster.plane.agent_dir)))
    return [pid for pid in processes_with(POD_UID_ENV, uid) if pid in agent]


def test_deletion_runs_pre_stop_then_sigterm_and_leaves_no_process(cluster, namespace, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # Mounted where it already is on the host, so the test creates no mount point outside tmp_path.
    hook = {"exec": {"command": ["python", "-c", "import os; open(os.environ['OUT'] + '/events', 'a').write('prestop\\n')"]}}
    apply(cluster, namespace, pod("graceful", [python("main", TRAPS_SIGTERM, lifecycle={"preStop": hook},
                                                      env=[{"name": "OUT", "value": str(out)}],
                                                      volumeMounts=[{"name": "out", "mountPath": str(out)}])],
                                  volumes=[{"name": "out", "hostPath": {"path": str(out)}}],
                                  terminationGracePeriodSeconds=20))
    wait_for("the container to start", lambda: (out / "events").exists())
    p = get_json(cluster, "pod", "graceful", "-n", namespace)
    pids = _pod_processes(cluster, p["metadata"]["uid"])
    assert len(pids) >= 2, pids  # the container and the child it forked
    assert int(p["status"]["containerStatuses"][0]["containerID"].removeprefix("local://")) in pids
    cluster.kubectl("delete", "pod", "graceful", "-n", namespace, "--wait=true", timeout=60)
    assert (out / "events").read_text().split() == ["started", "prestop", "sigterm"]
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert not (cluster.plane.agent_dir / "pods" / p["metadata"]["uid"]).exists()


def test_deletion_kills_a_process_that_ignores_sigterm_after_the_grace_period(cluster, namespace):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    apply(cluster, namespace, pod("stubborn", [python("main", code)], terminationGracePeriodSeconds=2))
    wait_for("the container to run", lambda: get_json(cluster, "pod", "stubborn", "-n", namespace)["status"].get(
        "phase") == "Running")
    uid = get_json(cluster, "pod", "stubborn", "-n", namespace)["metadata"]["uid"]
    time.sleep(0.5)  # the handler is installed
    pids = _pod_processes(cluster, uid)
    started = time.monotonic()
    cluster.kubectl("delete", "pod", "stubborn", "-n", namespace, "--wait=true", timeout=60)
    took = time.monotonic() - started
    # At least the grace period; under 60 s (kubectl's own limit) shows the kill, as the process would sleep 600 s.
    assert 1.8 <= took < 60, took
    assert pids and not [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def test_down_leaves_no_pod_process_even_after_the_agent_was_killed(tmp_path):
    """A separate plane: its agent is SIGKILLed with a pod running (its forked child survives
    the container's leader), and `down` must still leave nothing behind."""
    from modelship.devcluster.plane import ControlPlane
    from modelship.devcluster.toolchain import ensure_binaries

    state = tmp_path / "plane"
    plane = ControlPlane(state, ensure_binaries(lambda _: None), progress=lambda _: None)
    try:
        plane.up(nodes=[])
        env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
        manifest = pod("sleeper", [python("main", "import subprocess, sys, time; subprocess.Popen("
                                          "[sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)")])
        subprocess.run([str(plane.bin_dir / "kubectl"), "apply", "-f", "-"], input=yaml.safe_dump(manifest),
                       env=env, check=True, capture_output=True, text=True)
        agent_dir = str(plane.agent_dir)
        wait_for("the pod's two processes", lambda: len(processes_with(AGENT_DIR_ENV, agent_dir)) >= 2, timeout=60)
        agent = next(r for r in plane.running() if r.name == "node-agent")
        os.kill(agent.pid, signal.SIGKILL)
        time.sleep(0.5)
        assert processes_with(AGENT_DIR_ENV, agent_dir), "the forked child outlives a killed agent until down"
    finally:
        plane.down(quiet=True)
    assert processes_with(AGENT_DIR_ENV, str(plane.agent_dir)) == []
    assert plane.running() == []


IN_CLUSTER = """
from kubernetes import client, config
config.load_incluster_config()
review = client.AuthenticationV1Api().create_self_subject_review(client.V1SelfSubjectReview())
open('/dev/termination-log', 'w').write(review.status.user_info.username)
"""


def test_the_operator_image_gets_a_working_in_cluster_config(cluster, namespace):
    """The ServiceAccount token (TokenRequest API), the kube-root-ca.crt CA and
    KUBERNETES_SERVICE_HOST/PORT are enough for a client inside the pod, as `modelship run` needs."""
    apply(cluster, namespace, pod("incluster", [{"name": "main", "image": "ghcr.io/modelship/modelship:0.1.0",
                                                 "command": ["python", "-c", IN_CLUSTER]}], restartPolicy="Never"))
    p = wait_for("the pod to finish", lambda: (lambda p: p if p["status"].get("phase") in ("Succeeded", "Failed")
                                               else None)(get_json(cluster, "pod", "incluster", "-n", namespace)))
    terminated = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert p["status"]["phase"] == "Succeeded", terminated
    assert terminated["message"] == f"system:serviceaccount:{namespace}:default"


def test_a_pod_bound_past_the_scheduler_that_does_not_fit_is_rejected(cluster, namespace):
    manifest = pod("huge", [python("main", "pass", resources={"requests": {"cpu": "5"}})], restartPolicy="Never")
    manifest["spec"].pop("nodeSelector")
    manifest["spec"]["nodeName"] = "local-0"  # 4 CPUs
    apply(cluster, namespace, manifest)
    p = wait_for("the rejection", lambda: (lambda p: p if p["status"].get("phase") == "Failed" else None)(
        get_json(cluster, "pod", "huge", "-n", namespace)), timeout=30)
    assert p["status"]["reason"] == "OutOfcpu"
    assert "cpu, requested: 5, used: " in p["status"]["message"] and "capacity: 4" in p["status"]["message"]


def test_pods_that_do_not_select_the_agent_stay_on_kwoks_nodes(cluster, namespace):
    cluster.kubectl("create", "deployment", "elsewhere", "--image=registry.example/web:1", "--replicas=8",
                    "-n", namespace)

    def nodes():
        pods = get_json(cluster, "pods", "-n", namespace, "-l", "app=elsewhere")["items"]
        names = [p["spec"].get("nodeName") for p in pods]
        return names if len(names) == 8 and all(names) else None

    placed = wait_for("8 scheduled pods", nodes)
    assert not [n for n in placed if n.startswith("local-")], placed


def test_a_volume_over_the_installation_does_not_hide_it(cluster, namespace):
    """A checkout under /tmp (a CI clone) and a pod with an emptyDir at /tmp: the container's
    commands and sources are bound back on top of the volume. Here the volume covers the
    folder that holds this installation's virtualenv, whatever that folder is."""
    import sys

    covered = str(Path(sys.prefix).resolve().parent)
    code = ("import modelship, modelship_server, onnxruntime, os; "
            "open('/dev/termination-log', 'w').write(str(sorted(os.listdir(os.path.dirname(os.path.dirname("
            "modelship.__file__))))[:3]))")
    manifest = pod("covered", [python("main", code, volumeMounts=[{"name": "scratch", "mountPath": covered}])],
                   restartPolicy="Never", volumes=[{"name": "scratch", "emptyDir": {}}])
    apply(cluster, namespace, manifest)
    p = wait_for("the pod to finish", lambda: (lambda p: p if p["status"].get("phase") in ("Succeeded", "Failed")
                                               else None)(get_json(cluster, "pod", "covered", "-n", namespace)))
    terminated = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert p["status"]["phase"] == "Succeeded", terminated


def test_hidden_installation_paths_are_found():
    from modelship.devcluster.agent.launch import hidden_by

    paths = ["/opt/py", "/tmp/clone", "/tmp/clone/.venv"]
    assert hidden_by(paths, ["/tmp"]) == ["/tmp/clone", "/tmp/clone/.venv"]
    assert hidden_by(paths, ["/tmp/clone/.venv"]) == ["/tmp/clone/.venv"]
    assert hidden_by(paths, ["/tmp/clon", "/models", "/opt/python"]) == []  # prefixes of names do not count
