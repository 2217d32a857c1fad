"""One parsed HTTP request, as the connection hands it to the routes."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(slots=True)
class HttpRequest:
    method: bytes
    path: str
    parts: list[str]  # the path's segments, "/v2/models/m/infer" -> ["v2", "models", "m", "infer"]
    body: bytes | bytearray
    header_length: int | None  # Inference-Header-Content-Length (binary extension)
    content_encoding: bytes | None
    accept_encoding: bytes | None
    keep_alive: bool
    reserved: int = 0  # bytes of the in-flight budget this request holds until answered
    # An answer decided while parsing (413, 503 shed): (status, message, close, retry_after)
    verdict: tuple[int, str, bool, int | None] | None = None
    authorization: bytes | None = None  # the Authorization header, handed to the auth gate only
    authorized: bool = False  # the gate let it in (set after an asynchronous token review)
    # W3C trace context headers, kept only when present; `trace` is set once the request is sampled
    traceparent: str | None = None
    tracestate: str | None = None
    trace: Any = None
