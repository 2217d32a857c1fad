"""Leader election on a coordination.k8s.io/v1 Lease, so that of several operator replicas
exactly one writes.

Our own, not kopf's peering: kopf's peering keeps its state in its own KopfPeering resources
(a second CRD to install, cluster-scoped for a cluster-wide operator) and pauses the whole
operator, watches included, on the standbys. A Lease is what every Kubernetes controller uses
(client-go's leaderelection, kube-controller-manager), needs one namespaced Role, is read by
`kubectl get lease`, and lets standbys keep watching, so their cache is warm when they take over.

The rules are client-go's:
- The holder renews every `retry_period`; if it has not renewed for `renew_deadline`, it stops
  acting at once (before anyone else may start).
- A candidate takes the Lease when it is free, or when the record it reads has not changed for
  `lease_duration` of the candidate's own monotonic clock (never the writer's clock: no skew).
- Writes carry the resourceVersion read, so two candidates cannot both win: the loser gets 409.
- On shutdown the holder releases the Lease (holder cleared), so a rolling update hands over
  at once instead of after `lease_duration`.
`renew_deadline < lease_duration` keeps the old leader's last write before the new one's first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import socket
import time
import uuid
from typing import Any, Callable, Coroutine

log = logging.getLogger("modelship.leader")

LEASE_API = "/apis/coordination.k8s.io/v1"
LEASE_DURATION_SECONDS = 10.0
RENEW_DEADLINE_SECONDS = 7.0
RETRY_PERIOD_SECONDS = 2.0


def default_identity() -> str:
    """The pod's name (its hostname) and a random suffix: two processes never share one."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@dataclasses.dataclass(frozen=True)
class Record:
    """The parts of a Lease that decide who leads."""

    holder: str | None
    renew_time: str | None
    transitions: int
    resource_version: str | None

    @classmethod
    def from_lease(cls, lease: dict[str, Any]) -> Record:
        spec = lease.get("spec") or {}
        return cls(holder=spec.get("holderIdentity") or None, renew_time=spec.get("renewTime"),
                   transitions=int(spec.get("leaseTransitions") or 0),
                   resource_version=(lease.get("metadata") or {}).get("resourceVersion"))


def may_take(record: Record | None, *, me: str, unchanged_for: float, lease_duration: float) -> bool:
    """True when `me` may write itself into the Lease: it is missing, free, ours, or its
    record has not moved for a whole `lease_duration` as measured here."""
    if record is None or record.holder is None or record.holder == me:
        return True
    return unchanged_for >= lease_duration


