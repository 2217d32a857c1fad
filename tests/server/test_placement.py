"""Where a batch runs (placement.py): the pure decision, and the scheduler keeping the event
loop's inline budget per turn, on a real ONNX Runtime session.

A slow model is the real `mlp` session followed by a 3 ms sleep in the runner: the sleep only
guarantees a lower bound on every run's time, which is what the budget arithmetic counts.
No assertion here depends on how long anything took beyond that lower bound."""

from __future__ import annotations

import asyncio
import http.client
import json
import sys
import threading
import time
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest

from modelship_server import samples
from modelship_server.batching import Scheduler
from modelship_server.errors import RequestTimeout
from modelship_server.metrics import Metrics
from modelship_server.placement import INLINE, LATER, THREAD, InlineBudget, RunTimes, SwitchInterval, place
from modelship_server.repository import BatchingPolicy
from modelship_server.stats import ModelStats

MS = 1_000_000


def test_place_decision():
    assert place(2 * MS, 0, 10 * MS, 10 * MS) == INLINE
    assert place(5 * MS, 5 * MS, 10 * MS, 10 * MS) == INLINE  # exactly fills the turn
    assert place(5 * MS, 6 * MS, 10 * MS, 10 * MS) == LATER  # would overdraw this turn: next turn
    assert place(11 * MS, 0, 10 * MS, 100 * MS) == THREAD  # longer than any inline run may be
    assert place(float("inf"), 0, 10 * MS, 10 * MS) == THREAD  # never measured
    assert place(0.0, 0, 0, 10 * MS) == THREAD  # a threshold of 0: always threads
    assert place(8 * MS, 0, 10 * MS, 5 * MS) == INLINE  # a turn's first run is never put off
    assert place(1 * MS, 1, 10 * MS, 0) == LATER


def test_expected_run_times():
    rt = RunTimes()
    assert rt.expected(1) == float("inf")  # nothing measured: a thread
    rt.observe(1, 1000.0)
    assert rt.expected(1) == 1000.0
    assert rt.expected(8) == 8000.0  # unseen size: per sample times the size
    rt.observe(8, 2400.0)  # a batch has a fixed cost: 8 took far less than 8 x 1
    assert rt.expected(8) == 2400.0
    assert rt.expected(1) == 1000.0  # a large batch does not make a small one look slow
    assert rt.expected(4) >= 1000.0  # never less than a smaller size took
    assert rt.expected(16) > 2400.0


def _placed(rt: RunTimes, size: int) -> str:
    """Where a turn's first batch of `size` goes under the server's defaults (50 ms / 50 ms)."""
    return place(rt.expected(size), 0, 50 * MS, 50 * MS)


def test_one_slow_run_does_not_send_later_runs_to_a_thread():
    """A 5 ms model preempted once for a second (a loaded machine): at full weight that run
    lifted the average to 204 ms and every later run went to a thread (issue 13's collapse)."""
    rt = RunTimes()
    for _ in range(10):
        rt.observe(1, 5 * MS)
    rt.observe(1, 1000 * MS)
    assert rt.expected(1) <= 0.8 * 5 * MS + 0.2 * 4 * 5 * MS  # the outlier counts as 4x the average
    assert _placed(rt, 1) == INLINE
    assert _placed(rt, 2) == INLINE  # unseen size: per sample, not poisoned either


def test_a_sustained_slowdown_is_still_tracked():
    """The outlier cap must not hide a model that really became slow: it goes to a thread."""
    rt = RunTimes()
    for _ in range(10):
        rt.observe(1, 5 * MS)
    placed = []
    for _ in range(12):
        rt.observe(1, 200 * MS)
        placed.append(_placed(rt, 1))
    assert placed[0] == INLINE and placed[-1] == THREAD
    assert rt.expected(1) > 150 * MS


def test_a_stale_small_size_is_refreshed_by_larger_batches():
    """Size 1 measured slow once (here the warm-up hint on a busy machine), then only gathered
    batches run (8 clients, requests gather while a run is out): before the cap, size 1 kept
    its 200 ms for good, every unseen size was at least that, and the cut to an inline part
    (which asks size 1 first) found nothing, so every batch went to a thread, forever."""
    rt = RunTimes()
    rt.observe(1, 200 * MS)
    assert _placed(rt, 1) == THREAD
    for size in (7, 4, 6):
        rt.observe(size, 20 * MS)  # measured on the thread: the model is fast again
    assert rt.expected(1) <= 20 * MS  # a batch of 1 does not take longer than one of 4
    assert rt.expected(3) <= 20 * MS
    assert _placed(rt, 1) == INLINE and _placed(rt, 3) == INLINE
    assert rt.expected(8) >= 20 * MS  # a larger unseen batch is still never guessed faster


