"""Output agreement for a canary: a sampled share of this server's answered requests is sent again
to a reference server (`--mirror-to`, in a canary: the stable Service) and the two answers compared
with the optimize gate's metric (optimize/gate.py), the online counterpart of the offline gate.

Why the canary mirrors to stable and not the other way: stable's pods run the previous spec and
must not restart (a flag on them would change their template), and they may run an older server.
The counters then live on the canary's pods, which the operator already scrapes as one track.

Off the request path: `offer` is a few dict operations on the event loop; a queue bounded in
samples and in bytes (a sample holds its inputs and outputs) and a fixed number of sender tasks
do the rest, so a slow or dead reference delays and fails nothing
(a full queue drops the sample and counts it). A mirrored request carries MIRROR_ID_PREFIX in
its id. The Service a canary mirrors to also reaches the canary's own pods; a server that mirrors
(a canary) answers a mirrored request with a 400 naming MIRROR_REFUSED (counted `invalid`, which is
no demand) and the sender counts it `skipped`, so the canary is only ever compared with stable and
two mirroring servers never bounce a request between them.

With auth or TLS on (spec.auth, spec.tls), stable runs with the same keys, token rules and Secret
as the canary: a mirrored request carries the caller's own Authorization header again, and the
sender trusts the certificate of the canary's own TLS Secret (its ca.crt, else its tls.crt) and
presents its tls.crt/tls.key as a client certificate, which mTLS needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import ssl
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from tritonclient.utils import InferenceServerException

from modelship.contracts import MIRROR_METRIC, MIRROR_OUTCOMES

from .errors import InvalidInput
from .optimize.gate import HIGHER_IS_BETTER, measure

log = logging.getLogger(__name__)

MIRROR_ID_PREFIX = "modelship-mirror-"
MIRROR_REFUSED = "a mirroring server does not answer mirrored requests"
Verdict = Literal["agreed", "disagreed"]


@dataclasses.dataclass(frozen=True)
class MirrorSettings:
    url: str = ""  # http://host:port of the reference server; "" is off
    sample_rate: float = 0.1
    metric: str = "cosine"  # one of gate.METRICS
    threshold: float = 0.99  # one request agrees when its figure is >= (similarity) or <= (error) this
    queue_size: int = 64
    max_bytes: int = 64 * 1024 * 1024  # inputs and outputs held by queued and in-flight samples
    senders: int = 2
    timeout_s: float = 5.0

    @property
    def enabled(self) -> bool:
        return bool(self.url)


# --- pure: comparison and decision ---------------------------------------------------------------


def compare(metric: str, threshold: float, own: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> tuple[Verdict, float]:
    """(verdict, figure) of one request: this server's outputs against the reference's, output by
    output in the same order, the worst output counting. Shapes that differ disagree outright."""
    if len(own) != len(reference) or any(np.shape(a) != np.shape(b) for a, b in zip(own, reference)):
        worst = 0.0 if HIGHER_IS_BETTER[metric] else float("inf")
        return "disagreed", worst
    figure = measure(metric, list(reference), list(own))
    ok = figure >= threshold if HIGHER_IS_BETTER[metric] else figure <= threshold
    return ("agreed" if ok else "disagreed"), figure


def sampled(rate: float, draw: Callable[[], float] = random.random) -> bool:
    return rate >= 1.0 or (rate > 0.0 and draw() < rate)


def is_mirrored(request_id: str) -> bool:
    return request_id.startswith(MIRROR_ID_PREFIX)


# --- I/O: queue, senders, counters ---------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    model: str
    version: str
    inputs: dict[str, tuple[str, np.ndarray]]  # name -> (datatype, array)
    outputs: dict[str, np.ndarray]
    authorization: str | None = None  # the caller's Authorization header, sent again

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(a, "nbytes", 0)) for _, a in self.inputs.values()) + \
            sum(int(getattr(a, "nbytes", 0)) for a in self.outputs.values())


class Mirror:
    """The queue and senders; counters per model by MIRROR_OUTCOMES, read by MirrorCollector."""

    def __init__(self, settings: MirrorSettings, *, client_factory: Callable[[str], Any] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        self.ssl_context = ssl_context  # https:// references: whom to trust, which client certificate
        self.counts: dict[tuple[str, str], int] = {}
        self._queue: asyncio.Queue[Sample] = asyncio.Queue(settings.queue_size)
        self._tasks: list[asyncio.Task] = []
        self._client_factory = client_factory or (lambda url: _http_client(url, self.ssl_context))
        self._client: Any = None
        self._serial = 0
        self.held_bytes = 0  # what queued and in-flight samples hold, at most settings.max_bytes

    def count(self, model: str, outcome: str) -> None:
        self.counts[(model, outcome)] = self.counts.get((model, outcome), 0) + 1

    def refuse_mirrored(self, request_id: str) -> None:
        """InvalidInput for a request another mirroring server sent (see the module docstring)."""
        if is_mirrored(request_id):
            raise InvalidInput(f"{MIRROR_REFUSED} (request id {request_id!r}); mirror to servers that do not mirror")

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._send_loop()) for _ in range(self.settings.senders)]

    def offer(self, model: str, version: str, request_id: str, inputs: dict[str, tuple[str, np.ndarray]],
              outputs: dict[str, np.ndarray], *, authorization: str | None = None) -> None:
        """Called after a successful answer; never raises, never waits. `authorization`: the
        caller's header, which the reference (stable, the same keys) checks like this server did."""
        if is_mirrored(request_id) or not sampled(self.settings.sample_rate):
            return
        sample = Sample(model, version, inputs, outputs, authorization)
        size = sample.nbytes
        if self.held_bytes + size > self.settings.max_bytes or self._queue.full():
            self.count(model, "dropped")
            return
        self._queue.put_nowait(sample)
        self.held_bytes += size

    async def _send_loop(self) -> None:
        while True:
            sample = await self._queue.get()
            size = sample.nbytes
            try:
                self.count(sample.model, await self._one(sample))
            except asyncio.CancelledError:
                raise
            except InferenceServerException as exc:
                refused = MIRROR_REFUSED in str(exc.message())
                if not refused:
                    log.debug("mirror to %s failed: %s", self.settings.url, exc)
                self.count(sample.model, "skipped" if refused else "failed")
            except Exception as exc:  # noqa: BLE001 - the reference failing is counted, never raised
                log.debug("mirror to %s failed: %s", self.settings.url, exc)
                self.count(sample.model, "failed")
            finally:
                self.held_bytes -= size

    async def _one(self, sample: Sample) -> str:
        import tritonclient.http as httpclient

        if self._client is None:
            self._client = self._client_factory(self.settings.url)
        inputs = []
        for name, (datatype, array) in sample.inputs.items():
            tensor = httpclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        names = list(sample.outputs)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in names]
        self._serial += 1
        async with asyncio.timeout(self.settings.timeout_s):
            result = await self._client.infer(
                sample.model, inputs, outputs=outputs, request_id=f"{MIRROR_ID_PREFIX}{self._serial}",
                headers={"Authorization": sample.authorization} if sample.authorization else None)
        reference = [result.as_numpy(n) for n in names]
        if any(r is None for r in reference):
            return "failed"
        verdict, _ = compare(self.settings.metric, self.settings.threshold, [sample.outputs[n] for n in names],
                             reference)
        return verdict

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()


