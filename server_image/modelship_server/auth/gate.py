"""The one object HTTP and gRPC ask "may this caller in?", with a small verdict cache.

`quick()` answers whatever needs no network (no credential, a malformed header, an API
key, a cached verdict) on the event-loop thread; only a cache miss on a token goes to
`review()`, which asks the Kubernetes API on a worker thread. Verdicts are cached by the
token's fingerprint for `cache_ttl_s`, allowed or not, so a flood of bad tokens costs
one review each at most per TTL; failures to reach the API are never cached.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .decide import (ALLOWED, NO_CREDENTIAL, UNAUTHENTICATED, UNAVAILABLE, Verdict, access_review_body, bearer,
                     fingerprint, judge_access_review, judge_token_review, looks_like_jwt, token_review_body)
from .keys import ApiKeys
from .kube import KubeReviews, KubeTarget, KubeUnavailable

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """What the auth flags decided (settings.py keeps one of these)."""

    api_keys: Path | None = None
    token_review: bool = False
    audiences: tuple[str, ...] = ()
    allowed_service_accounts: frozenset[str] = frozenset()  # "namespace/name"
    access_review: tuple[str, str] | None = None  # (namespace, name) of the ModelService to check against
    access_verb: str = "infer"
    cache_ttl_s: float = 10.0
    cache_size: int = 10000
    kube_api: str | None = None
    kube_token_file: Path | None = None
    kube_ca_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.api_keys is not None or self.token_review


class Gate:
    def __init__(self, config: GateConfig) -> None:
        self.config = config
        self.keys = ApiKeys(config.api_keys) if config.api_keys is not None else None
        self.kube: KubeReviews | None = None
        self.cache: dict[str, tuple[float, Verdict]] = {}
        self.hits = self.misses = 0
        self.pending: dict[str, asyncio.Future[Verdict]] = {}  # reviews running now, by fingerprint
        self.outcomes: dict[tuple[str, str], int] = {}
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="auth-review")

    def start(self) -> None:
        """Load the keys and find the API server; ValueError naming the flag on a mistake."""
        if self.keys is not None:
            self.keys.load()
        if self.config.token_review:
            c = self.config
            self.kube = KubeReviews(KubeTarget.in_cluster(c.kube_api, c.kube_token_file, c.kube_ca_file))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _count(self, v: Verdict) -> Verdict:
        key = (v.method or "none", v.outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        return v

    def quick(self, header: str | bytes | None) -> Verdict | None:
        """The verdict if known without the network, else None (then call `review`)."""
        cred = bearer(header)
        if cred is None:
            return self._count(NO_CREDENTIAL)
        if isinstance(cred, Verdict):
            return self._count(cred)
        if self.keys is not None and self.keys.match(cred) is not None:
            return self._count(Verdict(ALLOWED, method="apikey"))
        if self.kube is None:
            return self._count(Verdict(UNAUTHENTICATED, "the bearer credential is not a known API key", "apikey"))
        if not looks_like_jwt(cred):
            what = "a known API key or " if self.keys is not None else ""
            return self._count(Verdict(UNAUTHENTICATED, f"the bearer credential is not {what}a ServiceAccount "
                                       "token (a JWT of three dot-separated parts)", "token"))
        entry = self.cache.get(fingerprint(cred))
        if entry is not None and entry[0] > time.monotonic():
            self.hits += 1
            return self._count(entry[1])
        return None

    async def review(self, header: str | bytes | None) -> Verdict:
        """Ask the Kubernetes API about a token `quick` could not decide; cache the answer.

        Requests with the same token that arrive while its review runs wait for that one
        review (counted as hits) instead of each asking the API server."""
        cred = bearer(header)
        if not isinstance(cred, str) or self.kube is None:
            return self.quick(header) or NO_CREDENTIAL
        key = fingerprint(cred)
        running = self.pending.get(key)
        if running is not None:
            self.hits += 1
            return self._count(await asyncio.shield(running))
        loop = asyncio.get_running_loop()
        self.pending[key] = done = loop.create_future()
        self.misses += 1
        verdict = Verdict(UNAVAILABLE, "the token review was interrupted; retry", "token")  # if cancelled
        try:
            verdict = await loop.run_in_executor(self.pool, self._review_blocking, cred)
        except KubeUnavailable as exc:
            log.warning("cannot check a bearer token: %s", exc)
            verdict = Verdict(UNAVAILABLE, f"cannot check the bearer token now: {exc}", "token")
        else:
            if len(self.cache) >= self.config.cache_size:
                self._evict()
            self.cache[key] = (time.monotonic() + self.config.cache_ttl_s, verdict)
        finally:
            del self.pending[key]
            done.set_result(verdict)
        return self._count(verdict)

    def _review_blocking(self, token: str) -> Verdict:
        assert self.kube is not None
        c = self.config
        status = self.kube.token_review(token_review_body(token, c.audiences))
        verdict, user = judge_token_review(status, c.audiences, c.allowed_service_accounts)
        if verdict is not None:
            return verdict
        if c.access_review is None:
            return Verdict(ALLOWED, method="token")
        ns, name = c.access_review
        sar = self.kube.access_review(access_review_body(user, ns, name, c.access_verb))
        return judge_access_review(sar, user, ns, name, c.access_verb)

    def _evict(self) -> None:
        now = time.monotonic()
        for k in [k for k, (exp, _) in self.cache.items() if exp <= now]:
            del self.cache[k]
        while len(self.cache) >= self.config.cache_size:
            del self.cache[next(iter(self.cache))]

    def maybe_reload(self) -> None:
        if self.keys is not None:
            self.keys.maybe_reload()

    def collect(self) -> Iterator:
        """Metric families for the /metrics endpoint (registered as a collector)."""
        cache = CounterMetricFamily("modelship_auth_cache_lookups",
                                    "Token verdict cache lookups on the request path, by result (hit or miss).",
                                    labels=["result"])
        cache.add_metric(["hit"], self.hits)
        cache.add_metric(["miss"], self.misses)
        decisions = CounterMetricFamily("modelship_auth_decisions",
                                        "Authentication decisions by method (apikey, token, none) and outcome "
                                        "(allowed, unauthenticated, forbidden, unavailable).",
                                        labels=["method", "outcome"])
        for (method, outcome), n in list(self.outcomes.items()):
            decisions.add_metric([method, outcome], n)
        size = GaugeMetricFamily("modelship_auth_cache_entries", "Token verdicts cached now.")
        size.add_metric([], len(self.cache))
        yield from (cache, decisions, size)
        if self.keys is not None:
            keys = GaugeMetricFamily("modelship_auth_api_keys", "API keys loaded now.")
            keys.add_metric([], len(self.keys.names))
            reloads = CounterMetricFamily("modelship_auth_api_key_reloads",
                                          "Reloads of the API key files, by outcome (ok, or failed: the old keys stay).",
                                          labels=["outcome"])
            reloads.add_metric(["ok"], self.keys.reloads)
            reloads.add_metric(["failed"], self.keys.failures)
            yield from (keys, reloads)

    def describe(self) -> list:
        return []