def test_budget_resets_on_the_next_loop_turn():
    async def scenario():
        loop = asyncio.get_running_loop()
        budget = InlineBudget(10 * MS, 10 * MS)
        budget.charge(loop, 6 * MS)
        assert budget.place(5 * MS) == LATER
        budget.charge(loop, 1 * MS)
        assert budget.spent_ns == 7 * MS
        await asyncio.sleep(0)  # one turn: the loop polls for I/O, the reset runs
        assert budget.spent_ns == 0
        assert budget.place(5 * MS) == INLINE

    asyncio.run(scenario())


def _mlp_session(tmp_path) -> tuple[ort.InferenceSession, list[str]]:
    """The real `mlp` sample at one intra-op thread, and its output names."""
    path = tmp_path / "mlp.onnx"
    path.write_bytes(samples.mlp().SerializeToString())
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return session, [o.name for o in session.get_outputs()]


def _scheduler(tmp_path, budget: InlineBudget, events: list):
    session, names = _mlp_session(tmp_path)

    def slow_run(feeds):
        out = session.run(names, feeds)
        time.sleep(0.003)  # every run takes at least 3 ms
        events.append(threading.current_thread().name)
        return out

    sched = Scheduler(name="slow", version="1", policy=BatchingPolicy(max_batch_size=16, dynamic=False),
                      runners=[slow_run], output_names=names, max_queue_size=64,
                      metrics=Metrics().for_model("slow", "1"), stats=ModelStats("slow", "1"),
                      inline_budget=budget)
    return sched, session, names


@pytest.mark.parametrize("hint_ms", [3, 20])
def test_one_turn_runs_inline_only_within_its_budget(tmp_path, hint_ms):
    """8 requests arriving in one loop turn: at most 3 runs of >= 3 ms fit a 10 ms turn budget
    on the loop thread; the rest wait for later turns and run inline there, never on a thread,
    and every answer is right. A model expected to run longer than the threshold (20 ms) runs
    on the worker thread until its measured runs bring the average under the threshold."""
    events: list[str] = []

    async def scenario():
        # With a 1 s threshold no run of this model is ever too long to run inline, however
        # loaded the machine; with 10 ms, the 20 ms hint is.
        budget = InlineBudget((1000 if hint_ms == 3 else 10) * MS, 10 * MS)
        sched, session, names = _scheduler(tmp_path, budget, events)
        sched.start(run_ns_hint=hint_ms * MS)
        rng = np.random.default_rng(0)
        xs = [rng.random((1, 64), np.float32) for _ in range(8)]
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(sched.submit({"INPUT0": x}, 1, 30.0)) for x in xs]
        loop.call_soon(events.append, "end of turn")  # queued after the 8 tasks' first steps
        outs = await asyncio.gather(*tasks)
        await sched.stop()
        for x, out in zip(xs, outs):
            np.testing.assert_allclose(out[names[0]], session.run(names, {"INPUT0": x})[0], rtol=1e-5)
        return threading.current_thread().name

    loop_thread = asyncio.run(scenario())
    first_turn = events[: events.index("end of turn")]
    inline = [e for e in first_turn if e == loop_thread]
    runs = [e for e in events if e != "end of turn"]
    assert len(runs) == 8
    if hint_ms == 3:
        assert 1 <= len(inline) <= 3, events
        assert runs == [loop_thread] * 8, events
    else:
        assert inline == [], events
        assert runs[0].startswith("ort-slow"), events  # later runs may go inline once measured


def test_switch_interval_is_short_only_while_runs_are_out():
    default = sys.getswitchinterval()
    sw = SwitchInterval(0.0005)
    sw.run_started()
    sw.run_started()
    assert sys.getswitchinterval() == pytest.approx(0.0005)
    sw.run_ended()
    assert sys.getswitchinterval() == pytest.approx(0.0005)  # one still out
    sw.run_ended()
    assert sys.getswitchinterval() == default
    off = SwitchInterval(0.0)
    off.run_started()
    assert sys.getswitchinterval() == default
    off.run_ended()


