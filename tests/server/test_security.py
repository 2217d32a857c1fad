"""Authentication (API keys) and TLS / mTLS against the real server process on loopback,
called with real tritonclient over HTTP and gRPC (docs/security.md).

TokenReview against the real kube-apiserver is in test_security_tokens.py.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import corpus
from modelship_server import samples

from .certs import Authority, other_key_pem, serial_of

KEY_A, KEY_B, KEY_NEW = "key-a-7f3c9d2e", "key-b-1a2b3c4d", "key-rotated-9e8d7c6b"
MODEL = "magika"  # a public model from a pinned PyPI wheel (tests/corpus)


def wait_for(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not seen within {timeout:g} s")


def secret_folder(root: Path, data: dict[str, bytes]) -> Path:
    """A folder laid out as kubelet mounts a Secret: entries are links through `..data`."""
    root.mkdir(parents=True, exist_ok=True)
    update_secret(root, data)
    for name in data:
        os.symlink(f"..data/{name}", root / name)
    return root


def update_secret(root: Path, data: dict[str, bytes]) -> None:
    """Kubelet's atomic update: write a new timestamped folder, swap the `..data` link to it."""
    stamp = root / f"..{time.time_ns()}"
    stamp.mkdir()
    for name, value in data.items():
        (stamp / name).write_bytes(value)
    link = root / "..data_tmp"
    os.symlink(stamp.name, link)
    os.replace(link, root / "..data")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("security-repo")
    (root / MODEL / "1").mkdir(parents=True)
    shutil.copyfile(corpus.MODELS[MODEL].path(), root / MODEL / "1" / "model.onnx")
    samples.write_model(root, "mlp", samples.mlp())
    return root


def feed():
    return corpus.MODELS[MODEL].sample(1, seed=3)


def http_infer(client, headers=None):
    inputs = []
    for name, a in feed().items():
        i = httpclient.InferInput(name, list(a.shape), "FP32" if a.dtype == np.float32 else "INT32")
        i.set_data_from_numpy(a)
        inputs.append(i)
    return client.infer(MODEL, inputs, headers=headers)


def grpc_infer(client, headers=None):
    inputs = []
    for name, a in feed().items():
        i = grpcclient.InferInput(name, list(a.shape), "FP32" if a.dtype == np.float32 else "INT32")
        i.set_data_from_numpy(a)
        inputs.append(i)
    return client.infer(MODEL, inputs, headers=headers)


def raw(port, method, path, headers=None, context=None):
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


# -- API keys ------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(repo, tmp_path_factory, module_server_factory):
    keys = secret_folder(tmp_path_factory.mktemp("keys") / "secret",
                         {"ci": KEY_A.encode() + b"\n", "batch-jobs": b"# rotated monthly\n" + KEY_B.encode()})
    server = module_server_factory(repo, "--auth-api-keys", str(keys), "--watch-interval", "0.2")
    server.keys = keys
    return server


def test_http_without_a_credential_is_401_and_health_stays_open(keyed):
    status, body, headers = raw(keyed.http_port, "POST", f"/v2/models/{MODEL}/infer")
    assert status == 401
    assert "Authorization: Bearer" in json.loads(body)["error"]
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert raw(keyed.http_port, "GET", path)[0] == 200
    assert raw(keyed.http_port, "GET", f"/v2/models/{MODEL}")[0] == 401
    # the metrics port is separate and open
    assert "modelship_auth_decisions_total" in keyed.metrics()


def test_an_unauthenticated_body_is_refused_before_it_is_sent(keyed):
    """401 as soon as the headers are in: the 40 MB body is never read nor charged to the budget."""
    with socket.create_connection(("127.0.0.1", keyed.http_port), timeout=30) as s:
        s.sendall(f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 40000000\r\n"
                  "Content-Type: application/json\r\n\r\n".encode())
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 401") and "WWW-Authenticate: Bearer" in head
    assert "modelship_inflight_request_bytes 0.0" in keyed.metrics()


