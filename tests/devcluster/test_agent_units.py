"""The node agent's decisions, without processes: image mapping, env expansion, back-off,
probe thresholds, pod status, volume keys and mount plans, pod addresses."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelship.devcluster.agent import images
from modelship.devcluster.agent.addresses import AddressPool
from modelship.devcluster.agent.backoff import BackoffPolicy, should_restart
from modelship.devcluster.agent.envvars import ConfigError, container_env, expand
from modelship.devcluster.agent.podstatus import ContainerView, phase, pod_status, terminated, waiting
from modelship.devcluster.agent.probes import ProbeTracker, resolve_port
from modelship.devcluster.agent.volumes import mount_plan, project_keys

NOW = "2026-01-01T00:00:00Z"


# ---- images -------------------------------------------------------------------------------

@pytest.mark.parametrize("image,expected", [
    ("ghcr.io/modelship/modelship-server:0.1.0", images.SERVER),
    ("modelship-server", images.SERVER),
    ("localhost:5000/team/modelship-server@sha256:" + "a" * 64, images.SERVER),
    ("ghcr.io/modelship/modelship:0.1.0", images.OPERATOR),
    ("quay.io/x/modelship-operator:latest", images.OPERATOR),
    ("nvcr.io/nvidia/tritonserver:24.01-py3", None),
    ("registry.example/modelship-server-fork:1", None),
])
def test_image_mapping_ignores_registry_tag_and_digest(image, expected):
    assert images.resolve(image) == expected


def test_command_and_args_follow_the_kubelet_rules():
    assert images.argv(images.SERVER, None, None) == [
        "modelship-server", "--model-repository", "/models", "--cache-dir", "/tmp/modelship-cache"]
    assert images.argv(images.SERVER, None, ["--http-port", "9"]) == ["modelship-server", "--http-port", "9"]
    assert images.argv(images.OPERATOR, ["python", "-m", "x"], None) == ["python", "-m", "x"]
    assert images.argv(images.OPERATOR, ["modelship"], ["run"]) == ["modelship", "run"]


def test_unknown_image_message_names_the_image_and_what_runs():
    message = images.unknown_image_message("nvcr.io/nvidia/tritonserver:24.01-py3")
    assert '"nvcr.io/nvidia/tritonserver:24.01-py3"' in message and "modelship-server" in message


# ---- env ---------------------------------------------------------------------------------

def test_expansion_like_the_kubelet():
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(A) $$", env) == "$(A) $"


POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "x"}},
       "spec": {"nodeName": "local-0"}}


def _env(container, store=None):
    store = store or {}
    return container_env(container, POD, base={"PATH": "/bin"},
                         lookup=lambda kind, name, key: store.get((kind, name), {}).get(key),
                         lookup_all=lambda kind, name: store.get((kind, name)),
                         pod_ip="127.1.0.1", host_ip="127.0.0.1")


def test_env_sources_in_order_with_field_refs_and_references():
    store = {("configmap", "cm"): {"X": "from-cm", "Y": "y"}, ("secret", "s"): {"TOKEN": "t0k"}}
    env = _env({"name": "c", "envFrom": [{"configMapRef": {"name": "cm"}}, {"secretRef": {"name": "s"}, "prefix": "S_"}],
                "env": [
                    {"name": "X", "value": "override-$(Y)"},
                    {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "TOKEN"}}},
                ]}, store)
    assert env["X"] == "override-y" and env["S_TOKEN"] == "t0k" and env["ME"] == "p"
    assert env["IP"] == "127.1.0.1" and env["APP"] == "x" and env["K"] == "t0k" and env["PATH"] == "/bin"


def test_missing_key_is_a_config_error_naming_it_unless_optional():
    with pytest.raises(ConfigError, match=r"key 'nope' of configmap 'cm' not found"):
        _env({"name": "c", "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nope"}}}]},
             {("configmap", "cm"): {}})
    env = _env({"name": "c", "env": [{"name": "A", "valueFrom": {
        "configMapKeyRef": {"name": "cm", "key": "nope", "optional": True}}}]})
    assert "A" not in env
    with pytest.raises(ConfigError, match="fieldRef.fieldPath"):
        _env({"name": "c", "env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}]})


# ---- back-off ------------------------------------------------------------------------------

def test_backoff_restarts_at_once_then_doubles_to_the_cap_and_resets_after_a_long_run():
    policy = BackoffPolicy(initial=10, cap=40, reset_after=600)
    assert [policy.delay(n) for n in range(1, 7)] == [0, 10, 20, 40, 40, 40]
    assert policy.failures_after_run(5, ran_for=3) == 6
    assert policy.failures_after_run(5, ran_for=601) == 1


@pytest.mark.parametrize("policy,code,init,expected", [
    ("Always", 0, False, True), ("Always", 1, False, True),
    ("OnFailure", 0, False, False), ("OnFailure", 2, False, True),
    ("Never", 1, False, False), ("Never", 1, True, False),
    ("Always", 1, True, True), ("Always", 0, True, False),
])
def test_restart_policy(policy, code, init, expected):
    assert should_restart(policy, code, init=init) is expected


# ---- probes --------------------------------------------------------------------------------

def test_probe_thresholds_and_timing():
    tracker = ProbeTracker({"initialDelaySeconds": 5, "periodSeconds": 2, "failureThreshold": 2,
                            "successThreshold": 2}, started_at=100.0)
    assert not tracker.due(104.9) and tracker.due(105.0)
    assert tracker.record(True, now=105) is None  # one success of two
    assert tracker.record(True, now=107) is True and tracker.next_at == 109
    assert tracker.record(False, "HTTP 500", now=109) is True  # one failure of two keeps it
    assert tracker.record(False, "HTTP 500", now=111) is False and tracker.last_message == "HTTP 500"


def test_named_ports_resolve_and_unknown_names_are_errors():
    ports = [{"name": "http", "containerPort": 8000}]
    assert resolve_port("http", ports) == 8000 and resolve_port(8001, ports) == 8001 and resolve_port("8002", []) == 8002
    with pytest.raises(ValueError, match="'grpc'"):
        resolve_port("grpc", ports)


# ---- pod status ----------------------------------------------------------------------------

def _view(name="c", **kw):
    return ContainerView(name, "modelship-server", **kw)


def _done(code):
    return terminated(code, started_at=NOW, finished_at=NOW)


def test_phase_rules():
    running = _view(state={"running": {"startedAt": NOW}})
    assert phase("Always", [], [_view()]) == "Pending"
    assert phase("Always", [_view("i", state={"running": {}})], [_view()]) == "Pending"
    assert phase("Never", [_view("i", state=_done(1))], [_view()]) == "Failed"
    assert phase("Always", [_view("i", state=_done(0))], [running]) == "Running"
    assert phase("Never", [], [_view(state=_done(0))]) == "Succeeded"
    assert phase("Never", [], [_view(state=_done(2))]) == "Failed"
    assert phase("OnFailure", [], [_view(state=_done(0))]) == "Succeeded"
    crash = _view(state=waiting("CrashLoopBackOff"), last_state=_done(1), restart_count=3)
    assert phase("Always", [], [crash]) == "Running"
    assert phase("OnFailure", [], [crash]) == "Running"


def test_ready_conditions_and_transition_times():
    pod = {"spec": {"restartPolicy": "Always"}, "status": {"conditions": [
        {"type": "Ready", "status": "False", "lastTransitionTime": "2020-01-01T00:00:00Z"},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]}}
    unready = _view(state={"running": {"startedAt": NOW}}, ready=False, started=True)
    status = pod_status(pod, init=[], containers=[unready], sandbox_ready=True, pod_ip="127.1.0.1",
                        host_ip="127.0.0.1", start_time=NOW, now=NOW)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "ContainersNotReady"
    assert conditions["Ready"]["message"] == "containers with unready status: [c]"
    assert conditions["ContainersReady"]["status"] == "False"
    assert conditions["Ready"]["lastTransitionTime"] == "2020-01-01T00:00:00Z"  # status did not move
    assert conditions["PodScheduled"]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert status["podIP"] == "127.1.0.1" and status["podIPs"] == [{"ip": "127.1.0.1"}]
    ready = pod_status(pod, init=[], containers=[_view(state={"running": {}}, ready=True)], sandbox_ready=True,
                       pod_ip="127.1.0.1", host_ip="127.0.0.1", start_time=NOW, now=NOW)
    assert {c["type"]: c for c in ready["conditions"]}["Ready"] == {
        "type": "Ready", "status": "True", "lastTransitionTime": NOW, "lastProbeTime": None}


def test_terminated_state_reasons_and_signals():
    assert _done(0)["terminated"]["reason"] == "Completed"
    assert _done(3)["terminated"]["reason"] == "Error"
    killed = terminated(-9, started_at=NOW, finished_at=NOW)["terminated"]
    assert killed["exitCode"] == 137 and killed["signal"] == 9


# ---- volumes, mounts, addresses ------------------------------------------------------------

def test_projected_keys_all_or_listed_items_with_modes():
    data = {"a": b"1", "b": b"2"}
    assert project_keys(data, None, 0o644, "v") == {"a": (b"1", 0o644), "b": (b"2", 0o644)}
    assert project_keys(data, [{"key": "b", "path": "sub/b.txt", "mode": 0o400}], 0o644, "v") == {
        "sub/b.txt": (b"2", 0o400)}
    with pytest.raises(ConfigError, match=r"volumes\[x\].items: key 'c' not found \(keys: a, b\)"):
        project_keys(data, [{"key": "c"}], 0o644, "volumes[x]")


def test_mount_plan_binds_volumes_and_the_termination_log(tmp_path: Path):
    volumes = {"models": tmp_path / "models", "cfg": tmp_path / "cfg"}
    plan = mount_plan({"name": "c", "volumeMounts": [
        {"name": "models", "mountPath": "/models"}, {"name": "cfg", "mountPath": "/etc/x", "readOnly": True}]},
        volumes, tmp_path / "tl")
    assert plan == [
        {"source": str(tmp_path / "models"), "target": "/models", "readOnly": False},
        {"source": str(tmp_path / "cfg"), "target": "/etc/x", "readOnly": True},
        {"source": str(tmp_path / "tl"), "target": "/dev/termination-log", "readOnly": False},
    ]
    with pytest.raises(ConfigError, match=r"no volume named 'gone'"):
        mount_plan({"name": "c", "volumeMounts": [{"name": "gone", "mountPath": "/g"}]}, volumes, tmp_path / "tl")


def test_addresses_are_distinct_non_loopback_and_reused_after_release():
    pool = AddressPool("/some/state")
    first, second = pool.allocate(), pool.allocate()
    assert first != second and pool.cidr.endswith(".0/24")
    assert ipaddress.ip_address(first) in ipaddress.ip_network("198.18.0.0/15")
    assert ipaddress.ip_address(first) in ipaddress.ip_network(pool.cidr)
    pool.release(first)
    assert pool.allocate() == first
    fallback = AddressPool("/some/state", routed=False)
    assert ipaddress.ip_address(fallback.allocate()).is_loopback


def test_a_block_held_by_a_live_agent_is_skipped_and_a_dead_holders_is_reclaimed(tmp_path: Path):
    from modelship.devcluster.agent.addresses import _claim

    def pool_for(block):
        return AddressPool("k", block=block)

    registry = tmp_path / "routes"
    registry.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)  # modelship.devcluster.agent"])
    try:
        while b"modelship.devcluster.agent" not in Path(f"/proc/{live.pid}/cmdline").read_bytes():
            time.sleep(0.01)  # until the exec: before it, /proc shows pytest's command line
        (registry / pool_for(7).cidr.replace("/", "_")).write_text(str(live.pid))
        (registry / pool_for(8).cidr.replace("/", "_")).write_text("999999999")  # no such process
        removed = []
        claimed = _claim(pool_for, 7, registry, unroute=removed.append)
    finally:
        live.kill()
        live.wait()
    assert claimed.cidr == pool_for(8).cidr and removed == [claimed.cidr]  # the dead holder's route goes
    assert (registry / claimed.cidr.replace("/", "_")).read_text() == str(os.getpid())


def test_quantities_and_admission_like_a_kubelet():
    from decimal import Decimal

    from modelship.devcluster.agent.admission import admit, quantity

    assert quantity("100m") == Decimal("0.1") and quantity("1.5Gi") == 1.5 * 2 ** 30 and quantity(4) == 4
    with pytest.raises(ValueError, match="not a Kubernetes quantity: '1 cpu'"):
        quantity("1 cpu")

    def pod_with(cpu, init_cpu=None):
        spec = {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]}
        if init_cpu:
            spec["initContainers"] = [{"name": "i", "resources": {"requests": {"cpu": init_cpu}}}]
        return {"spec": spec}

    capacity = {"cpu": "4", "memory": "8Gi", "pods": "16"}
    assert admit(pod_with("2"), [pod_with("2")], capacity) is None
    assert admit(pod_with("2"), [pod_with("2"), pod_with("100m")], capacity) == (
        "OutOfcpu", "Pod was rejected: Node didn't have enough resource: cpu, requested: 2, used: 2.1, capacity: 4")
    assert admit(pod_with("1", init_cpu="5"), [], capacity)[0] == "OutOfcpu"  # the largest init container counts
    bare = {"spec": {"containers": [{"name": "c"}]}}
    assert admit(bare, [bare] * 15, capacity) is None
    assert admit(bare, [bare] * 16, capacity)[0] == "OutOfpods"


def test_grpc_probe_speaks_the_standard_health_service():
    """A real gRPC server (grpcio) with a generic handler for grpc.health.v1.Health/Check."""
    from concurrent import futures

    import grpc

    from modelship.devcluster.agent.probes import check

    statuses = {b"": b"\x08\x01", b"\x0a\x04down": b"\x08\x02"}  # "" -> SERVING, "down" -> NOT_SERVING
    handler = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(lambda request, context: statuses[request])})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        common = {"pod_ip": "127.0.0.1", "ports": [], "pid": 0, "env": {}, "timeout": 2.0}
        assert check({"grpc": {"port": port}}, **common) == (True, "")
        assert check({"grpc": {"port": port, "service": "down"}}, **common) == (
            False, "service not serving (status 2)")
    finally:
        server.stop(0)
    ok, message = check({"grpc": {"port": port}}, **common)
    assert not ok and "gRPC health check failed" in message


def test_https_probe_does_tls_without_checking_the_certificate(tmp_path):
    """As the kubelet: scheme HTTPS speaks TLS to a self-signed server; plain HTTP to it fails."""
    import http.server
    import ssl
    import threading

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))
    from certs import Authority

    from modelship.devcluster.agent.probes import check

    folder = Authority().write_secret(tmp_path / "tls")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(folder / "tls.crt", folder / "tls.key")

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ok)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        common = {"pod_ip": "127.0.0.1", "ports": [], "pid": 0, "env": {}, "timeout": 5.0}
        port = server.server_address[1]
        assert check({"httpGet": {"path": "/", "port": port, "scheme": "HTTPS"}}, **common) == (True, "")
        ok, _ = check({"httpGet": {"path": "/", "port": port}}, **common)
        assert not ok
    finally:
        server.shutdown()
        server.server_close()
