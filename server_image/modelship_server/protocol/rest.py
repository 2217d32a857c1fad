"""KServe v2 REST routes: a table of path patterns, each with one small handler.

The HTTP/1.1 connection (parsing, limits, backpressure) lives in `http.py`; this
module only says what each path means. Handlers return (status, JSON body) or,
for inference, a coroutine the connection drives; every model lookup goes
through the DataPlane, never the registry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable
from urllib.parse import unquote

from ..auth import Gate
from ..budget import ByteBudget
from ..codecs import rest as codec
from ..dataplane import DataPlane
from ..errors import InvalidInput, ModelNotFound, ServingError, Unavailable, Unsupported
from ..messages import InferResponse
from ..settings import HttpLimits
from ..tracing import Tracer
from .requests import HttpRequest

# Bodies larger than this are decoded on a worker thread, so the event loop (and the
# health endpoints it answers) never waits on one request's JSON or BYTES parsing.
OFFLOAD_DECODE_BYTES = 256 * 1024

Handler = Callable[["RestApp", HttpRequest, dict[str, str]], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    segments: tuple[str, ...]  # literal, or "{name}" to capture
    handler: Handler
    methods: frozenset[bytes] = frozenset((b"GET", b"POST", b"HEAD"))
    infer: bool = False  # the handler is a coroutine function

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        params = {}
        for want, got in zip(self.segments, parts):
            if want[0] == "{":
                params[want[1:-1]] = got
            elif want != got:
                return None
        return params


# -- handlers -----------------------------------------------------------------


def _server_metadata(app: RestApp, req: HttpRequest, p: dict) -> tuple[int, bytes]:
    return 200, codec.dumps(app.dp.server_metadata())


def _live(app: RestApp, req: HttpRequest, p: dict) -> tuple[int, bytes]:
    return (200 if app.dp.live() else 503), b""


def _ready(app: RestApp, req: HttpRequest, p: dict) -> tuple[int, bytes]:
    return (200 if app.dp.ready() else 503), b""


def _repository_index(app: RestApp, req: HttpRequest, p: dict) -> tuple[int, bytes]:
    ready_only = False
    if req.body:
        try:
            doc = codec._loads(req.body)
        except (ValueError, RecursionError) as exc:
            raise InvalidInput(f"request body is not valid JSON: {exc}") from None
        ready_only = bool(doc.get("ready", False)) if isinstance(doc, dict) else False
    return 200, codec.dumps(app.dp.repository_index(ready_only))


def _load_unload(app: RestApp, req: HttpRequest, p: dict) -> tuple[int, bytes]:
    raise Unsupported(f"model {p['action']} is not supported: this server serves the repository it started with")


def _all_stats(app: RestApp, req: HttpRequest, p: dict) -> tuple[int, bytes]:
    return 200, codec.dumps({"model_stats": [s.to_dict() for s in app.dp.statistics()]})


def _name(p: dict) -> tuple[str, str]:
    return unquote(p["name"]), p.get("version", "")


def _model_metadata(app: RestApp, req: HttpRequest, p: dict) -> tuple[int, bytes]:
    return 200, codec.dumps(app.dp.model_metadata(*_name(p)))


def _model_ready(app: RestApp, req: HttpRequest, p: dict) -> tuple[int, bytes]:
    return app.dp.model_ready_status(*_name(p)), b""


def _model_config(app: RestApp, req: HttpRequest, p: dict) -> tuple[int, bytes]:
    return 200, codec.dumps(codec.message_to_dict(app.dp.model_config(*_name(p))))


def _model_stats(app: RestApp, req: HttpRequest, p: dict) -> tuple[int, bytes]:
    return 200, codec.dumps({"model_stats": [s.to_dict() for s in app.dp.statistics(*_name(p))]})


async def _infer(app: RestApp, req: HttpRequest, p: dict) -> InferResponse:
    name, version = _name(p)
    tracer = app.tracer
    if tracer is not None:
        # Sampled or not is decided here, once; the connection ends the trace when it has answered.
        req.trace = tracer.start("POST /v2/models/{name}/infer", req.traceparent, req.tracestate, {
            "http.request.method": "POST", "url.path": req.path, "modelship.model": name,
            "modelship.version": version, "modelship.protocol": "http"})
    app.dp.check_model(name, version)  # 404 / 503 before looking at the body
    body = req.body
    try:
        if len(body) > OFFLOAD_DECODE_BYTES:
            loop = asyncio.get_running_loop()
            request = await loop.run_in_executor(
                app.decoder, codec.decode_request, body, req.header_length, name, version)
        else:
            request = codec.decode_request(body, req.header_length, name, version)
    except InvalidInput as exc:
        app.dp.count_rejected(name, version, "http", exc)
        raise
    if req.trace is not None:
        req.trace.decoded_ns = time.perf_counter_ns()
        request.trace = req.trace
    if app.dp.mirror is not None and req.authorization:
        request.authorization = req.authorization.decode("latin-1")
    return await app.dp.infer(request)


def _monitoring(app: RestApp, req: HttpRequest, p: dict) -> tuple[int, bytes]:
    return 200, codec.dumps(app.dp.monitoring_snapshot(*_name(p)))


async def _feedback(app: RestApp, req: HttpRequest, p: dict) -> tuple[int, bytes]:
    """One `{"id", "label"}`, a list of them, or `{"items": [...]}`: 200 when every item joined,
    else 400 naming each failure (the items that joined stay joined: nothing is lost).

    An id this replica does not hold but another made (`<id>@<host:port>.<tag>`) is forwarded to
    that replica once, in one request per replica; a forwarded request is never forwarded again.
    """
    name, version = _name(p)
    try:
        doc = codec._loads(req.body or b"")
    except (ValueError, RecursionError) as exc:
        app.dp.feedback(name, version, [None])  # counted as invalid
        raise InvalidInput(f"feedback body is not valid JSON: {exc}") from None
    forwarded = isinstance(doc, dict) and doc.get("forwarded") is True
    items = doc if isinstance(doc, list) else doc["items"] if isinstance(doc, dict) and isinstance(doc.get("items"), list) \
        else [doc]
    results = app.dp.feedback(name, version, items)
    if not forwarded:
        peers: dict[str, list[int]] = {}
        for i, r in enumerate(results):
            target = app.dp.forward_target(name, r["id"]) if r["outcome"] == "unknown_id" else None
            if target is not None:
                peers.setdefault(target, []).append(i)
        for target, idx in peers.items():
            answer = await _forward(app, target, p, [items[i] for i in idx])
            if isinstance(answer, str):
                for i in idx:
                    results[i]["error"] += f" (forwarding to the replica at {target} failed: {answer})"
                continue
            app.dp.forwarded(name, version, len(idx))
            for i, r in zip(idx, answer):
                results[i] = {**r, "replica": target}
    failed = [r for r in results if r["outcome"] != "joined"]
    body: dict[str, Any] = {"joined": len(results) - len(failed), "results": results}
    if failed:
        body["error"] = "; ".join(f"{r['outcome']}: {r['error']}" for r in failed[:5]) + (
            f"; and {len(failed) - 5} more" if len(failed) > 5 else "")
        return 400, codec.dumps(body)
    return 200, codec.dumps(body)


async def _forward(app: RestApp, target: str, p: dict, items: list) -> list[dict] | str:
    """POST items to the replica at `target`: its per-item results, or why it could not answer."""
    import json
    import urllib.error
    import urllib.request

    path = f"/v2/models/{p['name']}" + (f"/versions/{p['version']}" if p.get("version") else "") + "/feedback"
    data = json.dumps({"forwarded": True, "items": items}).encode()

    def post() -> list[dict] | str:
        req = urllib.request.Request(f"http://{target}{path}", data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - http, an IP-literal peer (forward_target)
                return json.loads(r.read())["results"]
        except urllib.error.HTTPError as e:
            try:
                return json.loads(e.read())["results"]
            except (ValueError, KeyError):
                return f"HTTP {e.code}"
        except (OSError, ValueError, KeyError) as e:
            return str(e)[:200]

    answer = await asyncio.get_running_loop().run_in_executor(app.decoder, post)
    if isinstance(answer, list) and len(answer) != len(items):
        return f"it answered {len(answer)} results for {len(items)} items"
    return answer


def _trace_setting(app: RestApp, req: HttpRequest, p: dict) -> tuple[int, bytes]:
    """GET reads, POST changes (Triton's body: {"trace_rate": "100", "trace_level": ["TIMESTAMPS"]}, null resets)."""
    changes: dict[str, list[str]] = {}
    if req.method == b"POST" and req.body:
        try:
            doc = codec._loads(req.body)
        except (ValueError, RecursionError) as exc:
            raise InvalidInput(f"request body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise InvalidInput(f"the trace setting body must be a JSON object, got {type(doc).__name__}")
        for key, value in doc.items():
            if value is None:
                changes[key] = []
            elif isinstance(value, str):
                changes[key] = [value]
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                changes[key] = value
            else:
                raise InvalidInput(f"trace setting {key!r}: expected a string, a list of strings or null, got {value!r}")
    name = unquote(p["name"]) if "name" in p else ""
    current = app.dp.trace_setting(name, changes)
    return 200, codec.dumps({k: v[0] if k != "trace_level" else v for k, v in current.items()})


def _extension(app: RestApp, req: HttpRequest, p: dict) -> tuple[int, bytes]:
    raise Unsupported(f"the {req.parts[1]} extension is not supported by this server")


_POST = frozenset((b"POST",))


def _model_routes(suffix: str, handler: Handler, **kw) -> list[Route]:
    tail = (suffix,) if suffix else ()
    return [
        Route(("v2", "models", "{name}", *tail), handler, **kw),
        Route(("v2", "models", "{name}", "versions", "{version}", *tail), handler, **kw),
    ]


ROUTES: list[Route] = [
    Route(("v2",), _server_metadata),
    Route(("v2", "health", "live"), _live),
    Route(("v2", "health", "ready"), _ready),
    Route(("v2", "repository", "index"), _repository_index),
    Route(("v2", "repository", "models", "{name}", "{action}"), _load_unload),
    Route(("v2", "models", "stats"), _all_stats),
    Route(("v2", "trace", "setting"), _trace_setting),
    Route(("v2", "models", "{name}", "trace", "setting"), _trace_setting),
    *_model_routes("infer", _infer, methods=_POST, infer=True),
    *_model_routes("", _model_metadata),
    *_model_routes("ready", _model_ready),
    *_model_routes("config", _model_config),
    *_model_routes("stats", _model_stats),
    *_model_routes("monitoring", _monitoring, methods=frozenset((b"GET", b"HEAD"))),
    *_model_routes("feedback", _feedback, methods=_POST, infer=True),
]
_EXTENSIONS = frozenset(("systemsharedmemory", "cudasharedmemory", "trace", "logging"))
_BY_LENGTH: dict[int, list[Route]] = {}
for _r in ROUTES:
    _BY_LENGTH.setdefault(len(_r.segments), []).append(_r)


def route(parts: list[str]) -> tuple[Route, dict[str, str]]:
    """The route for a path's segments, or ModelNotFound naming the path."""
    for r in _BY_LENGTH.get(len(parts), ()):
        params = r.match(parts)
        if params is not None:
            if params.get("action") not in (None, "load", "unload"):
                break
            return r, params
    if len(parts) > 1 and parts[0] == "v2" and parts[1] in _EXTENSIONS:
        return Route(tuple(parts), _extension), {}
    raise ModelNotFound(f"no route for /{'/'.join(parts)}")


class RestApp:
    """What every HTTP connection shares: the data plane, the byte budget, the limits."""

    def __init__(self, dataplane: DataPlane, *, max_body_size: int, budget: ByteBudget | None = None,
                 limits: HttpLimits | None = None, gate: Gate | None = None,
                 require_client_cert: bool = False, tracer: Tracer | None = None) -> None:
        self.dp = dataplane
        self.gate = gate  # None: no authentication (the default)
        self.require_client_cert = require_client_cert  # mTLS: the TLS layer asked, this layer refuses
        self.tracer = tracer
        self.max_body_size = max_body_size
        self.budget = budget or ByteBudget(1 << 62)
        self.limits = limits or HttpLimits()
        self.connections: set = set()
        self.decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")
        self.refused_connections = 0
        self._sweeper: asyncio.TimerHandle | None = None

    def protocol_factory(self):
        from .http import HttpConnection

        return HttpConnection(self)

    def busy(self) -> bool:
        """Whether any connection still owes a response (used when draining)."""
        return any(c.busy or c.queue for c in self.connections)

    def refuse_early(self, method: bytes, parts: list[str]) -> Unavailable | None:
        """An inference request's refusal known from its path alone (its model's queue is full), or None.

        Asked when the headers are in, so a shed request costs neither the copy of its
        body nor its decoding; anything else is decided later, in order.
        """
        if method != b"POST" or not parts or parts[-1] != "infer":
            return None
        try:
            r, params = route(parts)
            if r.infer:
                self.dp.check_model(*_name(params))
        except Unavailable as exc:
            return exc
        except ServingError:
            return None  # a 404 and the like: answered in turn, as before
        return None

    def start(self) -> None:
        """Begin the once-a-second sweep that closes slow and idle connections."""
        self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_S, self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.abort()
        self.decoder.shutdown(wait=False, cancel_futures=True)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self.connections):
            conn.check_timeouts(now)
        self._sweeper = loop.call_later(_SWEEP_S, self._sweep)


_SWEEP_S = 0.25