@pytest.mark.parametrize("header, why", [
    (f"Bearer {KEY_A}x", "not a known API key"),
    (f"Basic {KEY_A}", "Bearer scheme"),
    ("Bearer ", "empty"),
])
def test_http_bad_credentials_are_401_with_a_clear_message(keyed, header, why):
    status, body, _ = raw(keyed.http_port, "GET", f"/v2/models/{MODEL}", {"Authorization": header})
    assert status == 401
    assert why in json.loads(body)["error"]


def test_both_keys_work_with_tritonclient_over_http_and_grpc(keyed):
    expected = None
    for key in (KEY_A, KEY_B):
        h = httpclient.InferenceServerClient(keyed.http_url)
        g = grpcclient.InferenceServerClient(keyed.grpc_url)
        try:
            out = http_infer(h, {"Authorization": f"Bearer {key}"}).as_numpy("target_label")
            gout = grpc_infer(g, {"authorization": f"Bearer {key}"}).as_numpy("target_label")
            np.testing.assert_array_equal(out, gout)
            expected = out if expected is None else expected
            np.testing.assert_array_equal(out, expected)
        finally:
            h.close()
            g.close()


def test_grpc_without_a_credential_is_unauthenticated_and_health_is_open(keyed):
    g = grpcclient.InferenceServerClient(keyed.grpc_url)
    try:
        assert g.is_server_live() and g.is_server_ready()
        with pytest.raises(InferenceServerException) as err:
            grpc_infer(g)
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
        assert "Authorization: Bearer" in err.value.message()
        with pytest.raises(InferenceServerException) as err:
            g.get_model_metadata(MODEL, headers={"authorization": "Bearer wrong"})
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
        # a streaming call is refused as well
        errors = []
        g.start_stream(callback=lambda result, error: errors.append(error))
        i = grpcclient.InferInput("bytes", [1, 2048], "INT32")
        i.set_data_from_numpy(np.zeros((1, 2048), np.int32))
        try:
            g.async_stream_infer(MODEL, [i])
        except InferenceServerException:
            pass  # the stream may already be closed by the refusal; the callback holds the status
        wait_for("the stream's refusal", lambda: errors)
        g.stop_stream()
        assert errors[0] is not None and "UNAUTHENTICATED" in str(errors[0].status())
    finally:
        g.close()


def test_keys_rotate_when_the_secret_changes_and_are_never_logged(keyed):
    def code(key):
        return raw(keyed.http_port, "GET", f"/v2/models/{MODEL}", {"Authorization": f"Bearer {key}"})[0]

    assert code(KEY_A) == 200 and code(KEY_NEW) == 401
    update_secret(keyed.keys, {"ci": KEY_NEW.encode(), "batch-jobs": KEY_B.encode()})
    wait_for("the rotated key accepted", lambda: code(KEY_NEW) == 200)
    assert code(KEY_A) == 401
    assert code(KEY_B) == 200
    assert "API keys reloaded" in keyed.log()
    # a Secret that turns empty keeps the last good keys
    update_secret(keyed.keys, {"ci": b"", "batch-jobs": b""})
    wait_for("the failed reload counted", lambda: 'modelship_auth_api_key_reloads_total{outcome="failed"} 1.0'
             in keyed.metrics())
    assert code(KEY_NEW) == 200
    log = keyed.log()
    for secret in (KEY_A, KEY_B, KEY_NEW, f"{KEY_A}x"):
        assert secret not in log
    assert "keeping the 2 key(s) loaded before" in log


# -- TLS -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca():
    return Authority()


def https_context(ca_pem_path, cert=None):
    ctx = ssl.create_default_context(cafile=str(ca_pem_path))
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


def wait_tls_ready(server, ca_path, timeout=60):
    ctx = https_context(ca_path)

    def ready():
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited:\n{server.log()}")
        try:
            return raw(server.http_port, "GET", "/v2/health/ready", context=ctx)[0] == 200
        except OSError:
            return False

    wait_for("the TLS server ready", ready, timeout)


