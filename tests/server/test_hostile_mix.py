"""Slowloris, unread pipelining, huge BYTES bodies and a flood, all at once for a few seconds.

Asserts outcomes only: every liveness probe answered 200, every good request
answered with the right values, each attack met its limit (slow connections
closed, pipeliners stopped, huge bodies refused with 400), memory bounded by
the byte budget plus a constant, and the server still serving afterwards. The
latencies are reported by the benchmark (docs/server-benchmarks.md), not asserted.
"""

from __future__ import annotations

import pytest

from . import hostile_clients
from .procinfo import rss_bytes

BUDGET_MIB = 256


@pytest.fixture
def server(tmp_path, start_server):
    repo = hostile_clients.write_repository(tmp_path)
    return start_server(repo, "--max-inflight-bytes", f"{BUDGET_MIB}Mi", "--http-header-timeout", "1",
                        "--http-idle-timeout", "2")


def test_hostile_mix(server):
    pid = server.proc.pid
    rss0 = rss_bytes(pid)
    res = hostile_clients.run_mix(server.http_port, server.grpc_port, seconds=6, rss_of=lambda: rss_bytes(pid),
                                  slowloris_connections=60, pipeliners=3, floods=3)
    summary = f"attacks: {res.attacks}\nprobe failures: {res.probe_failures[:5]}\ngood failures: {res.good_failures[:5]}"
    assert not res.probe_failures, summary
    assert len(res.probe_latencies) >= 5, summary
    assert not res.good_failures, summary
    assert res.good_ok >= 5, summary
    # Each attack met its limit.
    assert res.attacks.get("slowloris closed by server", 0) >= 60, summary
    # Huge bodies: refused as too many elements (400) or, when the pipeliners hold the budget, shed (503).
    huge = {k: v for k, v in res.attacks.items() if k.startswith("huge BYTES answered")}
    assert sum(huge.values()) >= 1 and set(huge) <= {"huge BYTES answered 400", "huge BYTES answered 503"}, summary
    assert not any(k.startswith("flood answered 5") for k in res.attacks), summary
    # Memory: the byte budget plus a constant for the runtime, sockets and buffers.
    peak = max(res.rss_samples) - rss0
    assert peak < (BUDGET_MIB + 128) * 1024**2, f"RSS grew {peak / 2**20:.0f} MiB\n{summary}"
    assert server.status("/v2/health/ready") == 200
    assert server.proc.poll() is None
    assert "Traceback" not in server.log()
