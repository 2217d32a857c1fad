"""The canary's and the monitoring loop's status writes through the fault proxy (faultproxy.py):
409s, 429 with Retry-After, 5xx, resets before a write and after it (the write landed, its
answer was lost). Once the faults stop: no traceback, one of each child, the canary passed its
steps in order (none skipped, none repeated, never back) and the monitoring conditions say
what the pods export.

The reconciler runs in this process with the operator's RBAC, its API calls through the proxy;
a failed reconcile is retried the way the controller's queue retries it (the next tick). The
cache is filled by LISTs on a direct client, as the operator's watches fill it. kwok's pods
serve nothing, so the verdicts the canary machine reads come from `passing_verdict`, a stand-in
for canary/observe.py's scrape (the scrape and analysis over real servers:
tests/e2e/test_canary.py); the monitoring series come from a real prometheus_client exporter, as
in tests/autoscale/test_monitoring_loop.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import re
import socket
import time
from typing import Any

import kubernetes
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from faultproxy import WRITE_METHODS, FaultProxy, Rule, proxied_kubeconfig
from kube_helpers import children, get
from modelship import contracts
from modelship.autoscale.monitoring import Monitor
from modelship.canary.analysis import PASSED, Verdict
from modelship.canary.machine import PROGRESSING, CanaryState
from modelship.controller.main import prime
from modelship.controller.reconcile import Reconciler
from modelship.kube.cache import Key, Store
from modelship.kube.client import KubeClient, KubeError
from modelship.render import names
from msvc_samples import SHA

pytestmark = pytest.mark.cluster


# Every path but Events': the operator posts an Event once and never retries it (a courtesy,
# docs/reliability.md), so a fault there loses it by design and would hide what the tests count.
NOT_EVENTS = r"^(?!.*/events(/|$))"


def write_faults() -> list[Rule]:
    """Every kind of answer a write can meet: about one write in three fails, a third of those
    after the write landed (the answer lost)."""
    return [
        Rule("status", rate=0.08, status=409, methods=WRITE_METHODS, path=NOT_EVENTS),
        Rule("status", rate=0.05, status=429, retry_after=1, watch=False, path=NOT_EVENTS),
        Rule("status", rate=0.04, status=500, watch=False, path=NOT_EVENTS),
        Rule("status", rate=0.03, status=503, watch=False, path=NOT_EVENTS),
        Rule("reset", rate=0.03, watch=False, path=NOT_EVENTS),
        Rule("reset-after", rate=0.12, methods=WRITE_METHODS, path=NOT_EVENTS),
    ]


def clients(cluster: Any, operator_kubeconfig: pathlib.Path, proxy: FaultProxy,
            tmp_path: pathlib.Path) -> tuple[KubeClient, KubeClient]:
    """(through the proxy with the operator's account, direct with the admin's)."""
    path = tmp_path / "proxied-kubeconfig"
    path.write_text(yaml.safe_dump(proxied_kubeconfig(yaml.safe_load(operator_kubeconfig.read_text()), proxy.url)))
    return (KubeClient(kubernetes.config.new_client_from_config(config_file=str(path))),
            KubeClient(kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))))


async def tick(reconciler: Reconciler, direct: KubeClient, store: Store, key: Key, failures: list[str]) -> None:
    """One pass of the controller for `key`: refresh the cache, reconcile; a KubeError is a retry."""
    await prime(direct, store, [key[0]])
    try:
        await reconciler.reconcile(key)
    except KubeError as error:
        assert error.transient, f"a fault was taken for a permanent error: {error}"
        failures.append(str(error.status))


def events(cluster: Any, namespace: str) -> list[tuple[str, str]]:
    return [(e["reason"], e["message"]) for e in get(cluster, "events", "-n", namespace)["items"]]


def no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, "\n".join(f"{r.name}: {r.getMessage()}" for r in bad[:5])


def canary_service(name: str, batch: int) -> dict[str, Any]:
    return {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": name},
        "spec": {"model": {"uri": f"https://models.example.com/{name}.onnx", "sha256": SHA}, "replicas": 2,
                 "batching": {"maxBatchSize": batch},
                 "rollout": {"strategy": "Canary", "canary": {"steps": [{"weight": 25, "pauseSeconds": 5},
                                                                        {"weight": 50, "pauseSeconds": 5}]}}},
    }


# The Event of a condition's transition ("Progressing=True: ...") may share its reason with the
# canary's own step Event; only the latter is counted.
CONDITION_EVENT = re.compile(r"^[A-Za-z]+=(True|False|Unknown): ")
ORDER = [(PROGRESSING, 0), (PROGRESSING, 1), ("Promoting", 1), ("Promoted", 1)]


def test_a_canary_steps_in_order_through_api_faults(
        cluster: Any, operator_kubeconfig: pathlib.Path, namespace: str, proxy: FaultProxy, tmp_path: pathlib.Path,
        caplog: pytest.LogCaptureFixture) -> None:
    name = "stepping"
    key = (namespace, name)
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(canary_service(name, 8)))

    def passing_verdict(k: Key) -> tuple[str, int, Verdict] | None:
        """Every step passes, judged on the step the cache shows, as the observer judges."""
        state = CanaryState.from_status(((store.msvc(k) or {}).get("status") or {}).get("canary"))
        if state is None or state.phase != PROGRESSING:
            return None
        return state.revision, state.step, Verdict(PASSED, f"step {state.step + 1} looked fine")

    store = Store()
    seen: list[tuple[str, int, str]] = []  # (phase, step index, stepStartedAt) as the API server held them
    failures: list[str] = []

    def server_state() -> CanaryState | None:
        body = cluster.api("GET", f"/apis/modelship.dev/v1alpha1/namespaces/{namespace}/modelservices/{name}")
        return CanaryState.from_status((body.get("status") or {}).get("canary"))

    async def scenario() -> None:
        proxied, direct = clients(cluster, operator_kubeconfig, proxy, tmp_path)
        reconciler = Reconciler(kube=proxied, store=store, canary_verdict=passing_verdict)
        try:
            deadline = time.monotonic() + 180
            while not _stable_ready(store, key):  # the first spec rolls out directly, no faults yet
                assert time.monotonic() < deadline, "the first spec never rolled out"
                await tick(reconciler, direct, store, key, failures)
                await asyncio.sleep(0.5)
            cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-",
                            input=json.dumps(canary_service(name, 16)))
            proxy.set_rules(*write_faults())
            deadline = time.monotonic() + 300
            while True:
                assert time.monotonic() < deadline, f"the canary never promoted: {seen[-5:]}"
                await tick(reconciler, direct, store, key, failures)
                state = server_state()
                if state is not None and (not seen or seen[-1] != (state.phase, state.step, state.step_started_at)):
                    seen.append((state.phase, state.step, state.step_started_at))
                if state is not None and state.phase in ("Promoting", "Promoted"):
                    proxy.set_rules()  # the steps were taken through the faults; the stable rollout goes quietly
                if state is not None and state.phase == "Promoted":
                    break
                await asyncio.sleep(0.3)
            proxy.set_rules()
            for _ in range(3):  # a few quiet passes: whatever a fault left half done is finished
                await tick(reconciler, direct, store, key, failures)
        finally:
            proxy.set_rules()
            proxied.close()
            direct.close()

    asyncio.run(scenario())
    drawn = {s.fault for s in proxy.requests() if s.fault}
    print(f"{len(proxy.requests())} requests through the proxy, faults {sorted(drawn)}; reconciles retried: "
          f"{len(failures)}; states seen: {seen}")
    assert failures and drawn & {"409", "429", "500", "503", "reset", "reset-after"}, drawn
    # In order, none skipped, never back; a step is entered once (its start time never rewritten).
    positions = [ORDER.index((phase, step)) for phase, step, _ in seen]
    assert positions == sorted(positions), seen
    assert {p for p in positions} >= {0, 1, 3}, seen
    starts = {step: {at for phase, s, at in seen if s == step and phase == PROGRESSING} for step in (0, 1)}
    assert all(len(at) == 1 for at in starts.values()), starts
    posted = get(cluster, "events", "-n", namespace)["items"]
    for reason in ("CanaryStarted", "CanaryStep", "CanaryPromoting", "CanaryPromoted"):
        mine = [(e["metadata"]["name"], e.get("eventTime") or e.get("firstTimestamp"), e["message"])
                for e in posted if e["reason"] == reason and not CONDITION_EVENT.match(e["message"])]
        assert len(mine) == 1, mine  # neither lost with a write whose answer was cut, nor doubled
    owned = children(cluster, namespace, name)
    assert [d["metadata"]["name"] for d in owned["deployments"]] == [name], owned["deployments"]
    config = next(c for c in owned["configmaps"] if c["metadata"]["name"] == names.model_config(name))
    assert "max_batch_size: 16" in config["data"]["config.pbtxt"]
    assert not any(c["metadata"]["name"] == names.canary_model_config(name) for c in owned["configmaps"])
    no_error_logged(caplog)


def _stable_ready(store: Store, key: Key) -> bool:
    deployment = store.child(key, "Deployment", key[1])
    status = (deployment or {}).get("status") or {}
    return bool(deployment) and status.get("readyReplicas") == 2 and status.get("updatedReplicas") == 2


# --- the monitoring loop ------------------------------------------------------------------------

MODEL = "churn"


class Exporter:
    """The drift series of the contract on a real HTTP endpoint, values set by the test."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.score = Gauge(contracts.DRIFT_SCORE_METRIC, "drift", ["model", "tensor", "test"], registry=r)
        self.window = Gauge(contracts.DRIFT_WINDOW_METRIC, "window", ["model", "tensor"], registry=r)
        Gauge(contracts.DRIFT_REFERENCE_METRIC, "reference", ["model"], registry=r).labels(model=MODEL).set(200)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=r)

    def drift(self, tensor: str, psi: float, ks: float) -> None:
        self.score.labels(model=MODEL, tensor=tensor, test="psi").set(psi)
        self.score.labels(model=MODEL, tensor=tensor, test="ks").set(ks)
        self.window.labels(model=MODEL, tensor=tensor).set(100)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def monitored_service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": name},
        "spec": {"model": {"uri": "https://models.example/churn.onnx", "sha256": SHA, "name": MODEL},
                 "monitoring": {"enabled": True, "window": 100, "reference": {"firstRequests": 200}}},
    }