def peer_serial(port, ca_path, alpn=None):
    ctx = https_context(ca_path)
    if alpn:
        ctx.set_alpn_protocols([alpn])  # gRPC's port: HTTP/2 over TLS
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s, \
            ctx.wrap_socket(s, server_hostname="127.0.0.1") as tls:
        return serial_of(ssl.DER_cert_to_PEM_cert(tls.getpeercert(binary_form=True)).encode())


def test_tls_with_tritonclient_reload_without_dropping_connections(repo, ca, tmp_path, start_server):
    secret = secret_folder(tmp_path / "tls", dict(zip(("tls.crt", "tls.key"), ca.issue("server-1", server=True)))
                           | {"ca.crt": ca.pem})
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.pem)
    server = start_server(repo, "--tls-dir", str(secret), "--auth-api-keys", str(secret_folder(
        tmp_path / "keys", {"k": KEY_A.encode()})), "--watch-interval", "0.2", wait=False)
    wait_tls_ready(server, ca_path)
    auth = {"Authorization": f"Bearer {KEY_A}"}

    h = httpclient.InferenceServerClient(server.http_url, ssl=True, ssl_options={"ca_certs": str(ca_path)})
    g = grpcclient.InferenceServerClient(f"localhost:{server.grpc_port}", ssl=True, root_certificates=str(ca_path))
    try:
        out = http_infer(h, auth).as_numpy("target_label")
        np.testing.assert_array_equal(out, grpc_infer(g, {"authorization": auth["Authorization"]}).as_numpy("target_label"))
        # plain HTTP on the TLS port does not get an answer in clear
        with pytest.raises((OSError, http.client.HTTPException)):
            raw(server.http_port, "GET", "/v2/health/ready")

        # an open keep-alive connection, kept across the reload
        kept = http.client.HTTPSConnection("127.0.0.1", server.http_port, timeout=30, context=https_context(ca_path))
        kept.request("GET", "/v2/health/live")
        assert kept.getresponse().read() == b""
        first = peer_serial(server.http_port, ca_path)
        assert peer_serial(server.grpc_port, ca_path, "h2") == first

        cert2, key2 = ca.issue("server-2", server=True)
        update_secret(secret, {"tls.crt": cert2, "tls.key": key2, "ca.crt": ca.pem})
        wait_for("new handshakes get the new certificate", lambda: peer_serial(server.http_port, ca_path) == serial_of(cert2))
        assert first != serial_of(cert2)
        wait_for("new gRPC handshakes too", lambda: peer_serial(server.grpc_port, ca_path, "h2") == serial_of(cert2))
        assert g.is_server_ready()  # the gRPC channel opened before the reload goes on
        kept.request("GET", f"/v2/models/{MODEL}", headers=auth)
        assert kept.getresponse().status == 200  # the old connection still works
        kept.close()
        g2 = grpcclient.InferenceServerClient(f"localhost:{server.grpc_port}", ssl=True, root_certificates=str(ca_path))
        try:
            assert g2.is_server_ready()
        finally:
            g2.close()
        np.testing.assert_array_equal(out, http_infer(h, auth).as_numpy("target_label"))

        # the Secret disappears: keep serving with the last good certificate, and say so
        for entry in list(secret.iterdir()):
            if entry.is_symlink() or entry.is_file():
                entry.unlink()
            else:
                shutil.rmtree(entry)
        wait_for("the stale gauge", lambda: "modelship_tls_stale 1.0" in server.metrics())
        assert peer_serial(server.http_port, ca_path) == serial_of(cert2)
        np.testing.assert_array_equal(out, http_infer(h, auth).as_numpy("target_label"))
        assert "still serving the last good certificate" in server.log()
        assert KEY_A not in server.log()
    finally:
        h.close()
        g.close()