def lease_body(*, namespace: str, name: str, me: str | None, previous: Record | None, lease_duration: float,
               now: datetime.datetime) -> dict[str, Any]:
    """The Lease to write: `me` as holder (None releases it), renewing or taking over."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    taking_over = previous is None or previous.holder != me
    transitions = (previous.transitions if previous else 0) + (1 if taking_over and previous and me else 0)
    spec: dict[str, Any] = {"holderIdentity": me, "leaseDurationSeconds": max(1, int(round(lease_duration))),
                            "renewTime": stamp, "leaseTransitions": transitions}
    if taking_over and me:
        spec["acquireTime"] = stamp
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if previous is not None and previous.resource_version:
        meta["resourceVersion"] = previous.resource_version
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}


class LeaderElector:
    """Campaign for the Lease `namespace/name`; run `lead()` while holding it.

    `kube` needs `get`, `create` and `replace` (path-based; modelship's KubeClient). Give it a
    client of its own, so renewals never queue behind the reconcilers' requests."""

    def __init__(self, kube: Any, *, namespace: str, name: str, identity: str | None = None,
                 lease_duration: float = LEASE_DURATION_SECONDS, renew_deadline: float = RENEW_DEADLINE_SECONDS,
                 retry_period: float = RETRY_PERIOD_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError(f"need retry_period < renew_deadline < lease_duration, got "
                             f"{retry_period}, {renew_deadline}, {lease_duration}")
        self.kube, self.namespace, self.name = kube, namespace, name
        self.identity = identity or default_identity()
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self.clock = clock
        self.leading = False
        self.terms = 0  # how many times this process became leader
        self._observed: Record | None = None
        self._observed_at = 0.0
        self._path = f"{LEASE_API}/namespaces/{namespace}/leases"

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Campaign forever; `lead()` runs while this process holds the Lease and is cancelled
        the moment it may no longer be sure it does."""
        log.info("leader election on Lease %s/%s as %s", self.namespace, self.name, self.identity)
        try:
            while True:
                await self._acquire()
                await self._hold(lead)
        finally:
            self.leading = False
            await self._release()  # only if the last record we wrote names us

    async def _acquire(self) -> None:
        while not await self._try():
            await asyncio.sleep(self.retry_period)

    async def _hold(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.leading = True
        self.terms += 1
        log.info("became leader (Lease %s/%s, %s)", self.namespace, self.name, self.identity)
        task = asyncio.create_task(lead(), name="leader term")
        renewed = self.clock()
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=self.retry_period)
                if task.done():
                    break
                left = self.renew_deadline - (self.clock() - renewed)
                try:  # a renewal that hangs must not outlive the deadline it guards
                    held = await asyncio.wait_for(self._try(), timeout=max(0.1, left))
                except asyncio.TimeoutError:
                    held = False
                if held:
                    renewed = self.clock()
                elif self._observed is not None and self._observed.holder not in (None, self.identity):
                    log.warning("lost the Lease to %s; stopping", self._observed.holder)
                    break
                elif self.clock() - renewed >= self.renew_deadline:
                    log.warning("could not renew the Lease for %.0fs; stopping", self.clock() - renewed)
                    break
        finally:
            self.leading = False
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # an error: logged below
                await task
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("the leader's work ended with an error: %r; campaigning again", task.exception())
            await asyncio.sleep(self.retry_period)

    async def _try(self) -> bool:
        """One read and, if allowed, one write; True when we hold the Lease afterwards."""
        try:
            lease = await self.kube.get(f"{self._path}/{self.name}")
        except Exception as error:
            if _status(error) is None:
                raise
            if _status(error) != 404:
                log.info("cannot read the Lease (%s); retrying", error)
                return False
            lease = None
        record = Record.from_lease(lease) if lease is not None else None
        now = self.clock()
        if record is None or self._observed is None or (record.holder, record.renew_time) != (
                self._observed.holder, self._observed.renew_time):
            self._observed, self._observed_at = record, now
        if not may_take(record, me=self.identity, unchanged_for=now - self._observed_at,
                        lease_duration=self.lease_duration):
            return False
        body = lease_body(namespace=self.namespace, name=self.name, me=self.identity, previous=record,
                          lease_duration=self.lease_duration, now=datetime.datetime.now(datetime.timezone.utc))
        try:
            if record is None:
                written = await self.kube.create(self._path, body)
            else:
                written = await self.kube.replace(f"{self._path}/{self.name}", body)
        except Exception as error:
            if _status(error) is None:
                raise
            if _status(error) != 409:  # 409: another candidate wrote first; not news
                log.info("cannot write the Lease (%s); retrying", error)
            return False
        self._observed, self._observed_at = Record.from_lease(written), self.clock()
        return True

    async def _release(self) -> None:
        """Clear the holder, so a standby takes over now rather than after lease_duration."""
        if self._observed is None or self._observed.holder != self.identity:
            return
        body = lease_body(namespace=self.namespace, name=self.name, me=None, previous=self._observed,
                          lease_duration=1, now=datetime.datetime.now(datetime.timezone.utc))
        try:
            await asyncio.wait_for(self.kube.replace(f"{self._path}/{self.name}", body), timeout=5)
            log.info("released the Lease %s/%s", self.namespace, self.name)
        except Exception as error:
            if _status(error) is None and not isinstance(error, asyncio.TimeoutError):
                raise
            log.info("could not release the Lease (%s); it expires by itself", error)


def _status(error: BaseException) -> int | None:
    """The HTTP status of a client error (the client's KubeError carries one; 0: no answer);
    None for anything else, which is a bug and propagates."""
    status = getattr(error, "status", None)
    return status if isinstance(status, int) else None
