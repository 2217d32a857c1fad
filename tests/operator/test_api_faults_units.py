"""The pure decisions behind riding out API faults: which failures retry and when
(kube/retry.py), which cached ModelServices a relist proves gone (kube/relist.py), and who may
take the Lease (kube/leader.py). The fault-injected runs on the real plane are in
test_api_faults.py and test_leader_election.py."""

from __future__ import annotations

import asyncio
import datetime
import socket

import pytest
import urllib3.exceptions

from modelship.kube.client import KubeError
from modelship.kube import leader, relist, retry


def fixed(low: float, high: float) -> float:
    return 1.0


@pytest.mark.parametrize("status", [0, 408, 409, 429, 500, 502, 503, 504])
def test_weather_is_transient(status: int) -> None:
    assert retry.transient(status)
    assert KubeError(status, "x").transient


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_mistakes_are_not_transient(status: int) -> None:
    assert not retry.transient(status)


def test_a_write_may_have_landed_only_when_the_answer_was_lost_or_the_server_failed() -> None:
    assert [s for s in (0, 409, 429, 500, 502, 503, 504) if retry.outcome_unknown(s)] == [0, 500, 502, 503, 504]
    assert not any(retry.outcome_unknown(s) for s in (200, 400, 403, 404, 408, 422))


def test_backoff_doubles_up_to_a_short_cap_for_weather_and_a_long_one_otherwise() -> None:
    delays = [retry.backoff(n, status=503, jitter=fixed) for n in range(1, 12)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == retry.TRANSIENT_CAP_SECONDS < 300
    assert retry.backoff(20, status=403, jitter=fixed) == retry.PERMANENT_CAP_SECONDS


def test_retry_after_is_a_floor_and_is_capped() -> None:
    assert retry.backoff(1, status=429, after=7.0, jitter=fixed) == 7.0
    assert retry.backoff(8, status=429, after=1.0, jitter=fixed) == 30.0  # our own backoff is longer
    assert retry.retry_after({"Retry-After": "3"}) == 3.0
    assert retry.retry_after({"retry-after": "100000"}) == retry.RETRY_AFTER_CAP_SECONDS
    assert retry.retry_after({"Retry-After": "-5"}) == 0.0
    assert retry.retry_after({"Retry-After": "soon"}) is None
    assert retry.retry_after({}) is None and retry.retry_after(None) is None


def test_retry_after_as_an_http_date() -> None:
    now = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
    assert retry.retry_after({"Retry-After": "Thu, 01 Jan 2026 12:00:04 GMT"}, now=now) == 4.0


def test_transport_failures_are_classified_and_described_by_their_innermost_reason() -> None:
    refused = urllib3.exceptions.MaxRetryError(None, "/apis", urllib3.exceptions.NewConnectionError(
        None, "Failed to establish a new connection: [Errno 111] Connection refused"))
    reset = urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset by peer"))
    for error in (refused, reset, socket.timeout("timed out"), ConnectionRefusedError(111, "refused")):
        assert isinstance(error, retry.transport_errors())
    assert "NewConnectionError" in retry.describe_transport(refused)
    assert "Connection refused" in retry.describe_transport(refused)
    assert retry.describe_transport(reset).startswith("API server unreachable (")


def test_gone_keeps_what_the_list_holds_and_what_was_recreated() -> None:
    before = {("a", "kept"): "u1", ("a", "deleted"): "u2", ("a", "recreated"): "u3"}
    listed = [{"metadata": {"namespace": "a", "name": "kept", "uid": "u1"}},
              {"metadata": {"namespace": "a", "name": "recreated", "uid": "u9"}},
              {"metadata": {"namespace": "a", "name": "created-meanwhile", "uid": "u5"}}]
    assert sorted(relist.gone(before, listed)) == [("a", "deleted"), ("a", "recreated")]


def test_pruner_forgets_only_what_the_list_proves_gone() -> None:
    cache = {("a", "x"): "u1", ("a", "y"): "u2"}
    forgotten = []

    async def list_all() -> list[dict[str, object]]:
        cache[("a", "z")] = "u3"  # created while the LIST was in flight: not in the snapshot
        return [{"metadata": {"namespace": "a", "name": "x", "uid": "u1"}}]

    pruner = relist.Pruner(snapshot=lambda: dict(cache), list_all=list_all,
                           forget=lambda key, uid: forgotten.append((key, uid)))
    assert asyncio.run(pruner.prune_once()) == [("a", "y")]
    assert forgotten == [(("a", "y"), "u2")] and pruner.pruned == 1


def test_lease_may_be_taken_when_missing_free_ours_or_unchanged_for_a_whole_duration() -> None:
    held = leader.Record(holder="other", renew_time="t", transitions=0, resource_version="1")
    assert leader.may_take(None, me="me", unchanged_for=0, lease_duration=10)
    assert leader.may_take(leader.Record(None, None, 3, "1"), me="me", unchanged_for=0, lease_duration=10)
    assert leader.may_take(leader.Record("me", "t", 0, "1"), me="me", unchanged_for=0, lease_duration=10)
    assert not leader.may_take(held, me="me", unchanged_for=9.9, lease_duration=10)
    assert leader.may_take(held, me="me", unchanged_for=10, lease_duration=10)


def test_lease_body_counts_transitions_and_carries_the_version_read() -> None:
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    held = leader.Record(holder="other", renew_time="t", transitions=2, resource_version="41")
    taken = leader.lease_body(namespace="ns", name="l", me="me", previous=held, lease_duration=10, now=now)
    assert taken["metadata"]["resourceVersion"] == "41"
    assert taken["spec"]["holderIdentity"] == "me" and taken["spec"]["leaseTransitions"] == 3
    assert taken["spec"]["acquireTime"] == taken["spec"]["renewTime"]
    mine = leader.Record(holder="me", renew_time="t", transitions=3, resource_version="42")
    renewed = leader.lease_body(namespace="ns", name="l", me="me", previous=mine, lease_duration=10, now=now)
    assert renewed["spec"]["leaseTransitions"] == 3 and "acquireTime" not in renewed["spec"]
    released = leader.lease_body(namespace="ns", name="l", me=None, previous=mine, lease_duration=1, now=now)
    assert released["spec"]["holderIdentity"] is None


def test_elector_refuses_timings_that_allow_two_leaders() -> None:
    with pytest.raises(ValueError, match="renew_deadline < lease_duration"):
        leader.LeaderElector(object(), namespace="ns", name="l", lease_duration=5, renew_deadline=5)


def test_the_client_turns_a_refused_connection_into_a_transient_kube_error() -> None:
    """A real connection to a loopback port nobody listens on: no traceback, no crash path."""
    import kubernetes

    from modelship.kube.client import KubeClient

    with socket.socket() as probe:  # a free port, closed again before the request
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configuration = kubernetes.client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    configuration.retries = False
    kube = KubeClient(kubernetes.client.ApiClient(configuration), timeout=5)
    try:
        with pytest.raises(KubeError) as caught:
            asyncio.run(kube.get("/api/v1/namespaces/default"))
    finally:
        kube.close()
    assert caught.value.status == 0 and caught.value.transient
    assert "API server unreachable" in str(caught.value) and "refused" in str(caught.value).lower()