def _queue_depth(server, model: str) -> float:
    for line in server.metrics().splitlines():
        if line.startswith("modelship_queue_depth{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_health_is_answered_between_inline_runs(tmp_path, start_server):
    """A real server whose slow model runs inline (threshold 10 s) with a 1 ms turn budget:
    requests that arrive together queue and run one per loop turn, so a liveness probe sent
    while several still wait is answered before the last of them, not after all of them.
    Only the order of answers is checked, never a duration."""
    repo = tmp_path / "repo"
    one_thread = 'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
    samples.write_model(repo, "slow", samples.slow(size=512, repeats=8, rows=512), "max_batch_size: 8\n" + one_thread)
    server = start_server(repo, "--inline-compute-threshold", "10000000", "--inline-turn-budget", "1000")
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 512], "datatype": "FP32", "data": [0.5] * 512}]}).encode()
    order: list[str] = []
    lock = threading.Lock()

    host, port = server.http_url.split(":")
    together = threading.Barrier(6)

    def infer(i: int) -> None:
        # Connections opened (and used) first: a new connection is accepted in one loop turn and
        # read in the next, which would spread the requests over turns; these arrive together.
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        conn.request("GET", "/v2/health/live")
        conn.getresponse().read()
        together.wait(60)
        conn.request("POST", "/v2/models/slow/infer", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        conn.close()
        assert r.status == 200
        with lock:
            order.append(f"infer{i}")

    threads = [threading.Thread(target=infer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while _queue_depth(server, "slow") < 3:  # several runs put off to later turns
        assert time.monotonic() < deadline, f"the queue never held 3 requests; answered so far: {order}"
        time.sleep(0.005)
    with urllib.request.urlopen(f"http://{server.http_url}/v2/health/live", timeout=60) as r:
        assert r.status == 200
    with lock:
        order.append("live")
    for t in threads:
        t.join(120)
    assert len(order) == 7, order
    assert order.index("live") < 6, order  # at least one queued inference was answered after the probe


def _gated_scheduler(tmp_path, gate: threading.Event):
    """The real `mlp` session whose runs wait for `gate` (on the worker thread: the hint is long)."""
    session, names = _mlp_session(tmp_path)

    def gated_run(feeds):
        gate.wait(60)
        return session.run(names, feeds)

    sched = Scheduler(name="gated", version="1", policy=BatchingPolicy(max_batch_size=16, dynamic=False),
                      runners=[gated_run], output_names=names, max_queue_size=64,
                      metrics=Metrics().for_model("gated", "1"), stats=ModelStats("gated", "1"),
                      inline_budget=InlineBudget(10 * MS, 10 * MS))
    return sched, names


def test_a_request_run_inline_makes_no_deadline_timer(tmp_path):
    """A request with a deadline that ran inline is answered without a timer ever being made (a timer
    per call was a cost on every gRPC call with a deadline); one that has to wait gets one."""
    events: list[str] = []

    async def scenario():
        sched, session, names = _scheduler(tmp_path, InlineBudget(1000 * MS, 1000 * MS), events)
        sched.start(run_ns_hint=3 * MS)
        loop = asyncio.get_running_loop()
        made = []
        real = loop.call_later
        loop.call_later = lambda delay, *a: made.append(delay) or real(delay, *a)  # type: ignore[method-assign]
        x = np.random.default_rng(0).random((1, 64), np.float32)
        out = await sched.submit({"INPUT0": x}, 1, 30.0)
        np.testing.assert_allclose(out[names[0]], session.run(names, {"INPUT0": x})[0], rtol=1e-5)
        assert made == []
        await sched.stop()

    asyncio.run(scenario())


def test_a_queued_request_still_times_out_in_the_queue(tmp_path):
    """The deadline timer, made only once a request has to wait, still fails it while it waits; the
    request ahead of it, running, is answered when its run ends."""
    gate = threading.Event()

    async def scenario():
        sched, names = _gated_scheduler(tmp_path, gate)
        sched.start(run_ns_hint=1e12)  # expected far over the threshold: worker thread
        x = np.random.default_rng(0).random((1, 64), np.float32)
        loop = asyncio.get_running_loop()
        first = loop.create_task(sched.submit({"INPUT0": x}, 1, None))
        await asyncio.sleep(0)  # the first one is out on the worker thread, held by the gate
        with pytest.raises(RequestTimeout, match="in the queue"):
            await sched.submit({"INPUT0": x}, 1, 0.05)
        gate.set()
        out = await first
        assert out[names[0]].shape[0] == 1
        await sched.stop()

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
