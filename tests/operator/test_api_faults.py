"""The operator on the real plane behind the fault-injecting proxy (faultproxy.py): conflicts,
throttling with Retry-After, 5xx, resets before and after the write, watch streams cut and
resumes answered 410 Gone. Once the faults stop, everything converges with exactly one of each
child, nothing is left for deleted ModelServices, and the log holds no traceback.

A shorter form of the acceptance run (benchmarks/api_faults.py: 50 ModelServices, 5 minutes),
sized for a loaded 2-core machine."""

from __future__ import annotations

import pathlib
import random
import threading
import time
from typing import Any

import pytest
import yaml

from faultproxy import WRITE_METHODS, FaultProxy, Rule, proxied_kubeconfig
from kube_helpers import OperatorProcess, apply, children, get, is_ready, wait_for
from msvc_samples import SHA

pytestmark = pytest.mark.cluster

MSVC_PATH = r"/modelservices(/|$)"


def manifest(name: str, batch: int = 8) -> dict[str, Any]:
    return {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": name},
        "spec": {"model": {"uri": f"https://models.example.com/{name}.onnx", "sha256": SHA}, "replicas": 1,
                 "batching": {"maxBatchSize": batch}},
    }


def acceptance_faults() -> list[Rule]:
    """The acceptance run's mix, first match wins: 30% of writes 409, 10% of requests 429 with
    Retry-After, 20% 5xx, resets before and after a write, a few stalls, 410 on watch resumes."""
    return [
        Rule("gone", rate=0.5, watch=True),
        Rule("status", rate=0.30, status=409, methods=WRITE_METHODS),
        Rule("status", rate=0.10, status=429, retry_after=1, watch=False),
        Rule("status", rate=0.10, status=500, watch=False),
        Rule("status", rate=0.10, status=503, watch=False),
        Rule("reset", rate=0.05),
        Rule("reset-after", rate=0.05, methods=WRITE_METHODS),
        Rule("stall", rate=0.005, watch=False, stall_seconds=35),
    ]


class WatchCutter:
    """Cuts every open watch stream every `every` seconds until stopped."""

    def __init__(self, proxy: FaultProxy, every: float) -> None:
        self.proxy, self.every, self.cuts = proxy, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.cuts += self.proxy.cut_watches()

    def __enter__(self) -> WatchCutter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def proxied_operator(operator_kubeconfig: pathlib.Path, proxy: FaultProxy, tmp_path: pathlib.Path,
                     namespace: str, *args: str) -> OperatorProcess:
    """The operator behind `proxy`, watching only `namespace` (earlier tests' namespaces may
    still be terminating; their ModelServices would only add noise to what the proxy counts)."""
    config = proxied_kubeconfig(yaml.safe_load(operator_kubeconfig.read_text()), proxy.url)
    path = tmp_path / "proxied-kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return OperatorProcess(path, tmp_path / "operator.log", args=("--namespace", namespace, *args))


def child_counts(cluster: Any, namespace: str, name: str, uid: str) -> dict[str, int]:
    """Children of `name` by kind, counting only those controlled by `uid` (and all, to catch strays)."""
    out = {}
    for kind, items in children(cluster, namespace, name).items():
        owned = [i for i in items if any(r.get("uid") == uid and r.get("controller")
                                         for r in i["metadata"].get("ownerReferences") or [])]
        out[kind] = len(owned) if len(owned) == len(items) else -len(items)  # negative: a stray
    return out


def no_traceback(log: str) -> None:
    lines = [i for i, line in enumerate(log.splitlines()) if "Traceback" in line]
    assert not lines, "traceback in the operator log:\n" + "\n".join(log.splitlines()[lines[0]:lines[0] + 30])


def test_churn_under_api_faults_converges_with_one_of_each_child(
        cluster: Any, operator_kubeconfig: pathlib.Path, namespace: str, proxy: FaultProxy, tmp_path: pathlib.Path
) -> None:
    rng = random.Random(proxy.rng.random())
    op = proxied_operator(operator_kubeconfig, proxy, tmp_path, namespace, "--resync-seconds", "10")
    names = [f"churn-{i}" for i in range(8)]
    batch = dict.fromkeys(names, 8)
    deleted: set[str] = set()
    try:
        op.start()
        proxy.set_rules(*acceptance_faults())
        with WatchCutter(proxy, every=10) as cutter:
            for name in names:
                apply(cluster, manifest(name), namespace)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # create/update/delete churn through the faults
                name = rng.choice(names)
                action = rng.random()
                if name in deleted or action < 0.6:
                    batch[name] = 8 if name in deleted else (16 if batch[name] == 8 else 8)
                    apply(cluster, manifest(name, batch[name]), namespace)
                    deleted.discard(name)
                else:
                    cluster.kubectl("delete", "msvc", name, "-n", namespace, "--wait=false")
                    deleted.add(name)
                time.sleep(rng.uniform(1.0, 3.0))
        proxy.set_rules()
        faults = [s for s in proxy.requests() if s.fault]
        print(f"{len(proxy.requests())} requests, {len(faults)} faulted, {cutter.cuts} watch streams cut")
        drawn = {s.fault for s in faults}
        assert drawn >= {"409", "429", "reset", "reset-after", "gone"} and drawn & {"500", "503"}, drawn

        live = sorted(set(names) - deleted)

        def converged() -> list[str] | bool:
            items = {m["metadata"]["name"]: m for m in get(cluster, "msvc", "-n", namespace)["items"]}
            waiting = [n for n in live if n not in items or not is_ready(items[n])]
            return not waiting or False

        wait_for(converged, timeout=120, interval=2, what="every ModelService Ready after the faults stopped")
        expected = {"deployments": 1, "services": 1, "configmaps": 1, "poddisruptionbudgets": 1, "networkpolicies": 0}
        msvcs = {m["metadata"]["name"]: m for m in get(cluster, "msvc", "-n", namespace)["items"]}
        for name in live:
            assert child_counts(cluster, namespace, name, msvcs[name]["metadata"]["uid"]) == expected, name
            config = children(cluster, namespace, name)["configmaps"][0]["data"]["config.pbtxt"]
            assert f"max_batch_size: {batch[name]}" in config, name
        wait_for(lambda: all(not any(children(cluster, namespace, n).values()) for n in deleted), timeout=60,
                 what="no child left of a deleted ModelService")
    finally:
        op.stop()
        print(op.log()[-3000:])
    no_traceback(op.log())


