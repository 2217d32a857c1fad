"""Two operator replicas on the real plane, each behind its own proxy (faultproxy.py, no
faults: it only records): one writes at a time, a standby takes over when the leader is
killed, a SIGTERM hands the Lease over at once, and idle replicas write nothing but the Lease."""

from __future__ import annotations

import os
import pathlib
import time
import uuid
from typing import Any, Iterator

import pytest
import yaml

from accounts import plane_ca
from faultproxy import FaultProxy, proxied_kubeconfig
from kube_helpers import OperatorProcess, apply, get, is_ready, wait_for
from test_api_faults import manifest, no_traceback

pytestmark = pytest.mark.cluster

LEASES = "/leases"  # the collection (POST) and one Lease (PUT)
RELEASE_NAMESPACE = "modelship-system"  # where conftest.operator_kubeconfig binds the chart's roles


@pytest.fixture
def replicas(cluster: Any, operator_kubeconfig: pathlib.Path, tmp_path: pathlib.Path, namespace: str
             ) -> Iterator[tuple[str, list[OperatorProcess], list[FaultProxy]]]:
    """Two replicas on one Lease, each watching only the test's namespace (earlier tests'
    namespaces may still be terminating, and their ModelServices are no business of these)."""
    lease = f"modelship-test-{uuid.uuid4().hex[:6]}"
    proxies = [FaultProxy(cluster.server, plane_ca(cluster)) for _ in range(2)]
    ops = []
    for i, proxy in enumerate(proxies):
        proxy.start()
        path = tmp_path / f"kubeconfig-{i}"
        path.write_text(yaml.safe_dump(proxied_kubeconfig(yaml.safe_load(operator_kubeconfig.read_text()), proxy.url)))
        ops.append(OperatorProcess(path, tmp_path / f"operator-{i}.log", args=(
            "--namespace", namespace, "--resync-seconds", "5", "--metrics-port", "0",
            "--leader-election-namespace", RELEASE_NAMESPACE, "--lease-name", lease)))
    try:
        yield lease, ops, proxies
    finally:
        for op in ops:
            op.stop()
        for i, op in enumerate(ops):
            print(f"--- replica {i} ---\n{op.log()[-2500:]}")
        for proxy in proxies:
            proxy.stop()
        cluster.kubectl("-n", RELEASE_NAMESPACE, "delete", "lease", lease, check=False)