def test_monitoring_conditions_end_truthful_after_api_faults(
        cluster: Any, operator_kubeconfig: pathlib.Path, namespace: str, proxy: FaultProxy, tmp_path: pathlib.Path,
        caplog: pytest.LogCaptureFixture) -> None:
    name = "watched"
    key = (namespace, name)
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(monitored_service(name)))
    exporter = Exporter()
    store = Store()
    failures: list[str] = []

    def drift_condition() -> dict[str, Any] | None:
        body = cluster.api("GET", f"/apis/modelship.dev/v1alpha1/namespaces/{namespace}/modelservices/{name}")
        return next((c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == "DataDrift"), None)

    async def scenario() -> None:
        proxied, direct = clients(cluster, operator_kubeconfig, proxy, tmp_path)
        monitor = Monitor(store=store, wake=lambda k: None, scrape_port=exporter.port)
        reconciler = Reconciler(kube=proxied, store=store, extra_status=lambda k, m, u: monitor.status_for(k, m))

        async def step() -> None:
            """The monitor scrapes the exporter as the pod (kwok's pod serves nothing), then a reconcile."""
            await prime(direct, store, [namespace])
            for pod in store.pods(key):
                store.upsert("Pod", {**pod, "status": {**(pod.get("status") or {}), "podIP": "127.0.0.1"}})
            await monitor.step(key)
            await tick(reconciler, direct, store, key, failures)

        async def settle(status: str, tensor: str | None, what: str) -> None:
            deadline = time.monotonic() + 120
            while True:
                await step()
                drift = drift_condition()
                if drift is not None and drift["status"] == status and (tensor is None or tensor in drift["message"]):
                    return
                assert time.monotonic() < deadline, f"{what}: DataDrift is {drift}"
                await asyncio.sleep(0.3)

        try:
            for tensor in ("age", "income"):
                exporter.drift(tensor, psi=0.03, ks=0.05)
            deadline = time.monotonic() + 180
            while not any(p for p in store.pods(key) if _ready(p)):
                assert time.monotonic() < deadline, "no ready pod"
                await tick(reconciler, direct, store, key, failures)
                await asyncio.sleep(0.5)
            await settle("False", None, "before the faults")
            status_path = rf"/modelservices/{name}/status$"
            patch = frozenset({"PATCH"})
            first_answers = [Rule("reset-after", path=status_path, methods=patch),  # landed, answer lost
                             Rule("status", status=409, path=status_path, methods=patch),
                             Rule("status", status=429, retry_after=1, path=status_path, methods=patch)]
            for flip, first in enumerate(first_answers):  # drift comes and goes while the writes fail
                drifted = flip % 2 == 0
                exporter.drift("income", psi=0.9 if drifted else 0.03, ks=0.4 if drifted else 0.05)
                proxy.set_rules(first)  # the write of the change meets this for sure ...
                await step()
                proxy.set_rules(*write_faults())  # ... and the next ones the random mix
                for _ in range(15):
                    await step()
                    await asyncio.sleep(0.2)
                proxy.set_rules()
                await settle("True" if drifted else "False", "income" if drifted else None, f"after flip {flip}")
        finally:
            proxy.set_rules()
            await monitor.stop()
            proxied.close()
            direct.close()
            exporter.close()

    asyncio.run(scenario())
    drawn = {s.fault for s in proxy.requests() if s.fault}
    print(f"{len(proxy.requests())} requests through the proxy, faults {sorted(drawn)}; reconciles retried: "
          f"{failures}")
    assert {"0", "409", "429"} <= set(failures), failures
    transitions = [m.split(":")[0] for _, m in events(cluster, namespace) if m.startswith("DataDrift=")]
    # Drift came twice: one Event each time, none lost with a write whose answer was cut, none doubled.
    assert transitions.count("DataDrift=True") == 2, transitions
    owned = children(cluster, namespace, name)
    assert len(owned["deployments"]) == 1 and len(owned["services"]) == 1, owned
    no_error_logged(caplog)


