"""Forget ModelServices that were deleted while the watch was not looking.

After a watch gap ends in 410 Gone, kopf lists again and reports only what still exists;
it sends no DELETED for what went away in between. A deleted ModelService left in the cache
would be reconciled forever: children re-applied with an ownerReference to a dead UID, and a
status patch that 404s. So whenever kopf relists ModelServices (and on every resync), one LIST
of our own says which cached ones are gone, and they leave the cache.

The LIST is compared with a snapshot of the cache taken before it was sent: an object cached
then and absent from the later LIST was deleted. One created meanwhile is not in the snapshot,
so a LIST racing with a create never drops it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Iterable, Mapping

from modelship.kube import retry

log = logging.getLogger("modelship.relist")

Key = tuple[str, str]
DEBOUNCE_SECONDS = 1.0  # a relist of many objects arrives as many events: verify once after them


def gone(before: Mapping[Key, str | None], listed: Iterable[Mapping[str, Any]]) -> list[Key]:
    """Keys cached (with their uid) before the LIST that the LIST no longer holds, same uid."""
    present = set()
    for item in listed:
        meta = item.get("metadata") or {}
        present.add((meta.get("namespace", ""), meta.get("name", ""), meta.get("uid")))
    return [key for key, uid in before.items() if (*key, uid) not in present]


class Pruner:
    """Runs `gone` when asked (`request()`, from a relist event or the resync), debounced.

    `snapshot()` returns the cache's keys and uids; `list_all()` the ModelServices that exist;
    `forget(key, uid)` drops one from the cache if it still holds that uid."""

    def __init__(self, *, snapshot: Callable[[], dict[Key, str | None]],
                 list_all: Callable[[], Awaitable[list[dict[str, Any]]]],
                 forget: Callable[[Key, str | None], None], debounce: float = DEBOUNCE_SECONDS) -> None:
        self.snapshot, self.list_all, self.forget, self.debounce = snapshot, list_all, forget, debounce
        self._wanted = asyncio.Event()
        self.pruned = 0

    def request(self) -> None:
        self._wanted.set()

    async def run(self) -> None:
        failures = 0
        while True:
            await self._wanted.wait()
            await asyncio.sleep(self.debounce)
            self._wanted.clear()
            try:
                await self.prune_once()
                failures = 0
            except Exception as error:  # noqa: BLE001 - KubeError mostly; the next request retries
                failures += 1
                delay = retry.backoff(failures, status=getattr(error, "status", 0),
                                      after=getattr(error, "retry_after", None))
                log.warning("cannot list ModelServices to find deleted ones (%s); again in %.1fs", error, delay)
                await asyncio.sleep(delay)
                self._wanted.set()

    async def prune_once(self) -> list[Key]:
        before = self.snapshot()
        if not before:
            return []
        missing = gone(before, await self.list_all())
        for key in missing:
            log.info("ModelService %s/%s was deleted while the watch was away; forgetting it", *key)
            self.forget(key, before[key])
        self.pruned += len(missing)
        return missing
