"""The profiler process (MODELSHIP_MONITORING_DRAIN=process, the default): records through the
shared-memory ring unchanged, around its end, never over unread bytes; and a real child profiling
what the hub writes exactly as profiling in process would, dropping and counting (never failing
a request) what the ring cannot take, and going on serving when the child dies."""

from __future__ import annotations

import asyncio
import mmap
import os
import signal
from types import SimpleNamespace

import numpy as np
import pytest

from modelship_server.messages import InferRequest, Tensor
from modelship_server.monitoring import monitor as monitor_mod
from modelship_server.monitoring.monitor import ModelMonitor
from modelship_server.monitoring.profiler import read_records, write_record
from modelship_server.settings import MonitoringSettings


def _array_cases(rng: np.random.Generator) -> list[np.ndarray]:
    return [
        rng.normal(size=(1, 4)).astype(np.float32),
        np.ones((3, 4), np.float16),
        np.array([b"a", b"bcd"], dtype=object),  # BYTES: Python objects, pickled into the record
        np.array(2.5),  # rank 0
        np.zeros((0, 5), np.int64),  # no elements
        np.arange(10, dtype=np.uint8).reshape(2, 5)[:, ::2],  # not contiguous
        np.array([[True, False]]),
        np.arange(7, dtype=np.int64)[None, :] * -3,
    ]


def test_records_come_out_of_the_ring_as_they_went_in_across_its_end():
    rng = np.random.default_rng(1)
    size = 4096
    buf = memoryview(mmap.mmap(-1, size))
    write = read = 0
    sent: list[tuple[int, list[tuple[int, np.ndarray]]]] = []
    got: list[tuple[int, list[tuple[int, np.ndarray]]]] = []
    for step in range(400):
        cases = _array_cases(rng)
        arrays = [(int(i), cases[int(i)]) for i in rng.choice(len(cases), size=int(rng.integers(1, 4)))]
        pos = write_record(buf, size, write, read, step % 3, arrays)
        if pos is None:  # full: the reader catches up, the same record then fits
            got += read_records(buf, size, read, write)
            read = write
            pos = write_record(buf, size, write, read, step % 3, arrays)
        assert pos is not None and pos > write and pos - read <= size
        write = pos
        sent.append((step % 3, arrays))
    got += read_records(buf, size, read, write)
    assert write > 3 * size  # it went round the ring
    assert len(got) == len(sent)
    for (m_got, a_got), (m_sent, a_sent) in zip(got, sent):
        assert m_got == m_sent and [i for i, _ in a_got] == [i for i, _ in a_sent]
        for (_, g), (_, w) in zip(a_got, a_sent):
            assert g.dtype == w.dtype and g.shape == w.shape and np.array_equal(g, w)


def test_a_record_is_refused_rather_than_written_over_unread_bytes():
    size = 1024
    buf = memoryview(mmap.mmap(-1, size))
    one = [(0, np.zeros(100, np.float32))]  # 400 bytes of data, 432 with its headers
    first = write_record(buf, size, 0, 0, 0, one)
    second = write_record(buf, size, first, 0, 0, one)
    assert first == second - first and second < size
    assert write_record(buf, size, second, 0, 0, one) is None  # would pass the unread first record
    third = write_record(buf, size, second, first, 0, one)  # the first read: room, at the ring's start
    assert third is not None and third % size == first and third - first <= size
    assert [len(a) for _, a in read_records(buf, size, first, third)] == [1, 1]
    assert write_record(buf, size, 0, 0, 0, [(0, np.zeros(300, np.float32))]) is None  # bigger than the ring


_SPEC = SimpleNamespace(name="x", datatype="FP32")
_OUT = SimpleNamespace(name="y", datatype="FP32")


def _model(name: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, version="1", inputs=[_SPEC], outputs=[_OUT], policy=SimpleNamespace(max_batch_size=8),
                           output_specs={"y": _OUT}, model_path=None)


def _requests(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(rng.normal(size=shape).astype(np.float32), rng.dirichlet(np.ones(3), size=shape[0]).astype(np.float32))
            for _ in range(n)]


async def _serve(hub: monitor_mod.Monitoring, model, stream) -> None:
    for x, y in stream:
        req = InferRequest(model.name, "", [Tensor("x", "FP32", list(x.shape), x)])
        req.id = hub.new_id(model)
        hub.after_infer(model, req, {"y": y})  # never raises, whatever the profiler does


async def _until(check, seconds: float = 60.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)