def holder(cluster: Any, lease: str) -> str | None:
    result = cluster.kubectl("-n", RELEASE_NAMESPACE, "get", "lease", lease, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    return (yaml.safe_load(result.stdout).get("spec") or {}).get("holderIdentity")


def writes(proxy: FaultProxy, since: float = 0.0) -> list[Any]:
    """Writes other than the Lease's own renewals."""
    return [s for s in proxy.requests(since) if s.write and LEASES not in s.path]


def leader_index(ops: list[OperatorProcess]) -> int:
    leading = [i for i, op in enumerate(ops) if "became leader" in op.log()]
    assert len(leading) == 1, f"replicas that became leader: {leading}"
    return leading[0]


def test_one_writer_a_standby_takes_over_and_idle_replicas_write_nothing(
        cluster: Any, namespace: str, replicas: tuple[str, list[OperatorProcess], list[FaultProxy]]) -> None:
    lease, ops, proxies = replicas
    for op in ops:
        op.start()
    wait_for(lambda: holder(cluster, lease), timeout=60, what="a Lease holder")
    for name in ("ha-0", "ha-1"):
        apply(cluster, manifest(name), namespace)
    wait_for(lambda: len(items := get(cluster, "msvc", "-n", namespace)["items"]) == 2 and all(map(is_ready, items)),
             timeout=90, what="both Ready")
    first = leader_index(ops)
    standby = 1 - first
    assert writes(proxies[first]), "the leader wrote the children and status"
    assert not writes(proxies[standby]), f"the standby wrote: {writes(proxies[standby])[:5]}"

    idle_from = time.time()
    # Four resyncs on each replica; MODELSHIP_IDLE_SECONDS=600 (with
    # --timeout=1400) is the acceptance list's 10 minutes.
    time.sleep(float(os.environ.get("MODELSHIP_IDLE_SECONDS", "20")))
    assert not writes(proxies[0], idle_from) and not writes(proxies[1], idle_from), "idle replicas wrote"
    lease_writes = [s for p in proxies for s in p.requests(idle_from) if s.write and LEASES in s.path]
    assert all(s.method == "PUT" for s in lease_writes) and not [
        s for s in proxies[standby].requests(idle_from) if s.write], "a standby only reads the Lease"

    # SIGKILL: no release; the standby waits out the lease duration and takes over.
    old_holder = holder(cluster, lease)
    ops[first].kill()
    killed = time.monotonic()
    wait_for(lambda: holder(cluster, lease) not in (None, old_holder), timeout=60, what="a new Lease holder")
    print(f"takeover after SIGKILL: {time.monotonic() - killed:.1f}s after the kill")
    apply(cluster, manifest("ha-0", 16), namespace)
    wait_for(lambda: is_ready(get(cluster, "msvc", "ha-0", "-n", namespace))
             and get(cluster, "msvc", "ha-0", "-n", namespace)["metadata"]["generation"] == 2,
             timeout=90, what="the new leader rolling out an update")
    assert writes(proxies[standby], killed), "the new leader writes"

    # SIGTERM of the leader: it releases the Lease; the restarted replica takes it.
    second_holder = holder(cluster, lease)
    ops[first].start()
    wait_for(lambda: "leader election on Lease" in ops[first].log().rsplit("===== start", 1)[-1], timeout=60,
             what="the restarted replica campaigning")
    stopped = time.time()
    ops[standby].stop()
    wait_for(lambda: holder(cluster, lease) not in (None, second_holder)
             and "became leader" in ops[first].log().rsplit("===== start", 1)[-1],
             timeout=60, what="the restarted replica taking the released Lease")
    assert "released the Lease" in ops[standby].log()
    apply(cluster, manifest("ha-1", 16), namespace)
    wait_for(lambda: get(cluster, "msvc", "ha-1", "-n", namespace)["metadata"]["generation"] == 2
             and is_ready(get(cluster, "msvc", "ha-1", "-n", namespace)), timeout=90, what="ha-1 updated")
    assert not writes(proxies[standby], stopped + 1), "the stopped replica wrote"
    for op in ops:
        no_traceback(op.log())


def test_a_leader_that_sees_another_holder_stops_writing_until_the_lease_is_free_again(
        cluster: Any, namespace: str, replicas: tuple[str, list[OperatorProcess], list[FaultProxy]]) -> None:
    """As after a partition: the Lease names someone else (written here as that someone). The
    leader stops at its next renewal, writes nothing while the other "holds" it, and takes it
    back once the record has not moved for a lease duration."""
    lease, ops, proxies = replicas
    op, proxy = ops[0], proxies[0]
    op.start()
    wait_for(lambda: holder(cluster, lease), timeout=60, what="a Lease holder")
    body = yaml.safe_load(cluster.kubectl("-n", RELEASE_NAMESPACE, "get", "lease", lease, "-o", "yaml").stdout)
    body["spec"]["holderIdentity"] = "a-partitioned-peer"
    body["spec"]["renewTime"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    cluster.kubectl("replace", "-f", "-", input=yaml.safe_dump(body))
    wait_for(lambda: "lost the Lease to a-partitioned-peer" in op.log(), timeout=30, what="the leader stepping down")
    stepped_down = time.time()
    apply(cluster, manifest("fenced"), namespace)
    time.sleep(3)
    assert holder(cluster, lease) == "a-partitioned-peer"
    assert not writes(proxy, stepped_down), "a replica that lost the Lease wrote"
    wait_for(lambda: holder(cluster, lease) not in (None, "a-partitioned-peer"), timeout=60,
             what="the replica taking the expired Lease back")
    wait_for(lambda: is_ready(get(cluster, "msvc", "fenced", "-n", namespace)), timeout=90,
             what="the ModelService reconciled after the Lease came back")
    no_traceback(op.log())
