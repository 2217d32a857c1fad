"""Readers for each model URI scheme: HTTP(S), S3 (SigV4, standard library only), PVC paths.

Each `open_source` maps the transport's failures onto a FetchOutcome: DNS errors, refused
connections and 5xx are "unreachable", 401/403 "access denied", 404 "not found".
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import pathlib
import urllib.error
import urllib.parse
import urllib.request
from typing import BinaryIO, Mapping

from modelship.fetch.outcomes import FetchError, FetchOutcome
from modelship.modeluri import ModelURI

PVC_MOUNT = "/mnt/model-source"
TIMEOUT_SECONDS = 30.0


def open_source(uri: ModelURI, *, env: Mapping[str, str], pvc_mount: str = PVC_MOUNT) -> BinaryIO:
    """Open the model file for reading; raise FetchError with the right outcome on failure."""
    if uri.scheme == "pvc":
        return _open_file(pathlib.Path(pvc_mount) / uri.path, uri)
    if uri.scheme == "s3":
        url, headers = s3_request(uri, env=env, now=datetime.datetime.now(datetime.timezone.utc))
    else:
        url, headers = uri.raw, {}
        if env.get("AUTHORIZATION"):
            headers["Authorization"] = env["AUTHORIZATION"]
    return _open_url(url, headers, uri)


def _open_file(path: pathlib.Path, uri: ModelURI) -> BinaryIO:
    try:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise FetchError(FetchOutcome.NOT_FOUND, f"{uri.raw}: no file {uri.path} in claim {uri.location}") from None
    except PermissionError:
        raise FetchError(FetchOutcome.ACCESS_DENIED, f"{uri.raw}: permission denied reading {uri.path}") from None
    except IsADirectoryError:
        raise FetchError(FetchOutcome.INVALID_URI, f"{uri.raw}: {uri.path} is a directory, not a model file") from None
    except OSError as error:
        raise FetchError(FetchOutcome.UNREACHABLE, f"{uri.raw}: cannot read: {error.strerror}") from None


def _open_url(url: str, headers: dict[str, str], uri: ModelURI) -> BinaryIO:
    request = urllib.request.Request(url, headers={"User-Agent": "modelship-fetch/1", **headers})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)  # noqa: S310 - scheme checked by modeluri
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            outcome = FetchOutcome.ACCESS_DENIED
        elif error.code in (404, 410):
            outcome = FetchOutcome.NOT_FOUND
        else:
            outcome = FetchOutcome.UNREACHABLE
        raise FetchError(outcome, f"{uri.raw}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise FetchError(FetchOutcome.UNREACHABLE, f"{uri.raw}: {error.reason}") from None
    except (TimeoutError, OSError) as error:
        raise FetchError(FetchOutcome.UNREACHABLE, f"{uri.raw}: {error}") from None


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


def environment() -> Mapping[str, str]:
    return os.environ