def test_the_child_profiles_every_request_as_profiling_in_process_does(monkeypatch):
    monkeypatch.delenv("MODELSHIP_MONITORING_DRAIN", raising=False)
    cfg = MonitoringSettings(enabled=True, window=200, reference_size=100)
    stream = _requests(np.random.default_rng(8), 1000, (1, 6))
    model = _model("m")

    async def run() -> dict:
        hub = monitor_mod.Monitoring(cfg, None, asyncio.get_running_loop())
        assert hub.drain_mode == "process" and hub._process is not None
        try:
            await _serve(hub, model, stream)
            await _until(lambda: hub.snapshot(model)["sampling"]["profiled"] >= 1000)
            return hub.snapshot(model)
        finally:
            hub.close()

    doc = asyncio.run(run())
    assert doc["sampling"] == {"rate": 1.0, "profiled": 1000, "dropped": 0}
    here = ModelMonitor("m", {"x": "FP32"}, {"y": "FP32"}, True, cfg, None)
    for x, y in stream:
        here.observe({"x": x}, {"y": y})
    want = here.profile_state()
    assert doc["reference"] == want["reference"] and doc["reference"]["state"] == "frozen"
    assert doc["drift"]["drifted"] == want["drift"]["drifted"]
    assert doc["drift"]["features"].keys() == want["drift"]["features"].keys()
    for fname, f in want["drift"]["features"].items():
        got = doc["drift"]["features"][fname]
        assert got.keys() == f.keys() and got["tensor"] == f["tensor"] and "psi" in got, fname
        for k, v in f.items():
            if k != "tensor":
                assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (fname, k)


def test_a_full_ring_drops_and_counts_and_what_fits_is_all_profiled(monkeypatch):
    monkeypatch.delenv("MODELSHIP_MONITORING_DRAIN", raising=False)
    monkeypatch.setenv("MODELSHIP_MONITORING_RING_MB", "1")
    cfg = MonitoringSettings(enabled=True, window=200, reference_size=50)
    rng = np.random.default_rng(2)
    burst = _requests(rng, 400, (1, 32, 64))  # 8 KiB each, 3.2 MiB in all: the ring holds a third
    huge = _requests(rng, 3, (1, 512, 600))  # 1.2 MiB each: never fits

    async def run() -> tuple[dict, dict]:
        hub = monitor_mod.Monitoring(cfg, None, asyncio.get_running_loop())
        small, big = _model("small"), _model("big")
        try:
            await _serve(hub, small, burst)
            await _serve(hub, big, huge)
            await _until(lambda: sum(hub.snapshot(small)["sampling"][k] for k in ("profiled", "dropped")) >= 400
                         and hub.snapshot(big)["sampling"]["dropped"] >= 3)
            await asyncio.sleep(0.3)  # nothing more arrives
            return hub.snapshot(small), hub.snapshot(big)
        finally:
            hub.close()

    small_doc, big_doc = asyncio.run(run())
    # all 400 written in one go, faster than any reader: the ring and the heap queue behind it took
    # what fit (1 MiB each), the rest was counted
    assert small_doc["sampling"]["profiled"] + small_doc["sampling"]["dropped"] == 400
    assert 100 <= small_doc["sampling"]["profiled"] < 400
    assert big_doc["sampling"]["profiled"] == 0 and big_doc["sampling"]["dropped"] == 3


def test_when_the_child_dies_sampled_requests_are_dropped_and_counted_and_serving_goes_on(monkeypatch, caplog):
    monkeypatch.delenv("MODELSHIP_MONITORING_DRAIN", raising=False)
    cfg = MonitoringSettings(enabled=True, window=200, reference_size=20)
    rng = np.random.default_rng(3)
    model = _model("m")

    async def run() -> dict:
        hub = monitor_mod.Monitoring(cfg, None, asyncio.get_running_loop())
        try:
            await _serve(hub, model, _requests(rng, 30, (1, 6)))
            await _until(lambda: hub.snapshot(model)["sampling"]["profiled"] >= 30)
            os.kill(hub._process.proc.pid, signal.SIGKILL)
            await _until(lambda: hub._process.closed)
            await _serve(hub, model, _requests(rng, 25, (1, 6)))
            await _until(lambda: hub.snapshot(model)["sampling"]["dropped"] >= 25)
            doc = hub.snapshot(model)
            doc["ids"] = hub.new_id(model)
            return doc
        finally:
            hub.close()

    doc = asyncio.run(run())
    assert doc["sampling"]["profiled"] == 30 and doc["sampling"]["dropped"] == 25
    assert doc["reference"]["state"] == "frozen"  # what the child had sent before it died stays
    assert "the profiler process stopped" in caplog.text


@pytest.mark.parametrize("raw, mib, warned", [("", 32, False), ("8", 8, False), ("0", 32, True), ("lots", 32, True),
                                               ("5000", 32, True)])
def test_the_ring_size_setting_takes_whole_mib_and_names_itself_when_wrong(monkeypatch, caplog, raw, mib, warned):
    from modelship_server.monitoring.profiler import ring_bytes

    monkeypatch.setenv("MODELSHIP_MONITORING_RING_MB", raw)
    assert ring_bytes() == mib << 20
    assert ("MODELSHIP_MONITORING_RING_MB=" in caplog.text and "from 1 to 4096" in caplog.text) == warned


def test_an_unknown_drain_mode_is_named_and_the_default_used(monkeypatch, caplog):
    monkeypatch.setenv("MODELSHIP_MONITORING_DRAIN", "gpu")
    assert monitor_mod.drain_mode() == "process"
    assert "MODELSHIP_MONITORING_DRAIN='gpu'" in caplog.text and "process, loop, thread" in caplog.text
