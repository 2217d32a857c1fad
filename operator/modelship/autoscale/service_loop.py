"""The frame the per-ModelService loops share (the builtin autoscaler, the monitor): a task per
ModelService that wants one, kept in step with the cache; each ticks `step` until cancelled;
specs parsed once per generation; one HTTP session for their scrapes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Callable

import pydantic

from modelship.api.v1alpha1 import ModelService
from modelship.kube.cache import Key, Store



class ServiceTasks:
    """One asyncio task per ModelService that wants one, kept in step with the wanted set:
    started for new keys, cancelled (and the key forgotten) for keys no longer wanted, and
    dropped after a crash (logged by the task itself) so the next sync starts it again."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._tasks: dict[Key, asyncio.Task[None]] = {}

    def sync(self, wanted: set[Key], run: Callable[[Key], Any], forget: Callable[[Key], None]) -> None:
        for key in wanted - set(self._tasks):
            self._tasks[key] = asyncio.create_task(run(key), name=f"{self.label} {key[0]}/{key[1]}")
        for key in set(self._tasks) - wanted:
            self._tasks.pop(key).cancel()
            forget(key)
        for key, task in list(self._tasks.items()):
            if task.done():
                del self._tasks[key]

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class ParsedSpecs:
    """Each ModelService's spec parsed once per (uid, generation). The loops tick every few
    seconds for every service; parsing the cached body with pydantic on each tick would cost
    more than the tick's own work."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[Key, tuple[tuple[Any, Any], ModelService]] = {}

    def get(self, key: Key) -> ModelService | None:
        """The ModelService at `key`; None when it is gone, being deleted, or invalid (the
        reconciler reports an invalid spec)."""
        body = self.store.msvc(key)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None
        meta = body["metadata"]
        version = (meta.get("uid"), meta.get("generation"))
        cached = self._cache.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            msvc = ModelService.from_body(body)
        except pydantic.ValidationError:
            return None
        self._cache[key] = (version, msvc)
        return msvc

    def forget(self, key: Key) -> None:
        self._cache.pop(key, None)


class ServiceLoop:
    """A loop per ModelService that `wants` one. Subclasses say which (`wants`), what one tick
    does (`step`, returning the seconds until the next) and what to drop when a service no
    longer wants its loop (`_forget`, calling this one)."""

    label = "loop"  # names the tasks and the crash logs
    log = logging.getLogger("modelship.autoscale")

    def __init__(self, store: Store) -> None:
        self.store = store
        self._tasks = ServiceTasks(self.label)
        self._specs = ParsedSpecs(store)
        self._session: Any = None

    def wants(self, msvc: ModelService) -> bool:
        raise NotImplementedError

    async def step(self, key: Key) -> float:
        raise NotImplementedError

    async def supervise(self, every: float = 1.0) -> None:
        """Keep one task per ModelService that wants one, and none for the others."""
        try:
            while True:
                self.sync()
                await asyncio.sleep(every)
        finally:
            await self.stop()

    def sync(self) -> None:
        wanted = set()
        for key in self.store.keys():  # noqa: SIM118 - Store.keys() is a method, not a dict's
            msvc = self._msvc(key)
            if msvc is not None and self.wants(msvc):
                wanted.add(key)
        self._tasks.sync(wanted, self._run, self._forget)

    async def stop(self) -> None:
        await self._tasks.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _forget(self, key: Key) -> None:
        self._specs.forget(key)

    async def _run(self, key: Key) -> None:
        try:
            while True:
                await asyncio.sleep(await self.step(key))
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("%s of %s/%s crashed", self.label, *key)

    def _msvc(self, key: Key) -> ModelService | None:
        return self._specs.get(key)

    async def _client(self) -> Any:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession()
        return self._session
