"""The fetch step against real HTTP and HTTPS servers on two loopback hosts and a real directory
(the PVC case).

Runs `python -m modelship.fetch` as the init container would, and checks exit codes and
termination messages: the contract the operator's diagnosis reads. The servers misbehave on
purpose (redirects across hosts and schemes, bodies cut short, slow drips, lying lengths,
resets); every such case also checks that no secret reaches the output or the termination log.
"""

from __future__ import annotations

import datetime
import hashlib
import http.server
import os
import pathlib
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Iterator

import pytest

from modelship import modeluri
from modelship.fetch import __main__ as fetch_main
from modelship.fetch.outcomes import FetchError, FetchOutcome
from modelship.fetch.sources import _Redirects, redirect_verdict, s3_request, sigv4_authorization

PAYLOAD = b"onnx-bytes" * 1000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()

# Secrets a fetch is given; none may ever be printed, logged or written to the termination log.
TOKEN = "Bearer tok-7f3a9c-secret"
PASSWORD = "pw-hunter2-secret"
SIGNATURE = "sig-0b5e7d-secret"
AWS = {"AWS_ACCESS_KEY_ID": "AKIDTESTKEY", "AWS_SECRET_ACCESS_KEY": "aws-secret-9d8c7b",
       "AWS_SESSION_TOKEN": "aws-session-token-secret"}
