"""The load generator against the real server: a concurrency sweep over both protocols,
CSV/JSON output, progress lines, and clear errors for a bad target."""

from __future__ import annotations

import csv
import json

import pytest

from modelship_server import bench, samples


@pytest.fixture(scope="module")
def server(tmp_path_factory, module_server_factory):
    repo = tmp_path_factory.mktemp("repo")
    samples.write_model(repo, "mlp", samples.mlp(), "max_batch_size: 8\ndynamic_batching { }\n")
    return module_server_factory(repo)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sweep_writes_json(server, tmp_path, protocol, capsys):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    out = tmp_path / "r.json"
    rc = bench.main(["-m", "mlp", "-i", protocol, "-u", url, "--concurrency-range", "1:4:x2",
                     "--measurement-interval", "1000", "--warmup-interval", "200", "-b", "2",
                     "--measurement-request-count", "5",
                     "--output-format", "json", "-f", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [r["concurrency"] for r in rows] == [1, 2, 4]
    for r in rows:
        assert r["requests"] > 0 and r["errors"] == 0 and r["batch_size"] == 2
        assert r["latency_p50_ms"] <= r["latency_p90_ms"] <= r["latency_p99_ms"]
        assert r["throughput_infer_s"] == pytest.approx(2 * r["throughput_req_s"])
    err = capsys.readouterr().err
    assert "concurrency 4:" in err and "infer/s" in err


def test_csv_and_table(server, tmp_path, capsys):
    out = tmp_path / "r.csv"
    rc = bench.main(["-m", "mlp", "-u", server.grpc_url, "--measurement-interval", "300",
                     "--measurement-request-count", "5", "--warmup-interval", "50", "-f", str(out), "-q"])
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1 and int(rows[0]["requests"]) > 0
    captured = capsys.readouterr()
    assert "concurrency" in captured.out and "p99 ms" in captured.out
    assert captured.err == ""  # -q: no progress lines


def test_json_tensors_over_http(server, capsys):
    rc = bench.main(["-m", "mlp", "-i", "http", "-u", server.http_url, "--http-json",
                     "--measurement-interval", "300", "--warmup-interval", "50", "-q"])
    assert rc == 0


def test_bad_target_and_flags(server, capsys):
    assert bench.main(["-m", "nope", "-u", server.grpc_url]) == 2
    assert "cannot read metadata of model 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        bench.main(["-m", "mlp", "--concurrency-range", "16:1"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        bench.main(["-m", "mlp", "--measurement-request-count", "-1"])
    assert e.value.code == 2
    assert "--measurement-request-count must be >= 0, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        bench.main(["-m", "mlp", "-u", "http://localhost:8000"])
    assert e.value.code == 2


def test_concurrency_levels():
    assert bench.concurrency_levels("1:16:x2") == [1, 2, 4, 8, 16]
    assert bench.concurrency_levels("2:8:3") == [2, 5, 8]
    assert bench.concurrency_levels("1,4,16") == [1, 4, 16]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_async_clients(server, protocol, capsys):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    rc = bench.main(["-m", "mlp", "-i", protocol, "-u", url, "--async", "--concurrency-range", "4",
                     "--measurement-interval", "300", "--measurement-request-count", "20", "--warmup-interval", "100",
                     "--output-format", "json", "-q"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    # The window stretches until it holds 20 requests: a stalled connection delays it, never empties it.
    assert rows[0]["requests"] >= 20 and rows[0]["errors"] == 0
    assert rows[0]["duration_s"] >= 0.3 - 1e-9  # never shorter than asked


def test_window_counts_by_time_and_stretches_to_a_request_count():
    w = bench._Window(10.0, 1.0, min_requests=0)
    assert not w.count(9.9, 10.5)  # sent during the warm-up
    assert w.count(10.1, 10.9) and not w.count(10.5, 11.2)  # the second ended after the window
    assert w.open(10.99) and not w.open(11.0) and w.seconds == 1.0
    short = bench._Window(10.0, 1.0, min_requests=2)
    assert short.count(10.1, 10.2) and short.open(11.5)  # one of two: still open past its end
    assert short.count(10.5, 12.0) and short.counted == 2 and not short.open(12.0)
    assert not short.count(11.0, 12.1) and short.seconds == 2.0
    dead = bench._Window(10.0, 1.0, min_requests=5)
    assert not dead.open(11.0 + bench.MAX_EXTENSION_S)  # a server that answers nothing ends the level
