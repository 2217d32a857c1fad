"""Sampled request/response records written in batches to a folder or an S3-compatible bucket.

Each batch is two objects a data team reads with numpy and any JSON-lines reader:
`<model>/<YYYY-MM-DD>/<batch>.npz` (every tensor of the batch, key `<record>/<input|output>/<name>`)
then `<batch>.jsonl` (one record a line: id, time, model, version, and per tensor its datatype,
shape and npz key; feedback records carry `label`). The .jsonl is written last: its presence
means the batch is whole. Inference never waits: records go to a bounded queue drained by one
thread; a full queue or a failed write drops the records and counts them.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import hmac
import io
import json
import logging
import os
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np

log = logging.getLogger(__name__)


class DirSink:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, key: str, data: bytes) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(data)
        partial.replace(target)

    def describe(self) -> str:
        return str(self.root)


class S3Sink:
    """PUT objects with SigV4 (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
    AWS_REGION); AWS_ENDPOINT_URL selects an S3-compatible store (path-style URLs)."""

    def __init__(self, uri: str, env: Mapping[str, str] | None = None, timeout_s: float = 5.0) -> None:
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"--capture-uri: expected s3://bucket/prefix, got {uri!r}")
        self.uri = uri
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        self.env = dict(os.environ if env is None else env)
        self.timeout_s = timeout_s

    def describe(self) -> str:
        return self.uri

    def put(self, key: str, data: bytes) -> None:
        env = self.env
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        full = "/".join(p for p in (self.prefix, key) if p)
        key_path = "/" + urllib.parse.quote(full, safe="/~-_.")
        endpoint = env.get("AWS_ENDPOINT_URL")
        if endpoint:
            base = urllib.parse.urlsplit(endpoint)
            scheme, host, path = base.scheme or "https", base.netloc, base.path.rstrip("/") + f"/{self.bucket}{key_path}"
        else:
            scheme, host, path = "https", f"{self.bucket}.s3.{region}.amazonaws.com", key_path
        headers = {"x-amz-content-sha256": hashlib.sha256(data).hexdigest()}
        if env.get("AWS_SESSION_TOKEN"):
            headers["x-amz-security-token"] = env["AWS_SESSION_TOKEN"]
        access, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if access and secret:
            now = datetime.datetime.now(datetime.timezone.utc)
            headers["Authorization"] = _sigv4("PUT", host, path, headers, region, access, secret, now)
            headers["x-amz-date"] = now.strftime("%Y%m%dT%H%M%SZ")
        if scheme not in ("http", "https"):
            raise ValueError(f"AWS_ENDPOINT_URL: expected an http(s) URL, got {endpoint!r}")
        req = urllib.request.Request(f"{scheme}://{host}{path}", data=data, method="PUT", headers=headers)  # noqa: S310
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 - scheme fixed above
            resp.read()


def _sigv4(method: str, host: str, path: str, headers: Mapping[str, str], region: str, access: str, secret: str,
           now: datetime.datetime) -> str:
    """AWS Signature Version 4 of a request without a query string (service s3)."""
    amz_date, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    signed = {k.lower(): v.strip() for k, v in headers.items()} | {"host": host, "x-amz-date": amz_date}
    names = sorted(signed)
    canonical = "\n".join([method, path, "", "".join(f"{n}:{signed[n]}\n" for n in names), ";".join(names),
                           signed["x-amz-content-sha256"]])
    scope = f"{date}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={';'.join(names)}, Signature={sig}"


def encode_batch(records: list[dict]) -> tuple[bytes, bytes]:
    """(npz bytes, jsonl bytes) of a batch of records; tensors go to the npz, the rest to JSON."""
    arrays: dict[str, np.ndarray] = {}
    lines = []
    for i, rec in enumerate(records):
        doc = {k: v for k, v in rec.items() if k not in ("inputs", "outputs")}
        for role in ("inputs", "outputs"):
            if role not in rec:
                continue
            doc[role] = {}
            for name, (datatype, arr) in rec[role].items():
                entry: dict[str, Any] = {"datatype": datatype, "shape": list(arr.shape)}
                if arr.dtype == object:  # BYTES: inline, as text where it decodes
                    entry["data"] = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.ravel()]
                else:
                    key = f"{i}/{role[:-1]}/{name}"
                    arrays[key] = arr
                    entry["npz"] = key
                doc[role][name] = entry
        lines.append(json.dumps(doc, default=_jsonable))
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue(), ("\n".join(lines) + "\n").encode()


def _jsonable(x: object) -> object:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


class CaptureWriter:
    """One thread writes batches; `offer` never blocks and says whether the record was queued."""

    def __init__(self, sink: DirSink | S3Sink, batch_size: int = 100, max_queue: int = 10000,
                 flush_s: float = 1.0) -> None:
        self.sink = sink
        self.batch_size = batch_size
        self.max_queue = max_queue
        self.flush_s = flush_s
        self.queue: collections.deque[dict] = collections.deque()
        self.written: collections.Counter[str] = collections.Counter()  # by model
        self.dropped: collections.Counter[str] = collections.Counter()
        self.errors = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def offer(self, record: dict) -> bool:
        if len(self.queue) >= self.max_queue:
            self.dropped[record["model"]] += 1
            return False
        self.queue.append(record)
        return True

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            if len(self.queue) >= self.batch_size or (self.queue and time.monotonic() - last >= self.flush_s):
                self._flush_one()
                last = time.monotonic()
            else:
                self._stop.wait(0.05)
        while self.queue:
            self._flush_one()

    def _flush_one(self) -> None:
        batch = [self.queue.popleft() for _ in range(min(self.batch_size, len(self.queue)))]
        by_model: dict[str, list[dict]] = {}
        for rec in batch:
            by_model.setdefault(rec["model"], []).append(rec)
        for model, recs in by_model.items():
            name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"
            prefix = f"{model}/{time.strftime('%Y-%m-%d', time.gmtime())}/{name}"
            try:
                npz, jsonl = encode_batch(recs)
                self.sink.put(f"{prefix}.npz", npz)
                self.sink.put(f"{prefix}.jsonl", jsonl)
            except Exception as exc:  # noqa: BLE001 - a sink failure drops the batch, never the server
                self.errors += 1
                self.dropped[model] += len(recs)
                if self.last_error != str(exc):
                    log.warning("capture to %s failed, %d record(s) dropped: %s", self.sink.describe(), len(recs), exc)
                self.last_error = str(exc)
            else:
                self.written[model] += len(recs)

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