def _http_client(url: str, ssl_context: ssl.SSLContext | None = None) -> Any:
    import tritonclient.http.aio as aio

    target = url.split("://", 1)[-1].rstrip("/")
    https = url.startswith("https://")
    return aio.InferenceServerClient(target, ssl=https, ssl_context=ssl_context if https else None)


def client_context(cert_file: Path, key_file: Path, ca_file: Path | None) -> ssl.SSLContext:
    """How the sender speaks TLS to stable, from the canary's own TLS Secret (the same one stable
    mounts): trust its ca.crt (cert-manager's issuer) or, without one, its tls.crt itself (a
    self-signed certificate), and present tls.crt/tls.key, which stable's mTLS asks for."""
    trust = ca_file if ca_file is not None and ca_file.is_file() else cert_file
    context = ssl.create_default_context(cafile=str(trust))
    context.verify_flags |= getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0)  # a leaf certificate as its own anchor
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


class MirrorCollector:
    """The agreement counters on /metrics: MIRROR_METRIC{model, outcome}, every outcome from the start."""

    def __init__(self, mirror: Mirror, models: Callable[[], list[str]]) -> None:
        self.mirror, self.models = mirror, models

    def describe(self) -> list:
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(MIRROR_METRIC, "Requests mirrored to the reference server (--mirror-to) by "
                                     "outcome: agreed or disagreed with this server's answer, failed, dropped, skipped (answered "
                                     "by another mirroring server).",
                                     labels=["model", "outcome"])
        for model in sorted(set(self.models()) | {m for m, _ in self.mirror.counts}):
            for outcome in MIRROR_OUTCOMES:
                family.add_metric([model, outcome], self.mirror.counts.get((model, outcome), 0))
        yield family
