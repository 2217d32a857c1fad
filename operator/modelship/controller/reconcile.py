"""Reconcile one ModelService: optimize, render, apply what differs, observe, write status if it changed.

Level-triggered and idempotent: it reads the cache, not the event that woke it, so a
restart at any point converges to the same result. It writes only when something differs:
a child is applied when it is missing or its `desired-hash` annotation differs from the
render's, and the status is patched only when a field the operator owns would change.
In steady state a reconcile makes no API call at all.

With spec.optimization.enabled, the optimize Job of the current spec comes first: it is
created when missing, and until it has finished the ConfigMap and the Deployment are not
applied, so a Deployment of an earlier spec keeps serving its variant untouched (the simplest
state to reason about: what serves is always what some finished Job chose, or the original).
The Job's result decides what rolls out (`status.optimization.decide`). Jobs of earlier
specs go: a running one at once (its result can no longer matter), a finished one once the
current Job has finished too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import socket
from typing import Any, Callable, Mapping, Sequence

import pydantic

from modelship import api
from modelship.api.errors import format_validation_error
from modelship.api.v1alpha1 import ModelService
from modelship.canary import machine as canary_machine
from modelship.canary import report as canary_report
from modelship.canary.analysis import FAILED, Verdict, thresholds_of
from modelship.kube import objects, retry
from modelship.kube.cache import Key, Store
from modelship.kube.client import KubeClient, KubeError
from modelship.kube.kinds import object_path
from modelship.render import Rendered, names, render_canary, render_children, render_grpc, render_route, template_revision
from modelship.render.artifact import ORIGINAL, original
from modelship.render.canary import canary_replicas
from modelship.render.capacity import measured_capacity
from modelship.render.optimize_job import job_name, render_optimize_job
from modelship.render.route import (
    GATEWAY_API_VERSION,
    GRPC_ROUTE,
    HTTP_ROUTE,
    REPLICAS,
    route_backends,
    stable_pods_labeled,
    wants_route,
)
from modelship.status import conditions as c
from modelship.status import optimization, ownership
from modelship.status.compute import Observed, compute_status, rollout_of, status_changed, status_patch
from modelship.status.monitoring import MONITORING_CONDITIONS

log = logging.getLogger("modelship.reconcile")

INVALID_SPEC = "InvalidSpec"
HELD_KINDS = ("ConfigMap", "Deployment")  # what waits for the optimize Job
# children whose CRD may be missing (KEDA, the Gateway API; GRPCRoute apart from HTTPRoute)
OPTIONAL_KINDS = ("ScaledObject", HTTP_ROUTE, GRPC_ROUTE)


@dataclasses.dataclass(frozen=True)
class CanaryRun:
    """What the canary machine decided for one reconcile: the kinds of stable's children to hold
    on the previous spec, the canary's children to apply (or delete), and what status shows."""

    plan: canary_machine.Plan | None = None
    held: frozenset[str] = frozenset()
    objects: tuple[dict[str, Any], ...] = ()
    delete: bool = False
    status: dict[str, Any] | None = None
    overrides: tuple[c.ConditionSpec, ...] = ()
    # The HTTPRoute of spec.rollout.canary.gatewayRef with this reconcile's weights (None: leave
    # it as it is), where its traffic goes ("route" or "replicas"), and whether it should go.
    route: dict[str, Any] | None = None
    route_traffic: str = REPLICAS
    route_delete: bool = False
    grpc_route: dict[str, Any] | None = None  # the GRPCRoute with the same weights


