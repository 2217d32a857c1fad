"""The front end's pure decisions, without a server: the byte budget, its default from the
cgroup, the route table, and the BYTES splitter's early stop."""

from __future__ import annotations

import struct

import pytest

from modelship_server.budget import EXPANSION, ByteBudget, cgroup_memory_limit, default_budget
from modelship_server.codecs.tensors import split_bytes
from modelship_server.errors import InvalidInput, ModelNotFound
from modelship_server.protocol.rest import route


def test_cgroup_v2_limit_and_unlimited(tmp_path):
    f = tmp_path / "memory.max"
    f.write_text("2147483648\n")
    assert cgroup_memory_limit((f,)) == 2 * 1024**3
    f.write_text("max\n")
    assert cgroup_memory_limit((f,)) is None
    assert cgroup_memory_limit((tmp_path / "absent",)) is None


def test_cgroup_v1_unlimited_is_a_huge_number(tmp_path):
    f = tmp_path / "memory.limit_in_bytes"
    f.write_text(str(9223372036854771712))
    assert cgroup_memory_limit((tmp_path / "absent", f)) is None


def test_default_budget_is_half_the_limit_with_a_floor():
    assert default_budget(2 * 1024**3) == 1024**3
    assert default_budget(32 * 1024**2) == 64 * 1024**2
    assert default_budget(None) == 1024**3


def test_budget_reserves_expanded_bytes_and_sheds_over_it():
    b = ByteBudget(100 * EXPANSION * 1024)
    first = b.try_reserve(60 * 1024)
    assert first == 60 * 1024 * EXPANSION
    assert b.try_reserve(60 * 1024) == -1  # large: only 7/8 of the budget
    small = b.try_reserve(30 * 1024)  # small: may use the rest
    assert small > 0
    assert b.shed == 1
    b.release(first)
    b.release(small)
    assert b.used == 0


def test_budget_admits_one_request_alone_whatever_its_size():
    b = ByteBudget(1024)
    n = b.try_reserve(10 * 1024)
    assert n > 0
    assert b.try_reserve(1) == -1
    b.release(n)
    assert b.try_reserve(1) > 0


@pytest.mark.parametrize("path,handler,params", [
    ("v2", "_server_metadata", {}),
    ("v2/health/live", "_live", {}),
    ("v2/models/stats", "_all_stats", {}),
    ("v2/models/m", "_model_metadata", {"name": "m"}),
    ("v2/models/m/versions/3/ready", "_model_ready", {"name": "m", "version": "3"}),
    ("v2/models/m/infer", "_infer", {"name": "m"}),
    ("v2/repository/models/m/load", "_load_unload", {"name": "m", "action": "load"}),
    ("v2/trace/setting", "_trace_setting", {}),
    ("v2/models/m/trace/setting", "_trace_setting", {"name": "m"}),
    ("v2/logging", "_extension", {}),
])
def test_routes(path, handler, params):
    r, got = route(path.split("/"))
    assert r.handler.__name__ == handler
    assert got == params


@pytest.mark.parametrize("path", ["v3", "v2/models", "v2/models/m/versions/1/infer/x", "v2/repository/models/m/drop"])
def test_unknown_routes_are_404(path):
    with pytest.raises(ModelNotFound, match="no route for /"):
        route(path.split("/"))


def test_split_bytes_stops_past_the_declared_count():
    blob = struct.pack("<I", 0) * 1_000_000 + b"\xff"  # would be "stray bytes" if it read to the end
    with pytest.raises(InvalidInput, match="shape needs 1 elements, got more"):
        split_bytes("t", blob, 1)


def test_split_bytes_errors_name_the_tensor():
    with pytest.raises(InvalidInput, match="input 't': BYTES element 0 declares 9 bytes but only 2 remain"):
        split_bytes("t", struct.pack("<I", 9) + b"ab", 1)
    with pytest.raises(InvalidInput, match="input 't': shape needs 2 elements, got 1"):
        split_bytes("t", struct.pack("<I", 1) + b"a", 2)
    assert split_bytes("t", memoryview(struct.pack("<I", 2) + b"hi"), 1).tolist() == [b"hi"]


def test_limit_flags_parse_and_refuse_nonsense(tmp_path, capsys):
    from modelship_server.cli import parse_settings

    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"")
    settings, _ = parse_settings(["--model-repository", str(tmp_path), "--max-inflight-bytes", "512Mi",
                                  "--http-header-timeout", "2.5", "--http-max-connections", "10",
                                  "--http-max-pipelined", "4", "--http-max-url-size", "1Ki"])
    assert settings.max_inflight_bytes == 512 * 1024**2
    lim = settings.http_limits
    assert (lim.header_timeout_s, lim.max_connections, lim.max_pipelined, lim.max_url_size) == (2.5, 10, 4, 1024)
    with pytest.raises(SystemExit) as exit_:
        parse_settings(["--model-repository", str(tmp_path), "--http-header-timeout", "0"])
    assert exit_.value.code == 2
    assert "--http-header-timeout: must be > 0, got 0" in capsys.readouterr().err
