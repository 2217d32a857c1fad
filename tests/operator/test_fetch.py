"""The fetch step against a real HTTP server and a real directory (the PVC case).

Runs `python -m modelship.fetch` as the init container would, and checks exit codes and
termination messages: the contract the operator's diagnosis reads.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import pathlib
import socket
import subprocess
import sys
import threading
from typing import Iterator

import pytest

from modelship.fetch.outcomes import FetchOutcome

PAYLOAD = b"onnx-bytes" * 1000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/model.onnx":
            if self.headers.get("Authorization") not in (None, "Bearer good"):
                self.send_error(403)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/private.onnx":
            self.send_error(401)
        else:
            self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fetch(tmp_path: pathlib.Path, uri: str, sha: str = PAYLOAD_SHA, env: dict[str, str] | None = None,
           extra: list[str] | None = None) -> tuple[int, str, pathlib.Path]:
    dest = tmp_path / "repo" / "m" / "1" / "model.onnx"
    log = tmp_path / "termination-log"
    proc = subprocess.run(
        [sys.executable, "-m", "modelship.fetch", f"--uri={uri}", f"--sha256={sha}", f"--dest={dest}",
         f"--pvc-mount={tmp_path / 'pvc'}", f"--termination-log={log}", *(extra or [])],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60,
    )
    return proc.returncode, log.read_text().strip() if log.exists() else "", dest


def test_fetches_verifies_and_copies_the_config(server: str, tmp_path: pathlib.Path) -> None:
    config = tmp_path / "config.pbtxt"
    config.write_text('name: "m"\n')
    code, message, dest = _fetch(tmp_path, f"{server}/model.onnx",
                                 extra=[f"--copy={config}:{tmp_path / 'repo' / 'm' / 'config.pbtxt'}"])
    assert code == 0, message
    assert dest.read_bytes() == PAYLOAD
    assert (tmp_path / "repo" / "m" / "config.pbtxt").read_text() == 'name: "m"\n'
    assert message.startswith("Fetched: ")
    assert not dest.with_name("model.onnx.partial").exists()


def test_checksum_mismatch_leaves_no_file(server: str, tmp_path: pathlib.Path) -> None:
    code, message, dest = _fetch(tmp_path, f"{server}/model.onnx", sha="0" * 64)
    assert code == FetchOutcome.CHECKSUM_MISMATCH.exit_code
    assert message.startswith("ModelChecksumMismatch: ") and PAYLOAD_SHA in message and "0" * 64 in message
    assert not dest.exists() and not dest.with_name("model.onnx.partial").exists()


@pytest.mark.parametrize(
    ("path", "env", "outcome"),
    [
        ("/missing.onnx", {}, FetchOutcome.NOT_FOUND),
        ("/private.onnx", {}, FetchOutcome.ACCESS_DENIED),
        ("/model.onnx", {"AUTHORIZATION": "Bearer wrong"}, FetchOutcome.ACCESS_DENIED),
    ],
)
def test_http_failures_have_their_own_exit_codes(server: str, tmp_path: pathlib.Path, path: str,
                                                 env: dict[str, str], outcome: FetchOutcome) -> None:
    code, message, _ = _fetch(tmp_path, f"{server}{path}", env=env)
    assert code == outcome.exit_code
    assert message.startswith(f"{outcome.reason}: ")


def test_credentials_from_the_secret_are_sent(server: str, tmp_path: pathlib.Path) -> None:
    code, message, _ = _fetch(tmp_path, f"{server}/model.onnx", env={"AUTHORIZATION": "Bearer good"})
    assert code == 0, message


def test_unreachable_host(tmp_path: pathlib.Path) -> None:
    from modelship.fetch import __main__ as fetch_main

    # in-process, to skip the retry sleeps
    dest = tmp_path / "m.onnx"
    with pytest.raises(fetch_main.FetchError) as caught:
        fetch_main.fetch(uri=f"http://127.0.0.1:{_closed_port()}/m.onnx", sha256=PAYLOAD_SHA, dest=dest, env={},
                         sleep=lambda _s: None)
    assert caught.value.outcome is FetchOutcome.UNREACHABLE
    assert "Connection refused" in str(caught.value)


def test_invalid_uri(tmp_path: pathlib.Path) -> None:
    code, message, _ = _fetch(tmp_path, "ftp://h/m.onnx")
    assert code == FetchOutcome.INVALID_URI.exit_code
    assert "must start with https://" in message


def test_pvc_path_and_a_restart_keeps_the_verified_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "pvc" / "models").mkdir(parents=True)
    (tmp_path / "pvc" / "models" / "m.onnx").write_bytes(PAYLOAD)
    code, message, dest = _fetch(tmp_path, "pvc://claim/models/m.onnx")
    assert code == 0, message
    first_mtime = dest.stat().st_mtime_ns
    code, _, _ = _fetch(tmp_path, "pvc://claim/models/m.onnx")
    assert code == 0 and dest.stat().st_mtime_ns == first_mtime
    dest.unlink()
    code, message, _ = _fetch(tmp_path, "pvc://claim/models/other.onnx")
    assert code == FetchOutcome.NOT_FOUND.exit_code


def test_s3_requests_are_signed_with_sigv4() -> None:
    """AWS's published SigV4 example (GET /test.txt of examplebucket) gives its published signature."""
    import datetime

    from modelship.fetch.sources import sigv4_authorization

    header = sigv4_authorization(
        method="GET", host="examplebucket.s3.amazonaws.com", path="/test.txt",
        headers={"Range": "bytes=0-9",
                 "x-amz-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        region="us-east-1", access_key="AKIAIOSFODNN7EXAMPLE", secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        now=datetime.datetime(2013, 5, 24, tzinfo=datetime.timezone.utc),
    )
    assert header.endswith("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def test_s3_custom_endpoint_uses_path_style(tmp_path: pathlib.Path) -> None:
    import datetime

    from modelship import modeluri
    from modelship.fetch.sources import s3_request

    url, headers = s3_request(modeluri.parse("s3://models/a+b/m.onnx"),
                              env={"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ACCESS_KEY_ID": "k",
                                   "AWS_SECRET_ACCESS_KEY": "s"},
                              now=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc))
    assert url == "http://minio:9000/models/a%2Bb/m.onnx"
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=k/20240101/us-east-1/s3/aws4_request")