def _ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def test_a_canary_step_whose_status_answer_was_lost_is_not_taken_again(
        cluster: Any, operator_kubeconfig: pathlib.Path, namespace: str, proxy: FaultProxy, tmp_path: pathlib.Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The one write that matters, cut on purpose: the status patch that moves the canary to step
    2 lands, and its answer is lost. The next reconcile must carry on from step 2 (the API server's
    truth), not from step 1 (the last write it knows landed), and post the step's Event once."""
    name = "cut"
    key = (namespace, name)
    status_path = rf"/modelservices/{name}/status$"
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(canary_service(name, 8)))
    store = Store()
    failures: list[str] = []

    def passing_verdict(k: Key) -> tuple[str, int, Verdict] | None:
        state = CanaryState.from_status(((store.msvc(k) or {}).get("status") or {}).get("canary"))
        if state is None or state.phase != PROGRESSING:
            return None
        return state.revision, state.step, Verdict(PASSED, f"step {state.step + 1} looked fine")

    def server_state() -> CanaryState | None:
        body = cluster.api("GET", f"/apis/modelship.dev/v1alpha1/namespaces/{namespace}/modelservices/{name}")
        return CanaryState.from_status((body.get("status") or {}).get("canary"))

    async def scenario() -> list[CanaryState | None]:
        proxied, direct = clients(cluster, operator_kubeconfig, proxy, tmp_path)
        reconciler = Reconciler(kube=proxied, store=store, canary_verdict=passing_verdict)
        try:
            deadline = time.monotonic() + 180
            while not _stable_ready(store, key):
                assert time.monotonic() < deadline, "the first spec never rolled out"
                await tick(reconciler, direct, store, key, failures)
                await asyncio.sleep(0.5)
            cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-",
                            input=json.dumps(canary_service(name, 16)))
            deadline = time.monotonic() + 120
            while (state := server_state()) is None or state.phase != PROGRESSING:
                assert time.monotonic() < deadline, "the canary never started"
                await tick(reconciler, direct, store, key, failures)
                await asyncio.sleep(0.3)
            await asyncio.sleep(5.5)  # step 1's pause, so the next reconcile takes step 2
            await prime(direct, store, [namespace])
            proxy.set_rules(Rule("reset-after", path=status_path, methods=frozenset({"PATCH"})))
            await tick(reconciler, direct, store, key, failures)
            proxy.set_rules()
            assert failures == ["0"], failures  # the answer was lost ...
            after_cut = server_state()
            states = [after_cut]
            for _ in range(4):  # ... and the reconciles after it see the cache at step 2
                await tick(reconciler, direct, store, key, failures)
                states.append(server_state())
                await asyncio.sleep(0.3)
            return states
        finally:
            proxy.set_rules()
            proxied.close()
            direct.close()

    states = asyncio.run(scenario())
    print(f"states after the cut: {[(s.phase, s.step, s.step_started_at) if s else None for s in states]}")
    assert states[0] is not None and (states[0].phase, states[0].step) == (PROGRESSING, 1), states[0]  # it landed
    assert all(s is not None and s.step == 1 and s.step_started_at == states[0].step_started_at for s in states), states
    steps = [m for r, m in events(cluster, namespace) if r == "CanaryStep" and not CONDITION_EVENT.match(m)]
    assert len(steps) == 1, steps  # held back with the lost answer, posted once
    no_error_logged(caplog)
