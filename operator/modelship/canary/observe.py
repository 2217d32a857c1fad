"""The canary's analysis loop: for each ModelService whose canary is progressing, every
`analysis.intervalSeconds`, scrape each ready pod's metrics port (the same scrape the builtin
autoscaler does, autoscale/signals.py), sum the pods by track, judge, and wake the reconciler,
which feeds the verdict to the state machine.

The window is the current step: each pod's first scrape after the step began is its baseline
(a pod that starts later counts from its first scrape; a process restart, seen as counters going
back, starts that pod's baseline again). Verdicts live in memory only: after an operator restart
the step (in status) carries on and its window starts afresh, so no verdict rests on numbers
nobody can see again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any, Callable, Mapping

import pydantic

from modelship import contracts
from modelship.api.v1alpha1 import ModelService
from modelship.autoscale import signals
from modelship.autoscale.loop import pod_states
from modelship.canary.analysis import TrackStats, Verdict, analyze, combine, delta, thresholds_of
from modelship.canary.machine import PROGRESSING, CanaryState
from modelship.kube.cache import Key, Store
from modelship.render import names

log = logging.getLogger("modelship.canary")


@dataclasses.dataclass
class Window:
    revision: str
    step: int
    first: dict[str, signals.Scrape] = dataclasses.field(default_factory=dict)
    last: dict[str, signals.Scrape] = dataclasses.field(default_factory=dict)

    def add(self, pod: str, scrape: signals.Scrape) -> None:
        first = self.first.get(pod)
        if first is None or scrape.requests < first.requests:  # new pod, or its process restarted
            self.first[pod] = scrape
        self.last[pod] = scrape

    def track(self, pods: list[str]) -> TrackStats:
        return combine([delta(self.first[p], self.last[p]) for p in pods if p in self.first])


def track_of(pod: Mapping[str, Any]) -> str:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return "canary" if labels.get(names.TRACK_LABEL) == names.CANARY_TRACK else "stable"


class CanaryObserver:
    """Owns the analysis windows and the latest verdict per ModelService (`verdict`, the
    reconciler's seam)."""

    def __init__(self, *, store: Store, wake: Callable[[Key], None], clock: Callable[[], float] = time.time,
                 scrape_port: int = contracts.METRICS_PORT, scrape_timeout: float = 1.0) -> None:
        self.store, self.wake, self.clock = store, wake, clock
        self.scrape_port, self.scrape_timeout = scrape_port, scrape_timeout
        self.windows: dict[Key, Window] = {}
        self.verdicts: dict[Key, tuple[str, int, Verdict]] = {}
        self._due: dict[Key, float] = {}
        self._session: Any = None

    def verdict(self, key: Key) -> tuple[str, int, Verdict] | None:
        return self.verdicts.get(key)

    async def supervise(self, every: float = 1.0) -> None:
        try:
            while True:
                now = self.clock()
                due = [key for key in self._progressing() if self._due.get(key, 0.0) <= now]
                await asyncio.gather(*(self._step_safely(key) for key in due))
                await asyncio.sleep(every)
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    def _progressing(self) -> list[Key]:
        keys = []
        for key in list(self.store.keys()):
            state = CanaryState.from_status(((self.store.msvc(key) or {}).get("status") or {}).get("canary"))
            if state is not None and state.phase == PROGRESSING:
                keys.append(key)
        for gone in set(self.windows) - set(keys):
            self.windows.pop(gone, None)
            self.verdicts.pop(gone, None)
            self._due.pop(gone, None)
        return keys

    async def _step_safely(self, key: Key) -> None:
        try:
            await self.step(key)
        except Exception:  # noqa: BLE001 - a bug in one analysis never stops the others
            log.exception("canary analysis of %s/%s failed", *key)

    async def step(self, key: Key) -> Verdict | None:
        """Scrape, judge and publish once for `key`; None when it has no progressing canary."""
        body = self.store.msvc(key) or {}
        state = CanaryState.from_status((body.get("status") or {}).get("canary"))
        if state is None or state.phase != PROGRESSING:
            return None
        try:
            msvc = ModelService.from_body(body)
        except pydantic.ValidationError:
            return None  # the reconciler reports it
        self._due[key] = self.clock() + msvc.spec.rollout.canary_settings.analysis.interval_seconds
        window = self.windows.get(key)
        if window is None or (window.revision, window.step) != (state.revision, state.step):
            window = self.windows[key] = Window(state.revision, state.step)
        bodies = [p for p in self.store.pods(key) if not (p.get("metadata") or {}).get("deletionTimestamp")]
        tracks = {(p.get("metadata") or {}).get("name", ""): track_of(p) for p in bodies}
        pods = [p for p in pod_states(bodies) if p.ready and p.ip]
        session = await self._client()

        async def one(pod: signals.PodState) -> None:
            url = signals.metrics_url(pod, self.scrape_port)
            if url is None:
                return
            try:
                scraped = await signals.scrape(session, url, model=msvc.spec.model.name, at=self.clock(),
                                               timeout=self.scrape_timeout)
            except Exception as error:  # noqa: BLE001 - a failed scrape is a gap, never a crash
                log.debug("canary scrape of %s failed: %s", pod.name, error)
                return
            window.add(pod.name, scraped)

        await asyncio.gather(*(one(p) for p in pods))
        canary = window.track([n for n, t in tracks.items() if t == "canary"])
        stable = window.track([n for n, t in tracks.items() if t == "stable"])
        verdict = analyze(canary, stable, thresholds_of(msvc))
        self.verdicts[key] = (state.revision, state.step, verdict)
        self.wake(key)
        return verdict

    async def _client(self) -> Any:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession()
        return self._session

    async def stop(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None
