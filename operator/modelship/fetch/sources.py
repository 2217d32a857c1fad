"""Readers for each model URI scheme: HTTP(S), S3 (SigV4, standard library only), PVC paths.

Each `open_source` maps the transport's failures onto a FetchOutcome: DNS errors, refused
connections, timeouts and 5xx are "unreachable", 401/403 "access denied", 404 "not found".

Redirects are followed only within the scheme the URI names (https is never downgraded, and
no other scheme is followed). When a redirect leaves the host, the credentials go no further:
Authorization and every x-amz-* header are dropped. An S3 request signed with SigV4 is not
re-signed for the new host: its signature names a host and a region, and S3 redirects to
another host only when the bucket lives in another region, so the fix is AWS_REGION (or
AWS_ENDPOINT_URL), and our credentials go only to a host the user named.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import hmac
import http.client
import os
import pathlib
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Mapping

from modelship.fetch.outcomes import FetchError, FetchOutcome
from modelship.modeluri import ModelURI, redact

PVC_MOUNT = "/mnt/model-source"
IDLE_TIMEOUT_SECONDS = 30.0  # no byte for this long (and connecting): the attempt has failed
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclasses.dataclass(frozen=True)
class Deadline:
    """The fetch's total time budget, on a monotonic clock (injectable for tests)."""

    seconds: float
    start: float
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(seconds=seconds, start=clock(), clock=clock)

    def left(self) -> float:
        return self.start + self.seconds - self.clock()

    def check(self, uri: ModelURI, done: str) -> None:
        """Raise "unreachable" once the deadline has passed; `done` says how far it got."""
        if self.left() <= 0:
            raise FetchError(FetchOutcome.UNREACHABLE,
                             f"{uri.redacted}: the {self.seconds:g} s deadline passed {done}")


@dataclasses.dataclass
class Source:
    """An open model file: `read1` returns what one read yields (b"" at the end); `length` is
    the size the source announced (Content-Length, the file's size), or None."""

    stream: Any  # http.client.HTTPResponse or a file object: both have read1 and close
    length: int | None

    def read1(self, size: int) -> bytes:
        return self.stream.read1(size)

    def close(self) -> None:
        self.stream.close()


def open_source(uri: ModelURI, *, env: Mapping[str, str], deadline: Deadline, pvc_mount: str = PVC_MOUNT) -> Source:
    """Open the model file for reading; raise FetchError with the right outcome on failure."""
    if uri.scheme == "pvc":
        return _open_file(pathlib.Path(pvc_mount) / uri.path, uri)
    signed = False
    if uri.scheme == "s3":
        url, headers = s3_request(uri, env=env, now=datetime.datetime.now(datetime.timezone.utc))
        signed = "Authorization" in headers
    else:
        url, headers = http_request(uri, env=env)
    return _open_url(url, headers, uri, deadline=deadline, signed=signed)


