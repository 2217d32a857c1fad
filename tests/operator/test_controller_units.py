"""The controller's pure parts: the cache's ordering rules and the work queue's guarantees."""

from __future__ import annotations

import asyncio
from typing import Any

from modelship.controller.queue import WorkQueue
from modelship.kube.cache import Store


def _deployment(rv: str, *, generation: int = 1, ready: int = 0, uid: str = "u1") -> dict[str, Any]:
    return {"metadata": {"name": "svc", "namespace": "ns", "uid": uid, "resourceVersion": rv, "generation": generation,
                         "labels": {"modelship.dev/modelservice": "svc"}},
            "status": {"readyReplicas": ready}}


def test_an_own_write_response_never_moves_the_cache_back_in_time() -> None:
    store = Store()
    store.upsert("Deployment", _deployment("10", ready=1))  # the watch was faster than our response
    store.upsert("Deployment", _deployment("9", ready=0), own_write=True)
    assert store.child(("ns", "svc"), "Deployment", "svc")["status"]["readyReplicas"] == 1


def test_an_own_write_creating_an_object_is_cached_at_once() -> None:
    store = Store()
    key = store.upsert("Deployment", _deployment("9"), own_write=True)
    assert key == ("ns", "svc") and store.child(key, "Deployment", "svc") is not None
    # a re-created object (new uid) replaces the old one
    store.upsert("Deployment", _deployment("20", uid="u2"), own_write=True)
    assert store.child(key, "Deployment", "svc")["metadata"]["uid"] == "u2"


def test_an_older_generation_from_a_lagging_watch_is_ignored() -> None:
    store = Store()
    store.upsert("Deployment", _deployment("12", generation=2))
    store.upsert("Deployment", _deployment("11", generation=1))
    assert store.child(("ns", "svc"), "Deployment", "svc")["metadata"]["generation"] == 2


def test_children_and_pods_are_indexed_by_their_modelservice_label() -> None:
    store = Store()
    pod = {"metadata": {"name": "svc-abc", "namespace": "ns", "labels": {"modelship.dev/modelservice": "svc"}}}
    assert store.upsert("Pod", pod) == ("ns", "svc")
    assert store.upsert("Pod", {"metadata": {"name": "other", "namespace": "ns"}}) is None
    assert [p["metadata"]["name"] for p in store.pods(("ns", "svc"))] == ["svc-abc"]
    store.remove("Pod", pod)
    assert store.pods(("ns", "svc")) == []


def test_the_queue_holds_a_key_once_and_never_hands_it_to_two_workers() -> None:
    async def scenario() -> list[str]:
        queue = WorkQueue()
        queue.add("a")
        queue.add("a")
        queue.add("b")
        assert len(queue) == 2
        first = await queue.get()
        queue.add(first)  # changed while a worker holds it: queued again only after done()
        second = await queue.get()
        assert second != first and len(queue) == 0
        queue.done(first)
        assert len(queue) == 1
        third = await queue.get()
        queue.done(second)
        queue.done(third)
        return [first, second, third]

    assert asyncio.run(scenario()) == ["a", "b", "a"]


def test_add_after_fires_once_at_the_earliest_time() -> None:
    # Order, not a stopwatch: "a" due at 0.05 s (the earliest of its three) comes out before "b"
    # due at 0.5 s; had the 1.0 or 5.0 s delay won, "b" would come first, however slow the machine.
    async def scenario() -> list[str]:
        queue = WorkQueue()
        queue.add_after("a", 5.0)
        queue.add_after("a", 0.05)  # earlier wins
        queue.add_after("a", 1.0)  # later is ignored
        queue.add_after("b", 0.5)
        got = [await asyncio.wait_for(queue.get(), timeout=60)]
        queue.done(got[0])
        got.append(await asyncio.wait_for(queue.get(), timeout=60))
        queue.done(got[1])
        left = len(queue) + len(queue._timers)  # neither queued again nor still waiting to be
        queue.close()
        return [*got, str(left)]

    assert asyncio.run(scenario()) == ["a", "b", "0"]