@dataclasses.dataclass(frozen=True)
class Unsure:
    uid: str | None
    status: dict[str, Any]
    transitions: tuple[c.Transition, ...]
    posts: tuple[tuple[str, str], ...]  # the canary's Events, (reason, message)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class Reconciler:
    kube: KubeClient
    store: Store
    clock: Callable[[], str] = utc_now
    reporting_instance: str = dataclasses.field(default_factory=socket.gethostname)
    # Seam for the autoscaler: status fields (autoscaling, latency; None removes) and
    # conditions (ScalingLimited, AutoscalerReady), so the reconciler stays the one status writer.
    # The third argument: kinds whose API is not installed (OPTIONAL_KINDS that answered 404).
    extra_status: Callable[[Key, ModelService, frozenset[str]],
                           tuple[Mapping[str, Any], list[c.ConditionSpec]]] | None = None
    unavailable: dict[Key, set[str]] = dataclasses.field(default_factory=dict)
    # Seam for the canary analysis (canary/observe.py): the latest verdict as (revision, step, verdict).
    canary_verdict: Callable[[Key], tuple[str, int, Verdict] | None] | None = None
    # The status this process last wrote, per ModelService. The operator is the only writer
    # of these fields, so this is the truth even when the watch has not caught up yet.
    written: dict[Key, tuple[str | None, dict[str, Any]]] = dataclasses.field(default_factory=dict)
    # Children this reconcile did not apply because an object of their name is not this
    # ModelService's (status/ownership.py), per ModelService: (kind, name) -> the conflict.
    conflicts: dict[Key, dict[tuple[str, str], ownership.Conflict]] = dataclasses.field(default_factory=dict)
    # Status writes whose outcome is unknown (a reset or a 5xx after the patch was sent): the
    # ModelService's uid, the status sent, and the Events it would have posted. The next reconcile
    # reads the object first, so it decides from what the API server holds, not from the last
    # write known to have landed (a canary would step again, or back), and posts those Events
    # once if the write landed.
    unsure: dict[Key, Unsure] = dataclasses.field(default_factory=dict)
    # (uid, generation) -> the validated spec and its render, per ModelService.
    _renders: dict[Key, tuple[tuple[Any, Any], ModelService, Rendered]] = dataclasses.field(default_factory=dict)

    async def reconcile(self, key: Key) -> None:
        """Bring one ModelService's children and status in line; raise KubeError to retry."""
        body = self.store.msvc(key)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            self.written.pop(key, None)
            self.unavailable.pop(key, None)
            self.conflicts.pop(key, None)
            self._renders.pop(key, None)
            self.unsure.pop(key, None)
            return  # deleted: the garbage collector removes the children (ownerReferences)
        if key in self.unsure:
            body = await self._settle_unsure(key, body)
        meta = body["metadata"]
        cached = self._renders.get(key)
        if cached is not None and cached[0] == (meta.get("uid"), meta.get("generation")):
            msvc = cached[1]
        else:
            try:
                msvc = ModelService.from_body(body)
            except pydantic.ValidationError as error:
                await self._report_invalid(key, body, error)
                return
        if cached is not None and cached[0] == (meta.get("uid"), meta.get("generation")) \
                and self._lost_children(key, msvc, cached[2]) and not await self._reread(key, body):
            self._drop(key)
            return  # deleted unseen (a watch gap): the garbage collector took its children
        apply_error = None
        before = self.conflicts.get(key, {})
        taken: dict[tuple[str, str], ownership.Conflict] = {}
        self.conflicts[key] = taken  # filled by `_claim` as this reconcile applies
        try:
            decision = await self._optimize(key, msvc)
        except KubeError as error:
            if error.status not in (400, 403, 422):
                raise
            apply_error = f"cannot create the optimize Job: {error}"
            decision = optimization.Decision(
                artifact=None, status=None, wait=optimization.Wait(optimization.OPTIMIZING, apply_error),
                condition=c.ConditionSpec(c.OPTIMIZED, c.FALSE, optimization.FAILED, apply_error, warning=True))
        # Held (None): render anyway, for the hash that tells whether the Deployment holds this spec.
        artifact = decision.artifact or original(msvc.spec)
        capacity = measured_capacity(decision.status)
        if cached is not None and cached[1] is msvc and cached[2].artifact == artifact \
                and cached[2].measured_capacity == capacity:
            rendered = cached[2]
        else:
            rendered = render_children(msvc, artifact=artifact, measured_capacity=capacity)
            # Pod events wake a ModelService far more often than its spec changes.
            self._renders[key] = ((meta.get("uid"), meta.get("generation")), msvc, rendered)
        previous = self._previous(key, body)
        canary = self._canary(key, msvc, rendered, previous, frozen=decision.artifact is None,
                              annotations=meta.get("annotations") or {})
        try:
            await self._apply_children(key, msvc, rendered, hold=decision.artifact is None, held=canary.held)
            await self._apply_canary(key, msvc, canary)
            await self._apply_route(key, msvc, canary)
        except KubeError as error:
            if error.status in (400, 403, 422):
                apply_error = str(error)  # a fix needs a person, not a retry: say so in status
            else:
                raise
        route_statuses = []
        for field, route in (("route", canary.route), ("grpcRoute", canary.grpc_route)):
            if route is None:
                continue
            shown = canary_report.route_status(
                route, traffic=canary.route_traffic, installed=route["kind"] not in self.unavailable.get(key, ()),
                gateway=msvc.spec.rollout.canary_settings.gateway_ref)
            conflict = taken.get((route["kind"], route["metadata"]["name"]))
            if conflict is not None:
                shown.update(traffic=REPLICAS, message=f"{conflict.message}; the replica ratio splits the traffic")
            route_statuses.append(shown)
            if canary.status is not None:
                canary.status[field] = shown
        conflicts = list(taken.values())
        deployment_hash = _hash_of(rendered, "Deployment")
        deployment = self.store.child(key, "Deployment", names.deployment(msvc.metadata.name))
        observed = Observed(deployment=deployment, pods=self.store.pods(key))
        if decision.artifact is not None:
            variant: str | None = decision.artifact.variant
        else:  # what the Deployment of an earlier spec serves, if there is one
            variant = _served_variant(deployment, msvc.metadata.uid)
        scaling_fields, scaling_conditions = self.extra_status(
            key, msvc, frozenset(self.unavailable.get(key, ()))) if self.extra_status else ({}, [])
        status, transitions = compute_status(
            msvc, observed=observed, previous=previous, now=self.clock(),
            variant=variant, desired_hash=deployment_hash, apply_error=apply_error,
            extra_conditions=[decision.condition, *scaling_conditions], wait=decision.wait,
            extra_fields={"optimization": decision.status, **scaling_fields, "canary": canary.status},
            overrides=[*canary.overrides, *ownership.conditions_of(conflicts, msvc_name=msvc.metadata.name)],
        )
        posts: list[tuple[str, str]] = list(canary.plan.events) if canary.plan is not None else []
        if any(reason == "CanaryStarted" for reason, _ in posts):
            posts += [(canary_report.ROUTE_NOT_USED, shown["message"]) for shown in route_statuses
                      if shown["traffic"] == REPLICAS]
        # once per conflict while it lasts; held back with the canary's if the write's answer is lost
        posts += [(ownership.CHILD_NAME_CONFLICT, conflict.message)
                  for ref, conflict in taken.items() if ref not in before]
        await self._write_status(key, body, previous, status, transitions, tuple(posts))
        if key not in self.conflicts:  # dropped by the write (the ModelService is gone)
            posts = [post for post in posts if post[0] != ownership.CHILD_NAME_CONFLICT]
        await self._post_all(self.store.msvc(key) or body, posts)

    async def _post_all(self, msvc: Mapping[str, Any], posts: Sequence[tuple[str, str]]) -> None:
        warnings = ("CanaryRolledBack", "CanaryAborted", canary_report.ROUTE_NOT_USED, ownership.CHILD_NAME_CONFLICT)
        await asyncio.gather(*(self._post(msvc, reason, message, warning=reason in warnings)
                               for reason, message in posts))

    async def _settle_unsure(self, key: Key, body: dict[str, Any]) -> dict[str, Any]:
        """The last status write's outcome is unknown: read the ModelService, and if the write
        landed, post the Events it held back. The read failing leaves it unsure (raised: retry)."""
        record = self.unsure[key]
        meta = body["metadata"]
        if record.uid != meta.get("uid"):
            self.unsure.pop(key)
            return body
        try:
            fresh = await self.kube.get(object_path(api.API_VERSION, api.KIND, meta["namespace"], meta["name"]))
        except KubeError as error:
            if error.status != 404:
                raise
            self.unsure.pop(key)
            return body  # gone: the status write's 404 says so
        fresh.setdefault("apiVersion", api.API_VERSION)
        fresh.setdefault("kind", api.KIND)
        self.store.upsert("ModelService", fresh)
        self.unsure.pop(key)
        if (fresh.get("metadata") or {}).get("uid") == record.uid and \
                not status_changed(fresh.get("status") or {}, record.status):
            log.info("status of %s/%s: the write whose answer was lost had landed", *key)
            self.written[key] = (record.uid, record.status)
            await asyncio.gather(*(self._event(fresh, t) for t in record.transitions))
            await self._post_all(fresh, record.posts)
        return fresh

    def _canary(self, key: Key, msvc: ModelService, rendered: Rendered, previous: Mapping[str, Any], *,
                frozen: bool, annotations: Mapping[str, str]) -> CanaryRun:
        """Run the canary machine (spec.rollout.strategy Canary). `frozen`: this spec's optimize
        Job has not finished, so nothing of it can run yet; everything stays as it is.
        `annotations`: the live ModelService's (an SRE's command changes no generation, so the
        ModelService parsed for this generation may predate it)."""
        name = msvc.metadata.name
        live_canary = self.store.child(key, "Deployment", names.canary_deployment(name))
        owned_canary = live_canary is not None and objects.controlled_by(live_canary, msvc.metadata.uid)
        if msvc.spec.rollout.strategy != "Canary":
            return CanaryRun(delete=owned_canary or self.store.child(
                key, "ConfigMap", names.canary_model_config(name)) is not None, route_delete=True)
        settings = msvc.spec.rollout.canary_settings
        state = canary_machine.CanaryState.from_status(previous.get("canary"))
        if frozen:
            return CanaryRun(status=previous.get("canary"), held=frozenset(HELD_KINDS) if state is not None and
                             state.phase != canary_machine.PROMOTED else frozenset())
        desired = next(o for o in rendered.objects if o["kind"] == "Deployment")
        stable = self.store.child(key, "Deployment", names.deployment(name))
        if stable is not None and not objects.controlled_by(stable, msvc.metadata.uid):
            stable = None
        revision = template_revision(desired) or ""
        stable_revision = (template_revision(stable) or "unknown") if stable is not None else None
        command = annotations.get(canary_machine.COMMAND_ANNOTATION)
        verdict = self.canary_verdict(key) if self.canary_verdict is not None else None
        stuck = _deadline_exceeded(live_canary) if owned_canary and template_revision(live_canary) == revision else None
        if stuck is not None and state is not None and state.revision == revision:
            # pods that never become ready get no traffic, so no analysis could ever judge them
            verdict = (revision, state.step, Verdict(FAILED, f"the canary's pods are not ready: {stuck}", "not_ready"))
        complete = rollout_of(msvc, stable, _hash(desired)).complete
        if msvc.spec.autoscaler_owns_replicas and stable is not None:
            stable_count = int((stable.get("spec") or {}).get("replicas", 1))
        else:
            stable_count = msvc.spec.replicas
        if stable_count == 0:
            stable_revision = None  # nothing serves, so nothing to compare with: the change goes direct
        plan = canary_machine.advance(
            state, revision=revision, generation=msvc.metadata.generation, stable_revision=stable_revision,
            steps=settings.steps, verdict=verdict, now=self.clock(),
            command=command if command in canary_machine.COMMANDS else None, stable_complete=complete)
        step = plan.state.step if plan.state is not None else 0
        wanted = canary_replicas(stable_count, settings.steps[min(step, len(settings.steps) - 1)].weight)
        held: frozenset[str] = frozenset()
        canary_objects: tuple[dict[str, Any], ...] = ()
        if plan.action in ("canary", "rollback"):
            held = frozenset(HELD_KINDS)
            canary_objects = tuple(render_canary(msvc, rendered, replicas=wanted if plan.action == "canary" else 0))
        elif plan.action == "promote":
            canary_objects = tuple(render_canary(msvc, rendered, replicas=wanted))
        running = wanted if plan.action in ("canary", "promote") else 0
        current = verdict[2] if verdict is not None and plan.state is not None and verdict[0] == plan.state.revision \
            else None
        status = canary_report.status_of(plan.state, settings.steps, canary_replicas=running,
                                         stable_replicas=stable_count, verdict=current,
                                         percentile=thresholds_of(msvc).percentile)
        old = previous.get("canary") or {}
        if status is not None and current is None and old.get("revision") == status["revision"]:
            status.update({k: old[k] for k in ("canary", "stable", "onlineSpeedup") if k in old})  # the last seen
        route, grpc, traffic = None, None, REPLICAS
        if wants_route(msvc):  # the step's exact weight while the canary runs; stable 100 otherwise
            running_weight = settings.steps[min(step, len(settings.steps) - 1)].weight \
                if plan.action == "canary" and plan.state is not None else None
            traffic, backends = route_backends(name, canary_weight=running_weight,
                                               stable_labeled=stable_pods_labeled(self.store.pods(key)))
            route, grpc = render_route(msvc, backends), render_grpc(msvc, backends)
        return CanaryRun(plan=plan, held=held, objects=canary_objects,
                         delete=plan.action == "direct" and (owned_canary or self.store.child(
                             key, "ConfigMap", names.canary_model_config(name)) is not None),
                         status=status, overrides=tuple(canary_report.conditions_of(plan.state)),
                         route=route, route_traffic=traffic, route_delete=route is None, grpc_route=grpc)

    async def _apply_canary(self, key: Key, msvc: ModelService, canary: CanaryRun) -> None:
        """Apply the canary's children that differ, or delete them once no canary runs."""
        uid = msvc.metadata.uid
        for obj in canary.objects:  # the ConfigMap first: the canary's pods mount it
            live = self.store.child(key, obj["kind"], obj["metadata"]["name"])
            want = obj["metadata"]["annotations"][names.DESIRED_HASH_ANNOTATION]
            if live is None or _hash(live) != want or not objects.controlled_by(live, uid) or _drifted(obj, live):
                await self._apply(msvc, obj)
        if not canary.delete:
            return
        name = msvc.metadata.name
        for api_version, kind, child in (("apps/v1", "Deployment", names.canary_deployment(name)),
                                         ("v1", "ConfigMap", names.canary_model_config(name))):
            live = self.store.child(key, kind, child)
            if live is not None and objects.controlled_by(live, uid):
                log.info("deleting %s %s/%s (the canary ended)", kind, msvc.metadata.namespace, child)
                try:
                    await self.kube.delete(api_version, kind, msvc.metadata.namespace, child)
                except KubeError as error:
                    if error.status != 404:
                        raise
                self.store.remove(kind, live)

    async def _apply_route(self, key: Key, msvc: ModelService, canary: CanaryRun) -> None:
        """Apply the canary's HTTPRoute and GRPCRoute when they differ (a 404 means that kind is
        not installed: `_apply` records it and the next resync tries again), or delete them once
        the spec no longer names a Gateway. They are ours alone: a user's route is never touched."""
        for kind, name, route in ((HTTP_ROUTE, names.http_route(msvc.metadata.name), canary.route),
                                  (GRPC_ROUTE, names.grpc_route(msvc.metadata.name), canary.grpc_route)):
            live = self.store.child(key, kind, name)
            if route is not None:
                want = route["metadata"]["annotations"][names.DESIRED_HASH_ANNOTATION]
                if live is None or _hash(live) != want or not objects.controlled_by(live, msvc.metadata.uid):
                    await self._apply(msvc, route)
                continue
            self.unavailable.get(key, set()).discard(kind)
            if canary.route_delete and live is not None and objects.controlled_by(live, msvc.metadata.uid):
                log.info("deleting %s %s/%s (no gatewayRef)", kind, msvc.metadata.namespace, name)
                try:
                    await self.kube.delete(GATEWAY_API_VERSION, kind, msvc.metadata.namespace, name)
                except KubeError as error:
                    if error.status != 404:
                        raise
                self.store.remove(kind, live)

    async def _optimize(self, key: Key, msvc: ModelService) -> optimization.Decision:
        """Create this spec's optimize Job if missing, read its result, delete superseded Jobs."""
        uid = msvc.metadata.uid
        jobs = [j for j in self.store.children_of_kind(key, "Job") if objects.controlled_by(j, uid)]
        if not msvc.spec.optimization.enabled:
            await self._delete_jobs(msvc, jobs)
            return optimization.disabled(msvc)
        name = job_name(msvc)
        job = self.store.child(key, "Job", name)
        if job is None:
            log.info("creating optimize Job %s/%s", msvc.metadata.namespace, name)
            job = await self._claim_and_apply(key, msvc, render_optimize_job(msvc))
            if job is not None:
                self.store.upsert("Job", job, own_write=True)
        elif not objects.controlled_by(job, uid):
            job = None  # of an earlier ModelService of this name: the garbage collector takes it
        result = optimization.observe(job, self.store.job_pods(key), now=self.clock())
        decision = optimization.decide(msvc, name, result)
        others = [j for j in jobs if j["metadata"]["name"] != name]
        await self._delete_jobs(msvc, others if decision.finished else [j for j in others if not _job_finished(j)])
        return decision

    async def _delete_jobs(self, msvc: ModelService, jobs: list[dict[str, Any]]) -> None:
        for job in jobs:
            log.info("deleting superseded optimize Job %s/%s", msvc.metadata.namespace, job["metadata"]["name"])
            await self.kube.delete("batch/v1", "Job", msvc.metadata.namespace, job["metadata"]["name"])
            self.store.remove("Job", job)

    def _previous(self, key: Key, body: Mapping[str, Any]) -> dict[str, Any]:
        cached = dict(body.get("status") or {})
        uid, mine = self.written.get(key, (None, None))
        if mine is None or uid != (body.get("metadata") or {}).get("uid"):
            return cached  # nothing written yet, or for an earlier object of the same name
        return {**cached, **mine}

    async def _write_status(self, key: Key, body: Mapping[str, Any], previous: Mapping[str, Any],
                            status: dict[str, Any], transitions: list[c.Transition],
                            posts: Sequence[tuple[str, str]] = ()) -> None:
        if not status_changed(previous, status):
            return
        meta = body["metadata"]
        try:
            written = await self.kube.patch_status(meta["namespace"], meta["name"], status_patch(previous, status))
        except KubeError as error:
            if error.status == 404 and not await self._reread(key, body):
                self._drop(key)
                return
            if retry.outcome_unknown(error.status):
                self.written.pop(key, None)
                self.unsure[key] = Unsure(meta.get("uid"), status, tuple(transitions), tuple(posts))
            raise
        self.written[key] = (meta.get("uid"), status)
        self.store.upsert("ModelService", written, own_write=True)
        await asyncio.gather(*(self._event(written, t) for t in transitions))

    def _drop(self, key: Key) -> None:
        self.written.pop(key, None)
        self.unsure.pop(key, None)
        self.unavailable.pop(key, None)
        self.conflicts.pop(key, None)
        self._renders.pop(key, None)

    def _lost_children(self, key: Key, msvc: ModelService, rendered: Rendered) -> bool:
        """A child this spec's render produced is no longer cached: someone deleted it, or the
        garbage collector did because the ModelService is gone and the watch missed it. One
        read tells which, before anything is re-applied for an owner that may not exist."""
        held = set(HELD_KINDS) if msvc.spec.optimization.enabled else set()
        taken = self.conflicts.get(key, {})
        return any(self.store.child(key, o["kind"], o["metadata"]["name"]) is None
                   for o in rendered.objects if o["kind"] not in held and o["kind"] not in OPTIONAL_KINDS
                   and (o["kind"], o["metadata"]["name"]) not in taken)

    async def _reread(self, key: Key, body: Mapping[str, Any]) -> bool:
        """A 404 on the status patch: the cache holds a ModelService the API server does not
        (deleted during a watch gap). Read it again: gone (False), it leaves the cache and
        nothing more is written for it; re-created (True), the retry works on the new one."""
        meta = body["metadata"]
        try:
            fresh = await self.kube.get(object_path(api.API_VERSION, api.KIND, meta["namespace"], meta["name"]))
        except KubeError as error:
            if error.status != 404:
                raise
            log.info("ModelService %s/%s is gone; forgetting it", *key)
            cached = self.store.msvc(key)
            if cached is not None and (cached.get("metadata") or {}).get("uid") == meta.get("uid"):
                self.store.forget(key)
            return False
        fresh.setdefault("apiVersion", api.API_VERSION)
        fresh.setdefault("kind", api.KIND)
        self.store.upsert("ModelService", fresh)
        return True

    async def _apply_children(self, key: Key, msvc: ModelService, rendered: Rendered, *, hold: bool = False,
                              held: frozenset[str] = frozenset()) -> None:
        """Apply what differs; `hold`: not the ConfigMap and the Deployment (they carry the
        optimize Job's result, which this spec does not have yet); `held`: kinds a canary keeps
        on the previous spec."""
        uid = msvc.metadata.uid
        stale = []
        for obj in rendered.objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            if (hold and kind in HELD_KINDS) or kind in held:
                continue
            live = self.store.child(key, kind, name)
            want = obj["metadata"]["annotations"][names.DESIRED_HASH_ANNOTATION]
            if live is None or _hash(live) != want or not objects.controlled_by(live, uid) or _drifted(obj, live):
                stale.append(obj)
        # The ConfigMap first, so new pods find the config they mount; the rest at once.
        first = [o for o in stale if o["kind"] == "ConfigMap"]
        rest = [o for o in stale if o["kind"] != "ConfigMap"]
        for group in (first, rest):
            results = await asyncio.gather(*(self._apply(msvc, obj) for obj in group), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
        for ref in [*rendered.absent, *rendered.absent_autoscalers]:
            live = self.store.child(key, ref.kind, ref.name)
            if live is not None and objects.controlled_by(live, uid):
                log.info("deleting %s %s/%s (no longer wanted)", ref.kind, msvc.metadata.namespace, ref.name)
                await self.kube.delete(ref.api_version, ref.kind, msvc.metadata.namespace, ref.name)
                self.store.remove(ref.kind, live)

    async def _claim(self, key: Key, msvc: ModelService, obj: Mapping[str, Any]) -> tuple[bool, str | None]:
        """May `obj` be applied, and on what condition? (True, None) when the cache shows it as
        ours; else the live object is read (the cache holds only objects labelled for this
        ModelService) and `ownership.claim` decides: (True, the resourceVersion the apply must
        find, `ownership.precondition`) or (False, None). A refusal is recorded for status and
        an Event; the object stays untouched."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        cached = self.store.child(key, kind, name)
        if cached is not None and objects.controlled_by(cached, msvc.metadata.uid):
            return True, None
        try:
            live: dict[str, Any] | None = await self.kube.get(
                object_path(obj["apiVersion"], kind, msvc.metadata.namespace, name))
        except KubeError as error:
            if error.status != 404:  # 404: none yet (or its CRD is missing: the apply says which)
                raise
            live = None
        conflict = ownership.claim(live, kind=kind, name=name, uid=msvc.metadata.uid, msvc_name=msvc.metadata.name)
        if conflict is None:
            return True, ownership.precondition(live)
        log.warning("not applying %s %s/%s: %s", kind, msvc.metadata.namespace, name, conflict.owner)
        self.conflicts.setdefault(key, {})[(kind, name)] = conflict
        return False, None

    async def _claim_and_apply(self, key: Key, msvc: ModelService, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Apply `obj` if it is ours to apply: the applied object, or None when it is not.

        An apply after a read carries the resourceVersion that read found, so an object made or
        replaced by someone else in between is not taken over: the API server answers 409, and
        the object is read and judged again (once; a second 409 goes to the retry)."""
        allowed, version = await self._claim(key, msvc, obj)
        if not allowed:
            return None
        try:
            return await self.kube.apply(obj, resource_version=version)
        except KubeError as error:
            if error.status != 409 or version is None:
                raise
        log.info("%s %s/%s changed between its read and the apply: reading it again",
                 obj["kind"], msvc.metadata.namespace, obj["metadata"]["name"])
        allowed, version = await self._claim(key, msvc, obj)
        return await self.kube.apply(obj, resource_version=version) if allowed else None

    async def _apply(self, msvc: ModelService, obj: dict[str, Any]) -> None:
        key = (msvc.metadata.namespace, msvc.metadata.name)
        log.info("applying %s %s/%s", obj["kind"], msvc.metadata.namespace, obj["metadata"]["name"])
        try:
            applied = await self._claim_and_apply(key, msvc, obj)
        except KubeError as error:
            if error.status == 404 and obj["kind"] in OPTIONAL_KINDS:
                # Its CRD is not installed (KEDA): a condition says so; the resync retries.
                self.unavailable.setdefault(key, set()).add(obj["kind"])
                return
            raise
        if applied is None:
            return
        self.unavailable.get(key, set()).discard(obj["kind"])
        self.store.upsert(obj["kind"], applied, own_write=True)

    async def _report_invalid(self, key: Key, body: Mapping[str, Any], error: pydantic.ValidationError) -> None:
        """A spec the API server accepted but the operator cannot serve (its checks are
        stricter in places, e.g. URIs): say why in status; create nothing."""
        problems = format_validation_error(error)
        reason = ("InvalidModelURI" if any(p.startswith("spec.model.uri") for p in problems) else
                  "InvalidDatasetURI" if any(p.startswith("spec.optimization.dataset.uri") for p in problems) else
                  INVALID_SPEC)
        message = "; ".join(problems)
        meta = body.get("metadata") or {}
        generation = meta.get("generation")
        previous = self._previous(key, body)
        computed = c.with_kstatus([
            c.ConditionSpec(c.READY, c.FALSE, reason, message, warning=True),
            c.ConditionSpec(c.PROGRESSING, c.FALSE, reason, message),
            c.ConditionSpec(c.DEGRADED, c.TRUE, reason, message, warning=True),
        ])
        merged, transitions = c.merge(previous.get("conditions"), computed, generation=generation, now=self.clock())
        status = {"observedGeneration": generation, "conditions": merged}
        await self._write_status(key, body, previous, status, transitions)

    async def _post(self, msvc: Mapping[str, Any], reason: str, message: str, *, warning: bool) -> None:
        """One Event at each canary step, promotion or rollback."""
        meta = msvc["metadata"]
        event = objects.event(msvc, reason=reason, message=message, now=self.clock(), component="modelship",
                              reporting_component="modelship.dev/operator",
                              reporting_instance=self.reporting_instance, warning=warning)
        try:
            await self.kube.create_event(event)
        except KubeError as error:
            log.warning("cannot post Event for %s/%s: %s", meta["namespace"], meta["name"], error)

    async def _event(self, msvc: Mapping[str, Any], transition: c.Transition) -> None:
        """One Event per condition transition, shown by `kubectl describe msvc` (none for kstatus's restatements)."""
        if transition.type in (c.STALLED, c.RECONCILING) or transition.reason == ownership.CHILD_NAME_CONFLICT:
            return  # a name conflict has its own Event per conflict, posted by `reconcile`
        meta = msvc["metadata"]
        bad = (transition.type == c.READY and transition.new_status != c.TRUE) or (
            transition.type in (c.DEGRADED, *MONITORING_CONDITIONS) and transition.new_status == c.TRUE
        )
        event = objects.event(
            msvc, reason=transition.reason, message=f"{transition.type}={transition.new_status}: {transition.message}",
            now=self.clock(), component="modelship", reporting_component="modelship.dev/operator",
            reporting_instance=self.reporting_instance, warning=bad and transition.warning)
        try:
            await self.kube.create_event(event)
        except KubeError as error:  # an Event is a courtesy; never fail a reconcile over one
            log.warning("cannot post Event for %s/%s: %s", meta["namespace"], meta["name"], error)


def _drifted(desired: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    """Out-of-band changes the hash cannot see. One matters in practice: `kubectl scale` on a
    Deployment whose replicas the operator owns (autoscaling off); the spec wins."""
    if desired["kind"] != "Deployment" or "replicas" not in desired["spec"]:
        return False
    return (live.get("spec") or {}).get("replicas") != desired["spec"]["replicas"]


def _deadline_exceeded(deployment: Mapping[str, Any] | None) -> str | None:
    """The Deployment controller's own verdict on pods that never became ready, if it gave one."""
    status = (deployment or {}).get("status") or {}
    if int(status.get("observedGeneration", 0)) < int(((deployment or {}).get("metadata") or {}).get("generation", 1)):
        return None  # the controller has not seen the current template yet: its conditions are older
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return str(condition.get("message") or "ProgressDeadlineExceeded")
    return None


def _served_variant(deployment: Mapping[str, Any] | None, uid: str | None) -> str | None:
    if deployment is None or not objects.controlled_by(deployment, uid):
        return None
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    return annotations.get(names.VARIANT_ANNOTATION, ORIGINAL)


def _job_finished(job: Mapping[str, Any]) -> bool:
    return any(cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True"
               for cond in (job.get("status") or {}).get("conditions") or [])


def _hash(obj: Mapping[str, Any]) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(names.DESIRED_HASH_ANNOTATION)


def _hash_of(rendered: Rendered, kind: str) -> str | None:
    for obj in rendered.objects:
        if obj["kind"] == kind:
            return _hash(obj)
    return None