def test_a_modelservice_deleted_while_the_watch_is_cut_gets_no_write_after_the_relist(
        cluster: Any, operator_kubeconfig: pathlib.Path, namespace: str, proxy: FaultProxy, tmp_path: pathlib.Path
) -> None:
    op = proxied_operator(operator_kubeconfig, proxy, tmp_path, namespace, "--resync-seconds", "3")
    try:
        op.start()
        for name in ("kept", "doomed"):
            apply(cluster, manifest(name), namespace)
        wait_for(lambda: all(is_ready(m) for m in get(cluster, "msvc", "-n", namespace)["items"])
                 and len(get(cluster, "msvc", "-n", namespace)["items"]) == 2, timeout=90,
                 what="both Ready")
        # The ModelService watch goes dark (every attempt reset); the delete happens unseen.
        proxy.set_rules(Rule("reset", watch=True, path=MSVC_PATH))
        assert proxy.cut_watches() >= 1
        cluster.kubectl("delete", "msvc", "doomed", "-n", namespace, "--wait=true", "--timeout=30s")
        time.sleep(5)  # resyncs and child events reach the operator meanwhile, with "doomed" still cached
        # Its resume is too old: kopf lists again, and the list no longer holds "doomed".
        cut_at = time.time()
        proxy.set_rules(Rule("gone", watch=True, path=MSVC_PATH))

        def relisted() -> bool:
            return any(s.method == "GET" and "watch=" not in s.query and s.path.endswith("/modelservices")
                       and s.at > cut_at for s in proxy.requests())

        wait_for(relisted, timeout=60, what="kopf listing ModelServices again after the 410")
        proxy.set_rules()
        wait_for(lambda: "doomed is gone" in op.log() or "doomed was deleted while the watch" in op.log(),
                 timeout=30, what="the operator forgetting the deleted ModelService")
        settled = time.time()
        apply(cluster, manifest("kept", 16), namespace)  # the operator is busy and awake
        wait_for(lambda: is_ready(get(cluster, "msvc", "kept", "-n", namespace)), timeout=60, what="kept Ready again")
        time.sleep(10)  # three resyncs
        late = [s for s in proxy.requests(since=settled) if s.write and "doomed" in s.path]
        assert not late, f"writes for the deleted ModelService after the relist: {late}"
        assert any(s.write and "kept" in s.path for s in proxy.requests(since=settled)), "the operator kept working"
    finally:
        op.stop()
        print(op.log()[-3000:])
    no_traceback(op.log())
    # What was re-applied while the operator could not know names a dead owner: the garbage collector takes it.
    wait_for(lambda: not any(children(cluster, namespace, "doomed").values()), timeout=60,
             what="no child left of the deleted ModelService")


def test_a_429_with_retry_after_holds_the_next_attempt_that_long(
        cluster: Any, operator_kubeconfig: pathlib.Path, namespace: str, proxy: FaultProxy, tmp_path: pathlib.Path
) -> None:
    """Every status patch is throttled for a while: each next attempt comes no sooner than the
    server asked, although the children's events keep waking the ModelService meanwhile."""
    op = proxied_operator(operator_kubeconfig, proxy, tmp_path, namespace)
    status_path = r"/modelservices/patient/status$"
    try:
        op.start()
        wait_for(lambda: "operator started" in op.log(), timeout=60, what="the operator started")
        proxy.set_rules(Rule("status", status=429, retry_after=4, methods=frozenset({"PATCH"}), path=status_path))
        apply(cluster, manifest("patient"), namespace)

        def attempts() -> list[Any]:
            return [s for s in proxy.requests() if s.method == "PATCH" and s.path.endswith("/patient/status")]

        wait_for(lambda: len(attempts()) >= 3, timeout=60, what="three throttled status patches")
        proxy.set_rules()
        wait_for(lambda: is_ready(get(cluster, "msvc", "patient", "-n", namespace)), timeout=60, what="Ready")
        seen = attempts()
        gaps = [later.at - earlier.at for earlier, later in zip(seen, seen[1:], strict=False) if earlier.fault == "429"]
        assert gaps and min(gaps) >= 4.0, gaps
        assert "HTTP 429" in op.log()
    finally:
        op.stop()
        print(op.log()[-3000:])
    no_traceback(op.log())
