"""KServe v2 REST over HTTP/1.1, on an asyncio.Protocol with the httptools parser.

A framework would cost more than the whole latency budget (0.4 ms added per
request), so this module is the HTTP server: parse with httptools, route on
the path's segments, call the DataPlane, write one buffer list back. Requests
on one connection are answered in order (pipelining-safe); only inference
awaits, everything else is answered inline.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import zlib
from urllib.parse import unquote

import httptools

from ..codecs import rest as codec
from ..dataplane import DataPlane
from ..errors import InvalidInput, ModelNotFound, PayloadTooLarge, ServingError, Unavailable, Unsupported

log = logging.getLogger(__name__)

_REASONS = {
    200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
    413: b"Payload Too Large", 500: b"Internal Server Error", 503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
_JSON = b"application/json"
_OCTET = b"application/octet-stream"


class RestApp:
    """Routing and request handling, shared by all connections."""

    def __init__(self, dataplane: DataPlane, *, max_body_size: int) -> None:
        self.dp = dataplane
        self.max_body_size = max_body_size
        self.connections: set[HttpConnection] = set()

    def protocol_factory(self) -> "HttpConnection":
        return HttpConnection(self)

    def busy(self) -> bool:
        """Whether any connection still owes a response (used when draining)."""
        return any(c.busy or c.queue for c in self.connections)

    # Each handler returns (status, body, content_type, extra_headers) or raises ServingError.

    def handle_simple(self, method: bytes, parts: list[str], body: bytes):
        dp = self.dp
        n = len(parts)
        if n == 1:  # /v2
            return 200, codec.dumps(dp.server_metadata())
        p1 = parts[1]
        if p1 == "health" and n == 3:
            ok = dp.live() if parts[2] == "live" else dp.ready() if parts[2] == "ready" else None
            if ok is None:
                raise ModelNotFound(f"no route for /{'/'.join(parts)}")
            return (200 if ok else 503), b""
        if p1 == "repository":
            if n == 3 and parts[2] == "index":
                ready_only = False
                if body:
                    try:
                        doc = codec._loads(body)
                    except ValueError as exc:
                        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
                    ready_only = bool(doc.get("ready", False)) if isinstance(doc, dict) else False
                return 200, codec.dumps(dp.repository_index(ready_only))
            if n == 5 and parts[2] == "models" and parts[4] in ("load", "unload"):
                raise Unsupported(
                    f"model {parts[4]} is not supported: this server serves the repository it started with"
                )
        if p1 == "models":
            if n == 3 and parts[2] == "stats":
                return 200, codec.dumps({"model_stats": [s.to_dict() for s in dp.statistics()]})
            name, version, action = _model_route(parts)
            if action == "":
                return 200, codec.dumps(dp.model_metadata(name, version))
            if action == "ready":
                if dp.model_ready(name, version):
                    return 200, b""
                m = dp.registry.find(name, version)
                return (404 if m is None else 503), b""
            if action == "config":
                return 200, codec.dumps(codec.message_to_dict(dp.model_config(name, version)))
            if action == "stats":
                return 200, codec.dumps({"model_stats": [s.to_dict() for s in dp.statistics(name, version)]})
        if p1 in ("systemsharedmemory", "cudasharedmemory", "trace", "logging"):
            raise Unsupported(f"the {p1} extension is not supported by this server")
        raise ModelNotFound(f"no route for /{'/'.join(parts)}")


def _model_route(parts: list[str]) -> tuple[str, str, str]:
    """v2/models/<name>[/versions/<v>][/<action>] -> (name, version, action)."""
    n = len(parts)
    if n < 3:
        raise ModelNotFound("no route for /v2/models")
    name = unquote(parts[2])
    version = ""
    i = 3
    if n > 4 and parts[3] == "versions":
        version = parts[4]
        i = 5
    if n == i:
        return name, version, ""
    if n == i + 1:
        return name, version, parts[i]
    raise ModelNotFound(f"no route for /{'/'.join(parts)}")


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "app", "parser", "transport", "url", "headers_needed", "body", "body_size", "too_large",
        "queue", "busy", "closing", "header_length", "content_encoding", "accept_encoding",
    )

    def __init__(self, app: RestApp) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.queue: list = []  # parsed requests waiting for an earlier one on this connection
        self.busy = False
        self.closing = False
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.body = []
        self.body_size = 0
        self.too_large = 0
        self.header_length = None
        self.content_encoding = None
        self.accept_encoding = None

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.app.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.app.connections.discard(self)
        self.closing = True

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._send_error(400, "protocol upgrades are not supported", close=True)
        except httptools.HttpParserError as exc:
            self._send_error(400, f"malformed HTTP request: {exc}", close=True)

    # -- httptools callbacks --------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        n = name.lower()
        if n == b"inference-header-content-length":
            try:
                self.header_length = int(value)
            except ValueError:
                self.header_length = -1
        elif n == b"content-length":
            try:
                size = int(value)
            except ValueError:
                return
            if size > self.app.max_body_size:
                self.too_large = size
        elif n == b"content-encoding":
            self.content_encoding = value.lower()
        elif n == b"accept-encoding":
            self.accept_encoding = value.lower()

    def on_headers_complete(self) -> None:
        if self.too_large and not self.busy:
            # Answer before the body arrives, then close: reading it is wasted work.
            self._send_error(
                413,
                f"request body of {self.too_large} bytes exceeds the limit of {self.app.max_body_size} bytes "
                "(--http-max-body-size)",
                close=True,
            )

    def on_body(self, body: bytes) -> None:
        if self.too_large:
            return
        self.body_size += len(body)
        if self.body_size > self.app.max_body_size:
            self.too_large = self.body_size
            self.body = []
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        req = (
            self.parser.get_method(), self.url, body, self.header_length, self.content_encoding,
            self.accept_encoding, self.parser.should_keep_alive(), self.too_large,
        )
        if self.busy:
            self.queue.append(req)
        else:
            self._dispatch(req)

    # -- request handling -----------------------------------------------------

    def _dispatch(self, req) -> None:
        method, url, body, header_length, content_encoding, accept_encoding, keep_alive, too_large = req
        if too_large:
            # The rest of the body is not worth reading: answer and close.
            self._send_error(
                413,
                f"request body of {too_large} bytes exceeds the limit of {self.app.max_body_size} bytes "
                "(--http-max-body-size)",
                close=True,
            )
            return
        path = url.split(b"?", 1)[0].decode("latin-1")
        parts = path.strip("/").split("/")
        if not parts or parts[0] != "v2":
            self._send_error(404, f"no route for {path}; this server speaks the KServe v2 protocol under /v2", close=not keep_alive)
            return
        try:
            if content_encoding and body:
                body = _decompress(body, content_encoding, self.app.max_body_size)
            if method == b"POST" and len(parts) >= 4 and parts[-1] == "infer" and parts[1] == "models":
                name, version, _ = _model_route(parts)
                self.app.dp.registry.get(name, version)  # 404 / 503 before looking at the body
                request = codec.decode_request(body, header_length, name, version)
                self.busy = True
                _run_eagerly(self.app.dp.infer(request),
                             lambda result, exc: self._infer_done(result, exc, accept_encoding, keep_alive))
                return
            if method not in (b"GET", b"POST", b"HEAD"):
                self._send_error(405, f"method {method.decode()} is not allowed on {path}", close=not keep_alive)
                return
            status, payload = self.app.handle_simple(method, parts, body)
            self._send(status, payload, _JSON, keep_alive)
        except ServingError as exc:
            self._send_serving_error(exc, keep_alive)
        except Exception as exc:  # noqa: BLE001 - a bug: report it, keep the connection usable
            log.exception("unexpected error on %s", path)
            self._send_error(500, f"internal error: {type(exc).__name__}: {exc}", close=not keep_alive)

    def _infer_done(self, result, exc, accept_encoding, keep_alive: bool) -> None:
        self.busy = False
        if self.closing:
            return
        if exc is None:
            try:
                header, chunks, header_length = codec.encode_response(result)
            except Exception as e:  # noqa: BLE001
                log.exception("failed to encode a response")
                self._send_error(500, f"internal error while encoding the response: {e}", close=not keep_alive)
            else:
                extra = b""
                if header_length is not None:
                    extra = b"Inference-Header-Content-Length: %d\r\n" % header_length
                self._send(200, [header, *chunks] if chunks else header,
                           _OCTET if chunks else _JSON, keep_alive, extra, accept_encoding)
        elif isinstance(exc, ServingError):
            self._send_serving_error(exc, keep_alive)
        else:
            log.error("unexpected error during inference: %r", exc)
            self._send_error(500, f"internal error: {type(exc).__name__}: {exc}", close=not keep_alive)
        self._drain_queue()

    def _drain_queue(self) -> None:
        while self.queue and not self.busy and not self.closing:
            self._dispatch(self.queue.pop(0))

    def _send_serving_error(self, exc: ServingError, keep_alive: bool) -> None:
        extra = b""
        if isinstance(exc, Unavailable):
            extra = b"Retry-After: %d\r\n" % exc.retry_after_s
        self._send(exc.http_status, codec.error_body(exc.message), _JSON, keep_alive, extra)

    def _send_error(self, status: int, message: str, close: bool) -> None:
        self._send(status, codec.error_body(message), _JSON, not close)

    def _send(self, status: int, body, content_type: bytes, keep_alive: bool,
              extra: bytes = b"", accept_encoding: bytes | None = None) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if accept_encoding and isinstance(body, (bytes, list)) and body:
            raw = body if isinstance(body, bytes) else b"".join(bytes(c) for c in body)
            if b"gzip" in accept_encoding:
                body, extra = gzip.compress(raw, compresslevel=1), extra + b"Content-Encoding: gzip\r\n"
            elif b"deflate" in accept_encoding:
                body, extra = zlib.compress(raw, 1), extra + b"Content-Encoding: deflate\r\n"
        if isinstance(body, list):
            length = sum(len(c) for c in body)
        else:
            length = len(body)
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n" % (
            status, _REASONS.get(status, b"Unknown"), content_type, length, extra,
            b"" if keep_alive else b"Connection: close\r\n",
        )
        if isinstance(body, list):
            t.writelines([head, *body])
        else:
            t.write(head + body if length < 65536 else head)
            if length >= 65536:
                t.write(body)
        if not keep_alive:
            t.close()
            self.closing = True


def _run_eagerly(coro, on_done) -> None:
    """Drive a coroutine like a Task would, but start it now instead of on the next loop turn.

    Python 3.12's eager tasks, for 3.11: a request whose model runs inline completes in
    this very call (no Task object, no event-loop hop); one that must wait for a queue
    or a worker thread resumes from the future it awaits, via that future's callback.
    """
    try:
        fut = coro.send(None)
    except StopIteration as stop:
        on_done(stop.value, None)
        return
    except BaseException as exc:  # noqa: BLE001 - handed to the response writer
        on_done(None, exc)
        return
    if fut is None:  # a bare `yield` (asyncio.sleep(0)): resume on the next turn
        asyncio.get_running_loop().call_soon(_run_eagerly, coro, on_done)
    else:
        fut._asyncio_future_blocking = False
        fut.add_done_callback(lambda _f: _run_eagerly(coro, on_done))


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    if encoding == b"identity":
        return body
    if encoding not in (b"gzip", b"deflate"):
        raise InvalidInput(f"Content-Encoding {encoding.decode()!r} is not supported; use gzip or deflate")
    wbits = 31 if encoding == b"gzip" else 15
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"request body is not valid {encoding.decode()} data: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed request body exceeds the limit of {limit} bytes (--http-max-body-size)")
    return out