SECRETS = (TOKEN, TOKEN.split()[1], PASSWORD, SIGNATURE, AWS["AWS_SECRET_ACCESS_KEY"], AWS["AWS_SESSION_TOKEN"])


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /model.onnx, and each way a store can misbehave at its own path.
    Every request is recorded (server host, path, headers) for the tests to read."""

    protocol_version = "HTTP/1.1"  # chunked bodies need it
    requests: list[tuple[str, str, dict[str, str]]] = []
    redirects: dict[str, str] = {}  # path -> Location
    failures_left: dict[str, int] = {}  # path -> how many more times /flaky/... cuts its body

    def do_GET(self) -> None:  # noqa: N802
        host = self.server.server_address[0]
        _Handler.requests.append((host, self.path, {k.lower(): v for k, v in self.headers.items()}))
        path = self.path.partition("?")[0]
        auth = self.headers.get("Authorization")
        if path in self.redirects:
            self._head(302, {"Location": self.redirects[path], "Content-Length": "0"})
        elif path == "/model.onnx":
            if auth not in (None, "Bearer good", TOKEN):
                self._head(403, {"Content-Length": "0"})
                return
            self._body(PAYLOAD)
        elif path == "/basic.onnx":
            import base64

            if auth != "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode():
                self._head(401, {"Content-Length": "0"})
                return
            self._body(PAYLOAD)
        elif path == "/private.onnx":
            self._head(401, {"Content-Length": "0"})
        elif path == "/truncated.onnx":  # Content-Length promises more than comes
            self._head(200, {"Content-Length": str(len(PAYLOAD))})
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.close_connection = True
        elif path == "/chunked-cut.onnx":  # a chunked body without its last chunk
            self._head(200, {"Transfer-Encoding": "chunked"})
            self.wfile.write(b"%x\r\n%s\r\n" % (1000, PAYLOAD[:1000]))
            self.close_connection = True
        elif path == "/short-length.onnx":  # Content-Length says less than the file: what it says arrives
            self._head(200, {"Content-Length": str(len(PAYLOAD) - 10)})
            self.wfile.write(PAYLOAD)
            self.close_connection = True
        elif path == "/huge.onnx":  # announces a terabyte
            self._head(200, {"Content-Length": str(10**12)})
            self.close_connection = True
        elif path == "/endless.onnx":  # no length, more bytes than any cap the tests set
            self._head(200, {"Connection": "close"})
            self.close_connection = True
            for _ in range(64):
                self.wfile.write(b"x" * 65536)
        elif path == "/reset.onnx":  # half the body, then a TCP reset
            self._head(200, {"Content-Length": str(len(PAYLOAD))})
            self.wfile.write(PAYLOAD[:4000])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
        elif path == "/drip.onnx":  # one byte at a time, slower than any deadline the tests set
            self._head(200, {"Content-Length": str(len(PAYLOAD))})
            self.close_connection = True
            for byte in PAYLOAD[:600]:  # 60 s at most, then the handler ends on its own
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.1)
        elif path.startswith("/busy/"):  # 503 with Retry-After: 7 the first time
            if _Handler.failures_left.get(path, 0) > 0:
                _Handler.failures_left[path] -= 1
                self._head(503, {"Retry-After": "7", "Content-Length": "0"})
            else:
                self._body(PAYLOAD)
        elif path.startswith("/flaky/"):
            left = _Handler.failures_left.get(path, 0)
            if left > 0:
                _Handler.failures_left[path] = left - 1
                self._head(200, {"Content-Length": str(len(PAYLOAD))})
                self.wfile.write(PAYLOAD[:100])
                self.close_connection = True
            else:
                self._body(PAYLOAD)
        else:
            self._head(404, {"Content-Length": "0"})

    def _head(self, code: int, headers: dict[str, str]) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _body(self, body: bytes) -> None:
        self._head(200, {"Content-Length": str(len(body))})
        self.wfile.write(body)

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the fetch gave up on a drip: expected

    def log_message(self, *args: object) -> None:
        pass


class _Servers:
    """Four servers: http and https on 127.0.0.1 and 127.0.0.2 (two hosts, one machine)."""

    def __init__(self, cert: pathlib.Path | None, key: pathlib.Path | None) -> None:
        self._httpds: list[http.server.ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.url: dict[tuple[str, str], str] = {}
        for scheme in ("http", "https") if cert else ("http",):
            for host in ("127.0.0.1", "127.0.0.2"):
                httpd = http.server.ThreadingHTTPServer((host, 0), _Handler)
                httpd.daemon_threads = True
                if scheme == "https":
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    context.load_cert_chain(cert, key)
                    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
                thread = threading.Thread(target=httpd.serve_forever, daemon=True)
                thread.start()
                self._httpds.append(httpd)
                self._threads.append(thread)
                self.url[scheme, host] = f"{scheme}://{host}:{httpd.server_address[1]}"

    def close(self) -> None:
        for httpd in self._httpds:
            httpd.shutdown()
            httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, pathlib.Path] | None:
    """A self-signed certificate for both loopback hosts, made with the openssl command."""
    if shutil.which("openssl") is None:
        return None
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=modelship-fetch-test",
                    "-addext", "subjectAltName=IP:127.0.0.1,IP:127.0.0.2"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def servers(tls: tuple[pathlib.Path, pathlib.Path] | None) -> Iterator[_Servers]:
    running = _Servers(*(tls or (None, None)))
    try:
        yield running
    finally:
        running.close()


@pytest.fixture()
def server(servers: _Servers) -> str:
    _Handler.requests.clear()
    _Handler.redirects.clear()
    return servers.url["http", "127.0.0.1"]


@pytest.fixture()
def https(servers: _Servers, tls: tuple[pathlib.Path, pathlib.Path] | None) -> dict[str, str]:
    if tls is None:
        pytest.skip("no openssl command to make a test certificate")
    _Handler.requests.clear()
    _Handler.redirects.clear()
    return {"SSL_CERT_FILE": str(tls[0])}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fetch(tmp_path: pathlib.Path, uri: str, sha: str = PAYLOAD_SHA, env: dict[str, str] | None = None,
           extra: list[str] | None = None) -> tuple[int, str, pathlib.Path]:
    """Run the step; return (exit code, termination message, dest), after checking that no
    secret and no traceback is in anything it printed or wrote, and no .partial is left."""
    dest = tmp_path / "repo" / "m" / "1" / "model.onnx"
    log = tmp_path / "termination-log"
    proc = subprocess.run(
        [sys.executable, "-m", "modelship.fetch", f"--uri={uri}", f"--sha256={sha}", f"--dest={dest}",
         f"--pvc-mount={tmp_path / 'pvc'}", f"--termination-log={log}", *(extra or [])],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120,
    )
    message = log.read_text().strip() if log.exists() else ""
    for text in (proc.stdout, proc.stderr, message):
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked: {text}"
        assert "Traceback" not in text, text
    assert not dest.with_name("model.onnx.partial").exists()
    return proc.returncode, message, dest


def _seen(host: str) -> list[tuple[str, dict[str, str]]]:
    return [(path, headers) for h, path, headers in _Handler.requests if h == host]


def test_fetches_verifies_and_copies_the_config(server: str, tmp_path: pathlib.Path) -> None:
    config = tmp_path / "config.pbtxt"
    config.write_text('name: "m"\n')
    code, message, dest = _fetch(tmp_path, f"{server}/model.onnx",
                                 extra=[f"--copy={config}:{tmp_path / 'repo' / 'm' / 'config.pbtxt'}"])
    assert code == 0, message
    assert dest.read_bytes() == PAYLOAD
    assert (tmp_path / "repo" / "m" / "config.pbtxt").read_text() == 'name: "m"\n'
    assert message.startswith("Fetched: ")


def test_checksum_mismatch_leaves_no_file(server: str, tmp_path: pathlib.Path) -> None:
    code, message, dest = _fetch(tmp_path, f"{server}/model.onnx", sha="0" * 64)
    assert code == FetchOutcome.CHECKSUM_MISMATCH.exit_code
    assert message.startswith("ModelChecksumMismatch: ") and PAYLOAD_SHA in message and "0" * 64 in message
    assert not dest.exists()


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
    code, message, _ = _fetch(tmp_path, f"{server}/model.onnx", env={"AUTHORIZATION": TOKEN})
    assert code == 0, message
    assert _seen("127.0.0.1")[-1][1]["authorization"] == TOKEN


def test_userinfo_is_sent_as_basic_auth_and_never_shown(server: str, tmp_path: pathlib.Path) -> None:
    host = server.removeprefix("http://")
    code, message, _ = _fetch(tmp_path, f"http://user:{PASSWORD}@{host}/basic.onnx")
    assert code == 0, message
    assert f"http://REDACTED@{host}/basic.onnx" in message
    code, message, _ = _fetch(tmp_path, f"http://user:{PASSWORD}@{host}/basic.onnx", sha="0" * 64)
    assert code == FetchOutcome.CHECKSUM_MISMATCH.exit_code and "REDACTED@" in message


# Redirects -------------------------------------------------------------------------------------

def test_a_redirect_to_another_host_drops_the_credentials(servers: _Servers, server: str,
                                                          tmp_path: pathlib.Path) -> None:
    other = servers.url["http", "127.0.0.2"]
    _Handler.redirects["/hop.onnx"] = f"{other}/model.onnx"
    code, message, dest = _fetch(tmp_path, f"{server}/hop.onnx", env={"AUTHORIZATION": TOKEN})
    assert code == 0, message
    assert dest.read_bytes() == PAYLOAD
    assert _seen("127.0.0.1")[0][1]["authorization"] == TOKEN
    [(path, headers)] = _seen("127.0.0.2")
    assert path == "/model.onnx" and "authorization" not in headers
    assert not [name for name in headers if name.startswith("x-amz-")]


def test_a_redirect_on_the_same_host_keeps_the_credentials(server: str, tmp_path: pathlib.Path) -> None:
    _Handler.redirects["/moved.onnx"] = "/model.onnx"  # relative, as servers often send it
    code, message, _ = _fetch(tmp_path, f"{server}/moved.onnx", env={"AUTHORIZATION": TOKEN})
    assert code == 0, message
    assert [h.get("authorization") for _, h in _seen("127.0.0.1")] == [TOKEN, TOKEN]


@pytest.mark.parametrize("target", ["ftp://127.0.0.2/model.onnx", "file:///etc/passwd"])
def test_a_redirect_to_another_scheme_is_refused(server: str, tmp_path: pathlib.Path, target: str) -> None:
    _Handler.redirects["/elsewhere.onnx"] = target
    code, message, _ = _fetch(tmp_path, f"{server}/elsewhere.onnx", env={"AUTHORIZATION": TOKEN})
    assert code == FetchOutcome.REDIRECT_REFUSED.exit_code, message
    assert message.startswith("ModelRedirectRefused: ")
    assert len(_seen("127.0.0.1")) == 1  # not retried: no retry can fix it


def test_https_is_never_downgraded(servers: _Servers, https: dict[str, str], tmp_path: pathlib.Path) -> None:
    _Handler.redirects["/down.onnx"] = f"{servers.url['http', '127.0.0.1']}/model.onnx"
    code, message, _ = _fetch(tmp_path, f"{servers.url['https', '127.0.0.1']}/down.onnx",
                              env={**https, "AUTHORIZATION": TOKEN})
    assert code == FetchOutcome.REDIRECT_REFUSED.exit_code, message
    assert "https is never downgraded" in message
    assert [path for path, _ in _seen("127.0.0.1")] == ["/down.onnx"]  # the http server saw nothing


def test_https_to_another_host_drops_the_credentials(servers: _Servers, https: dict[str, str],
                                                     tmp_path: pathlib.Path) -> None:
    _Handler.redirects["/hop.onnx"] = f"{servers.url['https', '127.0.0.2']}/model.onnx"
    presigned = f"{servers.url['https', '127.0.0.1']}/hop.onnx?X-Amz-Credential=AKID&X-Amz-Signature={SIGNATURE}"
    code, message, _ = _fetch(tmp_path, presigned, env={**https, "AUTHORIZATION": TOKEN})
    assert code == 0, message
    assert message.startswith(f"Fetched: {servers.url['https', '127.0.0.1']}/hop.onnx?REDACTED ")
    [(_, headers)] = _seen("127.0.0.2")
    assert "authorization" not in headers


def test_a_signed_s3_request_is_not_sent_to_another_host(servers: _Servers, server: str,
                                                         tmp_path: pathlib.Path) -> None:
    _Handler.redirects["/bucket/model.onnx"] = f"{servers.url['http', '127.0.0.2']}/bucket/model.onnx"
    code, message, _ = _fetch(tmp_path, "s3://bucket/model.onnx", env={**AWS, "AWS_ENDPOINT_URL": server})
    assert code == FetchOutcome.REDIRECT_REFUSED.exit_code, message
    assert "AWS_REGION" in message
    assert "x-amz-security-token" in _seen("127.0.0.1")[0][1]
    assert _seen("127.0.0.2") == []


def test_the_redirect_handler_strips_authorization_and_every_x_amz_header() -> None:
    """urllib's own Request objects through the handler (no server: the S3 path never
    redirects a signed request across hosts, so only this shows the x-amz-* rule)."""
    uri = modeluri.parse("https://a.example/m.onnx")
    request = urllib.request.Request(uri.raw, headers={"Authorization": "AWS4-HMAC-SHA256 x", "X-Amz-Date": "d",
                                                      "x-amz-security-token": "t", "User-Agent": "u"})
    moved = _Redirects(uri, signed=False).redirect_request(request, None, 302, "Found", {},
                                                          "https://b.example/m.onnx")
    assert moved is not None and {k.lower() for k in moved.headers} == {"user-agent"}
    stayed = _Redirects(uri, signed=False).redirect_request(request, None, 302, "Found", {},
                                                           "https://a.example:443/other.onnx")
    assert stayed is not None and len(stayed.headers) == 4


def test_redirect_verdicts() -> None:
    assert redirect_verdict("https://a/x", "https://b/y", signed=False) == (None, True)
    assert redirect_verdict("http://a/x", "http://a:80/y", signed=False) == (None, False)
    assert redirect_verdict("http://a/x", "https://a/x", signed=False)[0] == "a redirect must stay on http://"
    assert redirect_verdict("https://a/x", "http://a/x", signed=False)[0] == "https is never downgraded to http"
    assert redirect_verdict("https://a/x", "https://b/x", signed=True)[0] is not None
    assert redirect_verdict("https://a/x", "https://a/y", signed=True) == (None, False)


# Broken transfers ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/truncated.onnx", "/chunked-cut.onnx", "/reset.onnx"])
def test_a_cut_transfer_is_unreachable_and_retried(server: str, tmp_path: pathlib.Path, path: str) -> None:
    code, message, dest = _fetch(tmp_path, f"{server}{path}", env={"AUTHORIZATION": TOKEN},
                                 extra=["--deadline-seconds=2.5"])
    assert code == FetchOutcome.UNREACHABLE.exit_code, message
    assert message.startswith("ModelUnreachable: ") and "gave up after" in message
    assert len(_seen("127.0.0.1")) >= 2  # retried within the deadline
    assert not dest.exists()


def test_a_transfer_cut_twice_then_whole_succeeds(server: str, tmp_path: pathlib.Path) -> None:
    _Handler.failures_left["/flaky/a.onnx"] = 2
    dest = tmp_path / "m.onnx"
    lines: list[str] = []
    size = fetch_main.fetch(uri=f"{server}/flaky/a.onnx", sha256=PAYLOAD_SHA, dest=dest, env={},
                            sleep=lambda _s: None, log=lines.append)
    assert size == len(PAYLOAD) and dest.read_bytes() == PAYLOAD
    assert len(lines) == 2 and all("the body ended after 100 of 10000 bytes" in line for line in lines)


def test_a_503_retry_after_is_honoured(server: str, tmp_path: pathlib.Path) -> None:
    _Handler.failures_left["/busy/a.onnx"] = 1
    waits: list[float] = []
    size = fetch_main.fetch(uri=f"{server}/busy/a.onnx", sha256=PAYLOAD_SHA, dest=tmp_path / "m.onnx", env={},
                            sleep=waits.append, log=lambda _line: None)
    assert size == len(PAYLOAD) and waits == [7.0]


def test_a_slow_drip_ends_at_the_deadline(server: str, tmp_path: pathlib.Path) -> None:
    code, message, _ = _fetch(tmp_path, f"{server}/drip.onnx", extra=["--deadline-seconds=1.5"])
    assert code == FetchOutcome.UNREACHABLE.exit_code, message
    assert "deadline passed after" in message


def test_sigterm_mid_transfer_leaves_no_partial_file(server: str, tmp_path: pathlib.Path) -> None:
    """The pod is deleted while the step downloads: it exits on SIGTERM and removes its temporary file."""
    dest = tmp_path / "model.onnx"
    partial = dest.with_name("model.onnx.partial")
    process = subprocess.Popen([sys.executable, "-m", "modelship.fetch", f"--uri={server}/drip.onnx",
                                f"--sha256={PAYLOAD_SHA}", f"--dest={dest}", f"--termination-log={tmp_path / 'log'}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(300):  # until the transfer has begun (the body drips for a minute)
            if partial.exists():
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.1)
        assert partial.exists()
        time.sleep(0.3)  # a few bytes into the body, not a timing assertion
        process.terminate()
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + 15, err
    assert not partial.exists() and not dest.exists()
    assert "Traceback" not in out + err


def test_a_length_that_says_less_is_a_checksum_mismatch(server: str, tmp_path: pathlib.Path) -> None:
    code, message, _ = _fetch(tmp_path, f"{server}/short-length.onnx")
    assert code == FetchOutcome.CHECKSUM_MISMATCH.exit_code, message
    assert f"({len(PAYLOAD) - 10} bytes read)" in message


def test_an_announced_size_over_the_cap_is_refused_before_the_body(server: str, tmp_path: pathlib.Path) -> None:
    code, message, _ = _fetch(tmp_path, f"{server}/huge.onnx")
    assert code == FetchOutcome.TOO_LARGE.exit_code, message
    assert f"1000000000000 bytes announced, over the cap of {2 << 30} bytes" in message


def test_a_body_without_length_stops_at_the_cap(server: str, tmp_path: pathlib.Path) -> None:
    code, message, dest = _fetch(tmp_path, f"{server}/endless.onnx", extra=["--max-bytes=1000000"])
    assert code == FetchOutcome.TOO_LARGE.exit_code, message
    assert "more than the cap of 1000000 bytes arrived" in message
    assert not dest.exists()


def test_unreachable_host_is_retried_until_the_deadline(tmp_path: pathlib.Path) -> None:
    clock = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock[0] += seconds

    with pytest.raises(FetchError) as caught:
        fetch_main.fetch(uri=f"http://127.0.0.1:{_closed_port()}/m.onnx", sha256=PAYLOAD_SHA,
                         dest=tmp_path / "m.onnx", env={}, deadline_seconds=120, sleep=sleep,
                         clock=lambda: clock[0], log=lambda _line: None)
    assert caught.value.outcome is FetchOutcome.UNREACHABLE
    assert "Connection refused" in str(caught.value) and "120 s deadline" in str(caught.value)
    assert len(waits) >= 5 and all(b >= a for a, b in zip(waits[:4], waits[1:5], strict=True))  # backs off
    assert max(waits) <= fetch_main.BACKOFF_MAX_SECONDS and sum(waits) < 120


def test_retry_delays_back_off_and_stop_at_the_deadline() -> None:
    assert [fetch_main.retry_delay(n, 1000) for n in (1, 2, 3, 6, 7, 1000)] == [1, 2, 4, 30, 30, 30]
    assert fetch_main.retry_delay(3, 3.5) is None
    assert fetch_main.retry_delay(1, 1000, at_least=12) == 12 and fetch_main.retry_delay(1, 10, at_least=12) is None


# URIs and the PVC case ---------------------------------------------------------------------------

def test_invalid_uri(tmp_path: pathlib.Path) -> None:
    code, message, _ = _fetch(tmp_path, "ftp://h/m.onnx")
    assert code == FetchOutcome.INVALID_URI.exit_code
    assert "must start with https://" in message


def test_an_invalid_uri_is_named_redacted(tmp_path: pathlib.Path) -> None:
    code, message, _ = _fetch(tmp_path, f"ftp://user:{PASSWORD}@h/m.onnx?X-Amz-Signature={SIGNATURE}")
    assert code == FetchOutcome.INVALID_URI.exit_code
    assert "'ftp://REDACTED@h/m.onnx?REDACTED'" in message


def test_redact() -> None:
    assert modeluri.redact("https://u:p@h:8443/a/m.onnx?X-Amz-Signature=s#f") == "https://REDACTED@h:8443/a/m.onnx?REDACTED"
    assert modeluri.redact("s3://bucket/key.onnx") == "s3://bucket/key.onnx"
    assert modeluri.redact("not a uri") == "not a uri"
    assert modeluri.redact_text("HTTP 302 to 'http://a:b@c/d?e=f' refused") == "HTTP 302 to 'http://REDACTED@c/d?REDACTED' refused"


def test_unreachable_host_message_is_redacted(tmp_path: pathlib.Path) -> None:
    code, message, _ = _fetch(tmp_path, f"http://user:{PASSWORD}@127.0.0.1:{_closed_port()}/m.onnx?sig={SIGNATURE}",
                              extra=["--deadline-seconds=0.5"])
    assert code == FetchOutcome.UNREACHABLE.exit_code
    assert "http://REDACTED@127.0.0.1:" in message and "/m.onnx?REDACTED" in message


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
    code, message, _ = _fetch(tmp_path, "pvc://claim/models/m.onnx", extra=["--max-bytes=100"])
    assert code == FetchOutcome.TOO_LARGE.exit_code and "over the cap of 100 bytes" in message


def test_a_local_fault_is_one_line_not_a_traceback(server: str, tmp_path: pathlib.Path) -> None:
    code, message, _ = _fetch(tmp_path, f"{server}/model.onnx",
                              extra=[f"--copy={tmp_path / 'absent.pbtxt'}:{tmp_path / 'out.pbtxt'}"])
    assert code == 1
    assert message.startswith("FetchFailed: FileNotFoundError: ")


# What the operator makes of it -----------------------------------------------------------------

def _failed_init(name: str, code: int, message: str) -> dict[str, object]:
    return {"metadata": {"name": "p"}, "status": {"initContainerStatuses": [
        {"name": name, "state": {"terminated": {"exitCode": code, "message": message}}}]}}


@pytest.mark.parametrize(("container", "outcome", "reason"), [
    ("fetch-model", FetchOutcome.TOO_LARGE, "ModelTooLarge"),
    ("fetch-model", FetchOutcome.REDIRECT_REFUSED, "ModelRedirectRefused"),
    ("fetch-dataset", FetchOutcome.TOO_LARGE, "DatasetTooLarge"),
    ("fetch-dataset", FetchOutcome.REDIRECT_REFUSED, "DatasetRedirectRefused"),
])
def test_status_names_the_new_reasons_and_quotes_uris_redacted(container: str, outcome: FetchOutcome,
                                                               reason: str) -> None:
    """Even a termination message that names a URI in clear (an older image) reaches status
    redacted: the diagnosis redacts what it quotes."""
    from modelship.status.diagnosis import diagnose

    line = f"{outcome.reason}: http://user:{PASSWORD}@h/m.onnx?X-Amz-Signature={SIGNATURE}: it went wrong"
    problem = diagnose([_failed_init(container, outcome.exit_code, line)])
    assert problem is not None and problem.reason == reason
    assert "http://REDACTED@h/m.onnx?REDACTED: it went wrong" in problem.message
    assert PASSWORD not in problem.message and SIGNATURE not in problem.message


def test_the_optimize_job_fails_at_once_on_every_permanent_fetch_failure() -> None:
    from modelship.render.optimize_job import PERMANENT_FETCH_FAILURES

    assert PERMANENT_FETCH_FAILURES == [10, 12, 13, 14, 15, 16]
    assert FetchOutcome.UNREACHABLE.exit_code not in PERMANENT_FETCH_FAILURES  # the Job retries those


# S3 ----------------------------------------------------------------------------------------------

def test_s3_requests_are_signed_with_sigv4() -> None:
    """AWS's published SigV4 example (GET /test.txt of examplebucket) gives its published signature."""
    header = sigv4_authorization(
        method="GET", host="examplebucket.s3.amazonaws.com", path="/test.txt",
        headers={"Range": "bytes=0-9",
                 "x-amz-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        region="us-east-1", access_key="AKIAIOSFODNN7EXAMPLE", secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        now=datetime.datetime(2013, 5, 24, tzinfo=datetime.timezone.utc),
    )
    assert header.endswith("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def test_s3_custom_endpoint_uses_path_style(tmp_path: pathlib.Path) -> None:
    url, headers = s3_request(modeluri.parse("s3://models/a+b/m.onnx"),
                              env={"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ACCESS_KEY_ID": "k",
                                   "AWS_SECRET_ACCESS_KEY": "s"},
                              now=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc))
    assert url == "http://minio:9000/models/a%2Bb/m.onnx"
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=k/20240101/us-east-1/s3/aws4_request")


@pytest.fixture(scope="module")
def s3_store() -> Iterator[str]:
    """gofakes3, an S3-compatible server built from its Go module like the control plane (so
    marked `cluster`: it needs the Go-built binaries), on loopback, in memory. It does not
    check signatures: the SigV4 signer is checked against AWS's published vector above."""
    from modelship.devcluster.errors import DevClusterError
    from modelship.devcluster.toolchain import ensure_binaries

    try:
        binary = ensure_binaries(lambda _line: None, only=("gofakes3",))["gofakes3"]
    except DevClusterError as error:
        pytest.skip(f"gofakes3 could not be built: {error}")
    port = _closed_port()
    process = subprocess.Popen([str(binary), "-backend", "memory", "-host", f"127.0.0.1:{port}",
                                "-initialbucket", "models", "-quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, "gofakes3 exited"
                time.sleep(0.1)
        put = urllib.request.Request(f"{url}/models/dir/a%2Bb~c=1.onnx", data=PAYLOAD, method="PUT")
        urllib.request.urlopen(put, timeout=30).close()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.cluster
def test_s3_object_from_an_s3_compatible_store(s3_store: str, tmp_path: pathlib.Path) -> None:
    env = {**AWS, "AWS_ENDPOINT_URL": s3_store, "AWS_REGION": "eu-west-1"}
    code, message, dest = _fetch(tmp_path, "s3://models/dir/a+b~c=1.onnx", env=env)
    assert code == 0, message
    assert dest.read_bytes() == PAYLOAD
    assert message.startswith("Fetched: s3://models/dir/a+b~c=1.onnx (10000 bytes")


@pytest.mark.cluster
@pytest.mark.parametrize("uri", ["s3://models/dir/missing.onnx", "s3://no-such-bucket/m.onnx"])
def test_s3_missing_object_or_bucket_is_not_found(s3_store: str, tmp_path: pathlib.Path, uri: str) -> None:
    code, message, _ = _fetch(tmp_path, uri, env={**AWS, "AWS_ENDPOINT_URL": s3_store})
    assert code == FetchOutcome.NOT_FOUND.exit_code, message
    assert message.startswith(f"ModelNotFound: {uri}: HTTP 404")
