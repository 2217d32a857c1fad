"""HTTP/1.1 on an asyncio.Protocol with the httptools parser: the connection and its limits.

A framework would cost more than the whole latency budget (0.4 ms added per
request), so this module is the HTTP server. What it guards, and why here:

- sizes: a URL over `max_url_size` gets 414, headers over `max_header_size` 431,
  a body over the cap 413 before the body arrives; counted on raw bytes, since
  httptools buffers a header until it ends;
- time: headers must arrive within `header_timeout_s` (408), and a connection
  (or a body) silent for `idle_timeout_s` is closed, so slow clients cannot hold
  sockets and buffers;
- memory: each request reserves its size in the shared byte budget before its
  body is read (503 + Retry-After when over); reads pause while `max_pipelined`
  requests wait on the connection or while the client is not reading its
  responses (`pause_writing`), so one connection holds a bounded amount;
- `Expect: 100-continue` is answered at once, or refused with the final status;
- who: with auth on, every path but health asks the gate once its headers are in
  (`_pre_admit`: no credential, a bad one, an API key, a cached verdict), so a refused
  request's body is never read nor charged to the budget; a token the cache does not know
  waits for its review in `_admit`, in turn. 401 / 403 with a message that never holds the
  credential (docs/security.md).

Requests on one connection are answered in order (pipelining-safe); only
inference awaits, everything else is answered inline.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
import zlib

import httptools

from ..codecs import rest as codec
from ..auth.decide import NO_CLIENT_CERT, OPEN_HTTP_PATHS
from ..errors import InvalidInput, PayloadTooLarge, ServingError, Unavailable
from .requests import HttpRequest
from .rest import RestApp, route

log = logging.getLogger(__name__)

_REASONS = {
    200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
    404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
    413: b"Payload Too Large", 414: b"URI Too Long", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 503: b"Service Unavailable", 504: b"Gateway Timeout",
}
_JSON = b"application/json"
_OCTET = b"application/octet-stream"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHALLENGE = b'WWW-Authenticate: Bearer realm="modelship"\r\n'
# Bodies shorter than this go uncompressed whatever Accept-Encoding says (as nginx's gzip_min_length
# and Starlette's GZipMiddleware do): zlib's set-up alone cost ~38 us a response, a third of a small
# model's whole request, to save a few dozen bytes (196 -> 151 for an `mlp` answer).
COMPRESS_MIN_BYTES = 1024


_perf_ns = time.perf_counter_ns

# Where a connection is in its current request.
_IDLE, _HEAD, _BODY = 0, 1, 2


class _Reject(Exception):
    """Raised from a parser callback to stop parsing; the answer is already decided."""


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "app", "parser", "transport", "loop", "url", "url_done", "header_bytes", "head_raw", "headers_count",
        "body", "body_size", "content_length", "header_length", "content_encoding", "accept_encoding",
        "expect_continue", "verdict", "reserved", "answered", "queue", "busy", "closing", "state", "since",
        "last_rx", "write_paused", "read_paused", "served", "paused_at", "path", "parts",
        "authorization", "client_cert", "authorized", "traceparent", "tracestate",
    )

    def __init__(self, app: RestApp) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.loop = None
        self.queue: list[HttpRequest] = []  # parsed requests waiting for an earlier one on this connection
        self.busy = False
        self.closing = False
        self.write_paused = False
        self.read_paused = False
        self.state = _IDLE
        self.head_raw = 0
        self.served = 0
        self.paused_at = 0.0
        self.client_cert = False
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.path = ""
        self.parts = []
        self.url_done = False
        self.header_bytes = 0
        self.headers_count = 0
        self.body = []
        self.body_size = 0
        self.content_length = None
        self.header_length = None
        self.content_encoding = None
        self.accept_encoding = None
        self.expect_continue = False
        self.authorization = None
        self.authorized = False
        self.verdict = None
        self.reserved = 0
        self.answered = False
        self.traceparent = None
        self.tracestate = None

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.since = self.last_rx = self.loop.time()
        app = self.app
        limits = app.limits
        if len(app.connections) >= limits.max_connections:
            app.refused_connections += 1
            self._send_error(503, f"the server holds its limit of {limits.max_connections} connections "
                             "(--http-max-connections); retry later", close=True, retry_after=1)
            return
        app.connections.add(self)
        if app.require_client_cert:
            self.client_cert = bool(transport.get_extra_info("peercert"))
        transport.set_write_buffer_limits(high=limits.write_buffer_high)

    def connection_lost(self, exc) -> None:
        self.app.connections.discard(self)
        self.closing = True
        budget = self.app.budget
        if self.reserved:
            budget.release(self.reserved)
            self.reserved = 0
        for req in self.queue:
            if req.reserved:
                budget.release(req.reserved)
        self.queue.clear()

    def pause_writing(self) -> None:
        # The client is not reading its responses: stop reading its requests.
        self.write_paused = True
        self.paused_at = self.loop.time()
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()
        self._drain_queue()

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        if self.state != _BODY:
            self.head_raw += len(data)
        try:
            self.parser.feed_data(data)
        except _Reject:
            return
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Reject) or self.closing:
                return
            log.error("HTTP parser callback failed: %r", exc.__context__)
            self._send_error(500, "internal error while parsing the request", close=True)
            return
        except httptools.HttpParserUpgrade:
            self._send_error(400, "protocol upgrades are not supported", close=True)
            return
        except httptools.HttpParserError as exc:
            self._send_error(400, f"malformed HTTP request: {exc}", close=True)
            return
        if self.state != _BODY and self.head_raw > self.app.limits.max_url_size + self.app.limits.max_header_size:
            self._reject_head()

    # -- timeouts, called by RestApp's sweep -----------------------------------

    def check_timeouts(self, now: float) -> None:
        if self.closing:
            return
        limits = self.app.limits
        if self.write_paused:
            # Responses unread for this long: the client is gone or hostile; free what it holds.
            if now - self.paused_at > limits.idle_timeout_s:
                self.abort()
            return
        if self.read_paused:
            return  # waiting on us (its earlier requests), not on the client
        if self.state == _HEAD or (self.state == _IDLE and self.served == 0 and not self.busy):
            if now - self.since > limits.header_timeout_s:
                self._answer_now(408, f"the request headers did not arrive within {limits.header_timeout_s:g} s",
                                 close=True)
        elif self.state == _BODY:
            if now - self.last_rx > limits.idle_timeout_s:
                self._answer_now(408, f"the request body stopped arriving for {limits.idle_timeout_s:g} s",
                                 close=True)
        elif not self.busy and not self.queue and now - self.last_rx > limits.idle_timeout_s:
            self.abort()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # -- httptools callbacks --------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        self.state = _HEAD
        self.since = self.last_rx

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.app.limits.max_url_size:
            self._answer_now(414, f"the request URL is longer than {self.app.limits.max_url_size} bytes", close=True)
            raise _Reject

    def on_header(self, name: bytes, value: bytes) -> None:
        self.url_done = True
        self.header_bytes += len(name) + len(value) + 4
        self.headers_count += 1
        limits = self.app.limits
        if self.header_bytes > limits.max_header_size or self.headers_count > 256:
            self._reject_head()
            raise _Reject
        n = name.lower()
        if n == b"content-length":
            try:
                self.content_length = int(value)
            except ValueError:
                pass
        elif n == b"inference-header-content-length":
            try:
                self.header_length = int(value)
            except ValueError:
                self.header_length = -1
        elif n == b"content-encoding":
            self.content_encoding = value.lower()
        elif n == b"accept-encoding":
            self.accept_encoding = value.lower()
        elif n == b"expect":
            self.expect_continue = value.lower() == b"100-continue"
        elif n == b"authorization":
            self.authorization = value
        elif n == b"traceparent":
            self.traceparent = value.decode("latin-1")
        elif n == b"tracestate":
            self.tracestate = value.decode("latin-1")

    def _reject_head(self) -> None:
        limits = self.app.limits
        if not self.url_done:
            self._answer_now(414, f"the request URL is longer than {limits.max_url_size} bytes", close=True)
        else:
            self._answer_now(431, f"the request headers are larger than {limits.max_header_size} bytes "
                             "(or more than 256 fields)", close=True)

    def on_headers_complete(self) -> None:
        self.url_done = True
        self.head_raw = 0
        self.state = _BODY
        app = self.app
        self.path = path = self.url.split(b"?", 1)[0].decode("latin-1")
        self.parts = path.strip("/").split("/")
        size = self.content_length or 0
        denied = self._pre_admit() if app.gate is not None or app.require_client_cert else None
        refusal = app.refuse_early(self.parser.get_method(), self.parts) if size else None
        if denied is not None:
            # Refused before its body is read or reserved: an unauthenticated client cannot
            # spend the byte budget that authenticated ones need.
            self.verdict = (denied.http_status, denied.message, self.expect_continue,
                            1 if denied.http_status == 503 else None)
        elif size > app.max_body_size:
            self.verdict = (413, f"request body of {size} bytes exceeds the limit of {app.max_body_size} bytes "
                                 "(--http-max-body-size)", True, None)
        elif refusal is not None:
            # The model's queue is full: say so before the body is read or decoded.
            self.verdict = (refusal.http_status, refusal.message, self.expect_continue, refusal.retry_after_s)
        elif size:
            reserved = app.budget.try_reserve(size)
            if reserved < 0:
                # Read and drop the body, keeping the connection (closing with unread data
                # makes the kernel reset it, and clients lose the 503); a client waiting
                # for 100-continue has sent nothing, so closing is clean there.
                self.verdict = (503, app.budget.message(size), self.expect_continue, 1)
            else:
                self.reserved = reserved
                if size > 65536:
                    self.body = bytearray(size)  # filled in place: no join, no second copy
        if self.verdict is not None:
            if not self.busy and not self.queue:
                # Answer before the body arrives: reading it is wasted work.
                status, message, close, retry = self.verdict
                self._answer_now(status, message, close=close, retry_after=retry)
                self.answered = True
        elif self.expect_continue and not self.busy and not self.queue:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self.verdict is not None:
            return
        start = self.body_size
        self.body_size += len(body)
        if isinstance(self.body, bytearray):
            if self.body_size > len(self.body):
                self.verdict = (400, f"request body is longer than its Content-Length {len(self.body)}", True, None)
                return
            self.body[start:self.body_size] = body
        elif self.body_size > self.app.max_body_size:
            self.verdict = (413, f"request body of at least {self.body_size} bytes exceeds the limit of "
                                 f"{self.app.max_body_size} bytes (--http-max-body-size)", True, None)
            self.body = []
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.state = _IDLE
        self.served += 1
        if self.answered:
            return
        body = self.body
        if isinstance(body, list):
            body = body[0] if len(body) == 1 else b"".join(body)
        if self.verdict is None and not self.reserved and body:
            # Chunked: the size is known only now.
            reserved = self.app.budget.try_reserve(len(body))
            if reserved < 0:
                self.verdict = (503, self.app.budget.message(len(body)), False, 1)
            else:
                self.reserved = reserved
        req = HttpRequest(
            self.parser.get_method(), self.path, self.parts, body, self.header_length,
            self.content_encoding, self.accept_encoding, self.parser.should_keep_alive(),
            self.reserved, self.verdict, self.authorization, self.authorized, self.traceparent, self.tracestate,
        )
        self.reserved = 0
        self.body = []
        if self.busy or self.queue or self.write_paused:
            self.queue.append(req)
            self._update_reading()
        else:
            self._dispatch(req)

    # -- request handling -----------------------------------------------------

    def _update_reading(self) -> None:
        t = self.transport
        if t is None or self.closing:
            return
        want_pause = self.write_paused or len(self.queue) >= self.app.limits.max_pipelined
        if want_pause and not self.read_paused:
            t.pause_reading()
            self.read_paused = True
        elif not want_pause and self.read_paused:
            t.resume_reading()
            self.read_paused = False

    def _dispatch(self, req: HttpRequest) -> None:
        keep_alive = req.keep_alive
        if req.verdict is not None:
            status, message, close, retry = req.verdict
            self._done(req)
            self._send_error(status, message, close=close or not keep_alive, retry_after=retry)
            return
        if (self.app.gate is not None or self.app.require_client_cert) and not req.authorized \
                and not self._admit(req):
            return
        try:
            r, params = route(req.parts)
            if req.method not in r.methods:
                self._done(req)
                allowed = ", ".join(m.decode() for m in sorted(r.methods))
                self._send_error(405, f"method {req.method.decode()} is not allowed on {req.path}; use {allowed}",
                                 close=not keep_alive)
                return
            if req.content_encoding and req.body:
                req.body = _decompress(req.body, req.content_encoding, self.app.max_body_size)
            if r.infer:
                self.busy = True
                _run_eagerly(r.handler(self.app, req, params), lambda result, exc: self._infer_done(req, result, exc))
                return
            status, payload = r.handler(self.app, req, params)
            self._done(req)
            self._send(status, payload, _JSON, keep_alive)
        except ServingError as exc:
            self._done(req)
            self._send_serving_error(exc, keep_alive)
        except Exception as exc:  # noqa: BLE001 - a bug: report it, keep the connection usable
            self._done(req)
            log.exception("unexpected error on %s", req.path)
            self._send_error(500, f"internal error: {type(exc).__name__}: {exc}", close=not keep_alive)

    def _pre_admit(self):
        """What the gate decides without the network, once the headers are in: a refusal (then
        answered before the body is read), or None (`authorized` says whether it may go on, or
        whether `_admit` must wait for a token review)."""
        if tuple(self.parts) in OPEN_HTTP_PATHS:
            self.authorized = True
            return None
        if self.app.require_client_cert and not self.client_cert:
            return NO_CLIENT_CERT
        gate = self.app.gate
        verdict = gate.quick(self.authorization) if gate is not None else None
        if gate is None or (verdict is not None and verdict.allowed):
            self.authorized = True
            return None
        return verdict

    def _admit(self, req: HttpRequest) -> bool:
        """Whether `req`, which `_pre_admit` could not decide, may go on now; otherwise it is
        answered (401/403) or waits for a token review."""
        if tuple(req.parts) in OPEN_HTTP_PATHS:
            return True
        if self.app.require_client_cert and not self.client_cert:
            self._refuse(req, NO_CLIENT_CERT)
            return False
        gate = self.app.gate
        if gate is None:
            return True
        verdict = gate.quick(req.authorization)
        if verdict is None:
            self.busy = True
            _run_eagerly(gate.review(req.authorization), lambda v, exc: self._reviewed(req, v, exc))
            return False
        if verdict.allowed:
            return True
        self._refuse(req, verdict)
        return False

    def _reviewed(self, req: HttpRequest, verdict, exc) -> None:
        self.busy = False
        if self.closing:
            self._done(req)
            return
        if exc is not None:
            log.error("token review failed: %r", exc)
            self._done(req)
            self._send_error(500, "internal error while checking the credential", close=not req.keep_alive)
        elif verdict.allowed:
            req.authorized = True
            self._dispatch(req)
        else:
            self._refuse(req, verdict)
        self._drain_queue()

    def _refuse(self, req: HttpRequest, verdict) -> None:
        self._done(req)
        extra = _CHALLENGE if verdict.http_status == 401 else b""
        if verdict.http_status == 503:
            extra = b"Retry-After: 1\r\n"
        self._send(verdict.http_status, codec.error_body(verdict.message), _JSON, req.keep_alive, extra)

    def _done(self, req: HttpRequest) -> None:
        """The request no longer holds its bytes: give them back to the budget."""
        if req.reserved:
            self.app.budget.release(req.reserved)
            req.reserved = 0
        req.body = b""

    def _infer_done(self, req: HttpRequest, result, exc) -> None:
        self.busy = False
        self._done(req)
        keep_alive = req.keep_alive
        trace = req.trace
        if trace is not None:
            req.trace = None
            if exc is None and not self.closing:
                trace.encode_ns = _perf_ns()
            try:
                self._answer_infer(req, result, exc, keep_alive)
            finally:
                trace.finish(None if exc is None else _error_text(exc))
            return
        self._answer_infer(req, result, exc, keep_alive)

    def _answer_infer(self, req: HttpRequest, result, exc, keep_alive: bool) -> None:
        if self.closing:
            return
        if exc is None and isinstance(result, tuple):  # an async route's (status, JSON body)
            self._send(result[0], result[1], _JSON, keep_alive)
        elif exc is None:
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
                           _OCTET if chunks else _JSON, keep_alive, extra, req.accept_encoding)
        elif isinstance(exc, ServingError):
            self._send_serving_error(exc, keep_alive)
        else:
            log.error("unexpected error during inference: %r", exc)
            self._send_error(500, f"internal error: {type(exc).__name__}: {exc}", close=not keep_alive)
        self._drain_queue()

    def _drain_queue(self) -> None:
        while self.queue and not self.busy and not self.closing and not self.write_paused:
            self._dispatch(self.queue.pop(0))
        self._update_reading()

    def _answer_now(self, status: int, message: str, close: bool, retry_after: int | None = None) -> None:
        """Answer out of turn (a limit hit while parsing); only ever with nothing else owed, or closing."""
        if close and (self.busy or self.queue):
            # Earlier responses are still owed: dropping the connection is the only safe answer.
            self.abort()
            return
        self._send_error(status, message, close=close, retry_after=retry_after)

    def _send_serving_error(self, exc: ServingError, keep_alive: bool) -> None:
        extra = b""
        if isinstance(exc, Unavailable):
            extra = b"Retry-After: %d\r\n" % exc.retry_after_s
        self._send(exc.http_status, codec.error_body(exc.message), _JSON, keep_alive, extra)

    def _send_error(self, status: int, message: str, close: bool, retry_after: int | None = None) -> None:
        extra = b"Retry-After: %d\r\n" % retry_after if retry_after is not None else b""
        if status == 401:
            extra += _CHALLENGE
        self._send(status, codec.error_body(message), _JSON, not close, extra)

    def _send(self, status: int, body, content_type: bytes, keep_alive: bool,
              extra: bytes = b"", accept_encoding: bytes | None = None) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if accept_encoding and isinstance(body, (bytes, list)) and _length(body) >= COMPRESS_MIN_BYTES:
            raw = body if isinstance(body, bytes) else b"".join(bytes(c) for c in body)
            if b"gzip" in accept_encoding:
                body, extra = gzip.compress(raw, compresslevel=1), extra + b"Content-Encoding: gzip\r\n"
            elif b"deflate" in accept_encoding:
                body, extra = zlib.compress(raw, 1), extra + b"Content-Encoding: deflate\r\n"
        length = _length(body)
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


def _error_text(exc: BaseException) -> str:
    return exc.message if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"


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
        _drop_tracebacks(exc)
        on_done(None, exc)
        return
    if fut is None:  # a bare `yield` (asyncio.sleep(0)): resume on the next turn
        asyncio.get_running_loop().call_soon(_run_eagerly, coro, on_done)
    else:
        fut._asyncio_future_blocking = False
        fut.add_done_callback(lambda _f: _run_eagerly(coro, on_done))


def _drop_tracebacks(exc: BaseException) -> None:
    """Cut the exception from the frames it was raised through.

    Those frames reference the future that resumed this coroutine, which holds
    the exception: a cycle that only the garbage collector can free, keeping the
    request's body (up to the body cap, per request) alive until it runs. The
    error's message is all the response needs.
    """
    seen = 0
    while exc is not None and seen < 8:
        exc.__traceback__ = None
        exc = exc.__context__ or exc.__cause__
        seen += 1


def _length(body: bytes | list) -> int:
    return sum(len(c) for c in body) if isinstance(body, list) else len(body)


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    if encoding == b"identity":
        return body
    if encoding not in (b"gzip", b"deflate"):
        raise InvalidInput(f"Content-Encoding {encoding.decode(errors='replace')!r} is not supported; "
                           "use gzip or deflate")
    wbits = 31 if encoding == b"gzip" else 15
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"request body is not valid {encoding.decode()} data: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed request body exceeds the limit of {limit} bytes (--http-max-body-size)")
    return out