def http_request(uri: ModelURI, *, env: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """URL and headers of an http(s) GET: the Secret's AUTHORIZATION, else the URI's own
    `user:password@` as Basic auth (urllib would take it for part of the host)."""
    parts = urllib.parse.urlsplit(uri.raw)
    url = uri.raw
    headers: dict[str, str] = {}
    if parts.username is not None:
        url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    if env.get("AUTHORIZATION"):
        headers["Authorization"] = env["AUTHORIZATION"]
    return url, headers


def _open_file(path: pathlib.Path, uri: ModelURI) -> Source:
    try:
        stream = open(path, "rb")  # noqa: SIM115 - the caller closes it
        return Source(stream, os.fstat(stream.fileno()).st_size)
    except FileNotFoundError:
        raise FetchError(FetchOutcome.NOT_FOUND, f"{uri.redacted}: no file {uri.path} in claim {uri.location}") from None
    except PermissionError:
        raise FetchError(FetchOutcome.ACCESS_DENIED, f"{uri.redacted}: permission denied reading {uri.path}") from None
    except IsADirectoryError:
        raise FetchError(FetchOutcome.INVALID_URI, f"{uri.redacted}: {uri.path} is a directory, not a model file") from None
    except OSError as error:
        raise FetchError(FetchOutcome.UNREACHABLE, f"{uri.redacted}: cannot read: {error.strerror}") from None


def is_credential(header: str) -> bool:
    """Headers that carry or prove credentials: never sent to a host the user did not name."""
    name = header.lower()
    return name in ("authorization", "proxy-authorization", "cookie") or name.startswith("x-amz-")


def redirect_verdict(old_url: str, new_url: str, *, signed: bool) -> tuple[str | None, bool]:
    """(why the redirect is refused or None, whether it leaves the host): the redirect policy,
    pure. The scheme must stay the same; a SigV4-signed request must stay on its host."""
    old, new = urllib.parse.urlsplit(old_url), urllib.parse.urlsplit(new_url)
    old_scheme, new_scheme = old.scheme.lower(), new.scheme.lower()
    if new_scheme != old_scheme:
        why = "https is never downgraded to http" if old_scheme == "https" and new_scheme == "http" else \
            f"a redirect must stay on {old_scheme}://"
        return why, True
    try:
        moved = (old.hostname, old.port or _DEFAULT_PORTS.get(old_scheme)) != \
                (new.hostname, new.port or _DEFAULT_PORTS.get(new_scheme))
    except ValueError:  # a port that is not a number
        return "the redirect names no valid host", True
    if signed and moved:
        return ("the request is signed (SigV4) for its host and region, and is not re-signed for a host "
                "S3 redirected to: set AWS_REGION to the bucket's region, or AWS_ENDPOINT_URL to its endpoint"), True
    return None, moved


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handling, with `redirect_verdict` applied and credentials dropped
    when the host changes (urllib itself forwards every header, and follows ftp://)."""

    def __init__(self, uri: ModelURI, *, signed: bool) -> None:
        self.uri, self.signed = uri, signed

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        why, moved = redirect_verdict(req.full_url, newurl, signed=self.signed)
        if why is not None:
            region = headers.get("x-amz-bucket-region") if headers is not None else None
            where = f" (the bucket's region is {region})" if region and self.signed else ""
            raise FetchError(FetchOutcome.REDIRECT_REFUSED,
                             f"{self.uri.redacted}: HTTP {code} redirects to {redact(newurl)}: not followed, "
                             f"{why}{where}")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and moved:
            for name in [n for n in new.headers if is_credential(n)]:
                del new.headers[name]
            for name in [n for n in new.unredirected_hdrs if is_credential(n)]:
                del new.unredirected_hdrs[name]
        return new


def _open_url(url: str, headers: dict[str, str], uri: ModelURI, *, deadline: Deadline, signed: bool) -> Source:
    deadline.check(uri, "before the request was sent")
    request = urllib.request.Request(url, headers={"User-Agent": "modelship-fetch/1", **headers})
    opener = urllib.request.build_opener(_Redirects(uri, signed=signed))
    timeout = max(0.001, min(IDLE_TIMEOUT_SECONDS, deadline.left()))
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code in (401, 403):
            outcome = FetchOutcome.ACCESS_DENIED
        elif error.code in (404, 410):
            outcome = FetchOutcome.NOT_FOUND
        elif 300 <= error.code < 400:  # a redirect urllib would not follow (no Location, a loop, a file://)
            outcome = FetchOutcome.REDIRECT_REFUSED
        else:
            outcome = FetchOutcome.UNREACHABLE
        raise FetchError(outcome, f"{uri.redacted}: HTTP {error.code} {error.reason}",
                         retry_after=retry_after(error.headers.get("Retry-After") if error.headers else None)) from None
    except urllib.error.URLError as error:
        raise FetchError(FetchOutcome.UNREACHABLE, f"{uri.redacted}: {error.reason}") from None
    except (OSError, http.client.HTTPException) as error:  # timeouts, resets, a garbled status line
        raise FetchError(FetchOutcome.UNREACHABLE, f"{uri.redacted}: {type(error).__name__}: {error}") from None
    return Source(response, _content_length(response.headers.get("Content-Length")))


def retry_after(value: str | None) -> float | None:
    """A Retry-After in seconds (the HTTP-date form is rare for downloads and is ignored)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def _content_length(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def s3_request(
    uri: ModelURI, *, env: Mapping[str, str], now: datetime.datetime
) -> tuple[str, dict[str, str]]:
    """URL and headers of an S3 GetObject; signed with SigV4 when credentials are in `env`.

    AWS_ENDPOINT_URL selects an S3-compatible store (MinIO, Ceph) with path-style URLs;
    without it, AWS's virtual-hosted URL in AWS_REGION (default us-east-1) is used.
    """
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    key_path = "/" + urllib.parse.quote(uri.path, safe="/~-_.")
    endpoint = env.get("AWS_ENDPOINT_URL")
    if endpoint:
        base = urllib.parse.urlsplit(endpoint)
        scheme, host = base.scheme or "https", base.netloc
        path = base.path.rstrip("/") + f"/{uri.location}{key_path}"
    else:
        scheme, host, path = "https", f"{uri.location}.s3.{region}.amazonaws.com", key_path
    url = f"{scheme}://{host}{path}"
    access_key, secret_key = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not access_key or not secret_key:
        return url, {}  # a public object
    headers = {"x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    if env.get("AWS_SESSION_TOKEN"):
        headers["x-amz-security-token"] = env["AWS_SESSION_TOKEN"]
    headers["Authorization"] = sigv4_authorization(
        method="GET", host=host, path=path, headers=headers, region=region,
        access_key=access_key, secret_key=secret_key, now=now,
    )
    headers["x-amz-date"] = now.strftime("%Y%m%dT%H%M%SZ")
    return url, headers


def sigv4_authorization(
    *,
    method: str,
    host: str,
    path: str,
    headers: Mapping[str, str],
    region: str,
    access_key: str,
    secret_key: str,
    now: datetime.datetime,
    service: str = "s3",
) -> str:
    """The Authorization header of AWS Signature Version 4 for a request without a query.

    `headers` must hold x-amz-content-sha256; host and x-amz-date are added to the signed set.
    """
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = now.strftime("%Y%m%d")
    signed = {k.lower(): v.strip() for k, v in headers.items()}
    signed.update({"host": host, "x-amz-date": amz_date})
    names = sorted(signed)
    canonical_headers = "".join(f"{name}:{signed[name]}\n" for name in names)
    signed_headers = ";".join(names)
    canonical_request = "\n".join(
        [method, path, "", canonical_headers, signed_headers, signed["x-amz-content-sha256"]]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    return f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