def test_mtls_refuses_clients_without_a_certificate(repo, ca, tmp_path, start_server):
    secret = ca.write_secret(tmp_path / "tls")  # cert-manager's layout: ca.crt signs the clients too
    server_ca_pem = secret / "ca.crt"
    client = ca.write_client(tmp_path / "client")
    stranger = Authority("someone else").write_client(tmp_path / "stranger")
    server = start_server(repo, "--tls-dir", str(secret), "--tls-client-auth", "true", wait=False)
    wait_tls_ready(server, server_ca_pem)

    # HTTP: health stays open for kubelet's HTTPS probes; the rest needs a certificate
    status, body, _ = raw(server.http_port, "GET", f"/v2/models/{MODEL}", context=https_context(server_ca_pem))
    assert status == 401 and "client certificate is required" in json.loads(body)["error"]
    assert raw(server.http_port, "GET", f"/v2/models/{MODEL}", context=https_context(server_ca_pem, client))[0] == 200
    with pytest.raises((ssl.SSLError, OSError)):
        raw(server.http_port, "GET", f"/v2/models/{MODEL}", context=https_context(server_ca_pem, stranger))
    h = httpclient.InferenceServerClient(server.http_url, ssl=True, ssl_options={
        "ca_certs": str(server_ca_pem), "certfile": str(client[0]), "keyfile": str(client[1])})
    try:
        expected = http_infer(h).as_numpy("target_label")
    finally:
        h.close()

    # gRPC: refused at the handshake without a certificate
    g = grpcclient.InferenceServerClient(f"localhost:{server.grpc_port}", ssl=True, root_certificates=str(server_ca_pem))
    try:
        with pytest.raises(InferenceServerException) as err:
            g.is_server_live(client_timeout=10)
        assert err.value.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
    finally:
        g.close()
    g = grpcclient.InferenceServerClient(f"localhost:{server.grpc_port}", ssl=True, root_certificates=str(server_ca_pem),
                                         private_key=str(client[1]), certificate_chain=str(client[0]))
    try:
        np.testing.assert_array_equal(expected, grpc_infer(g).as_numpy("target_label"))
    finally:
        g.close()


def test_a_certificate_that_does_not_match_its_key_stops_the_start(repo, ca, tmp_path):
    secret = ca.write_secret(tmp_path / "tls")
    (secret / "tls.key").write_bytes(other_key_pem())
    term = tmp_path / "termination-log"
    proc = subprocess.run([sys.executable, "-m", "modelship_server", "--model-repository", str(repo),
                           "--tls-dir", str(secret), "--http-port", "1", "--grpc-port", "2", "--metrics-port", "3",
                           "--termination-log", str(term)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    why = f"the certificate {secret / 'tls.crt'} does not match the private key in {secret / 'tls.key'}"
    assert why in proc.stderr
    assert "Traceback" not in proc.stderr
    # the line the operator reads into the ModelService's status (status/diagnosis.py)
    assert term.read_text() == f"TLSCertificateInvalid: {why}\n"


def test_a_missing_secret_names_the_file(repo, tmp_path):
    """An optional Secret volume that is missing mounts as an empty folder."""
    empty = tmp_path / "tls"
    empty.mkdir()
    term = tmp_path / "termination-log"
    proc = subprocess.run([sys.executable, "-m", "modelship_server", "--model-repository", str(repo),
                           "--tls-dir", str(empty), "--auth-api-keys", str(empty), "--termination-log", str(term)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert term.read_text().startswith(f"AuthConfigInvalid: --auth-api-keys {empty}: no API keys found")
    proc = subprocess.run([sys.executable, "-m", "modelship_server", "--model-repository", str(repo),
                           "--tls-dir", str(empty), "--termination-log", str(term)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert term.read_text().startswith(f"TLSCertificateInvalid: TLS file {empty / 'tls.crt'} does not exist")


def test_flag_mistakes_name_the_flag(repo):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "modelship_server", "--model-repository", str(repo), *args],
                              capture_output=True, text=True, timeout=60)

    p = run("--tls-client-auth", "true")
    assert p.returncode == 2 and "--tls-client-auth needs TLS on" in p.stderr
    p = run("--auth-allowed-service-accounts", "default/caller")
    assert p.returncode == 2 and "need --auth-token-review true" in p.stderr
    p = run("--auth-token-review", "true", "--auth-allowed-service-accounts", "caller")
    assert p.returncode == 2 and "expected NAMESPACE/NAME" in p.stderr
