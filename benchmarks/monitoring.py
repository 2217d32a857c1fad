"""Monitoring benchmarks (docs/monitoring.md): drift detection delay and false alarms, the same
stream through an anchor (alibi-detect's KSDrift, numpy backend) in its own venv, and the cost of
--monitoring on a served model.

    .venv/bin/python benchmarks/monitoring.py detection [--trials 20] [--stationary 100000]
    .venv/bin/python benchmarks/monitoring.py anchor --python /tmp/mons-anchor/bin/python
    .venv/bin/python benchmarks/monitoring.py cost [--seconds 8] [--rounds 3] [--concurrency 4] [--aa] [--pin]
        [--drain process|loop|thread] [--slice-us 2000] [--slice-min 128] [--on-args "--feedback-max-entries 1000"]
    .venv/bin/python benchmarks/monitoring.py path [--calls 100000] [--drain-size 500]
    .venv/bin/python benchmarks/monitoring.py stalls [--seconds 10] [--rate 6500] [--budget-us U] [--gap-ms G] [--compare 4]
    ... --json docs/benchmarks/monitoring-<what>.json

The stream: 10 features, each N(0, 1), one row per request (batch 1). The reference is 1000
rows; windows hold 1000 rows and slide by 100 (the server's defaults). A shift adds 0.5 (half a
standard deviation) to feature 3 from request `s` on; the delay is the number of requests from
`s` to the first window that flags feature 3. A false alarm is a window evaluation (every 100
requests) that flags any feature on a stationary stream.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FEATURES, SHIFTED, SHIFT = 10, 3, 0.5
REF, WINDOW, STEP = 1000, 1000, 100
PRE = 1000  # stationary requests after the reference and before the shift
POST = 4000  # requests after the shift: the delay is capped here


def streams(trials: int, stationary: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shifted = rng.normal(size=(trials, REF + PRE + POST, FEATURES))
    shifted[:, REF + PRE:, SHIFTED] += SHIFT
    return {"shifted": shifted, "stationary": rng.normal(size=(REF + stationary, FEATURES))}


# -- ours: the server's ModelMonitor, in process -----------------------------------------------


def _monitor(ref_rows: np.ndarray):
    from modelship_server.monitoring.monitor import ModelMonitor
    from modelship_server.monitoring.reference import build_reference
    from modelship_server.settings import MonitoringSettings

    ref = build_reference([{"x": ref_rows.astype(np.float32)}], model="m")
    return ModelMonitor("m", {"x": "FP32"}, {}, True, MonitoringSettings(enabled=True, window=WINDOW), ref)


def ours_windows(rows: np.ndarray):
    """Yield (request index, set of flagged features) at each window evaluation."""
    mon = _monitor(rows[:REF])
    drift = mon.drift["x"]
    last = None
    for i in range(REF, len(rows), STEP):
        # A window slides by exactly STEP rows (one block), so STEP rows at once give the same
        # evaluations as STEP one-row requests (the server batches what its profiler drains, too).
        mon.observe({"x": rows[i:i + STEP].astype(np.float32)}, {})
        if drift.scores is not None and drift.scores is not last:
            last = drift.scores
            yield i + STEP - 1 - REF, {f for f, s in zip(drift.names, drift.scores) if s.drifted}


def evaluate(window_fn, data: dict[str, np.ndarray]) -> dict:
    delays, wrong = [], 0
    for t in range(data["shifted"].shape[0]):
        delay = None
        for i, flagged in window_fn(data["shifted"][t]):
            if i >= PRE and f"x[{SHIFTED}]" in flagged:
                delay = i - PRE + 1
                break
            if i < PRE and flagged:
                wrong += 1
        delays.append(delay if delay is not None else float("inf"))
    windows = alarms = 0
    for _, flagged in window_fn(data["stationary"]):
        windows += 1
        alarms += bool(flagged)
    d = np.array(delays, dtype=float)
    return {
        "trials": len(delays), "detected": int(np.isfinite(d).sum()),
        "delay_requests_median": float(np.median(d)), "delay_requests_max": float(d.max()),
        "delay_requests_all": [x if np.isfinite(x) else None for x in d.tolist()],
        "stationary_requests": int(data["stationary"].shape[0] - REF), "windows": windows, "false_alarm_windows": alarms,
        "false_alarm_rate": alarms / windows if windows else None, "pre_shift_false_alarms": wrong,
    }


# -- the anchor: alibi-detect KSDrift, run by the anchor's python on the same stream ----------

ANCHOR = r'''
import json, sys, numpy as np, alibi_detect
from alibi_detect.cd import KSDrift
REF, WINDOW, STEP, PRE, SHIFTED = %d, %d, %d, %d, %d
data = np.load(sys.argv[1])
def windows(rows):
    cd = KSDrift(rows[:REF], p_val=0.01, correction="bonferroni")
    for end in range(REF + WINDOW, len(rows) + 1, STEP):
        pred = cd.predict(rows[end - WINDOW:end], drift_type="feature", return_p_val=True)["data"]
        yield end - REF - 1, {f"x[{j}]" for j, d in enumerate(pred["is_drift"]) if d}
'''


def anchor(python: str, data: dict[str, np.ndarray]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "stream.npz"
        np.savez(npz, **data)
        script = ANCHOR % (REF, WINDOW, STEP, PRE, SHIFTED) + "\n" + inspect.getsource(evaluate) + (
            "\nout = evaluate(windows, {k: data[k] for k in data.files})\n"
            "out['versions'] = {'alibi-detect': alibi_detect.__version__, 'numpy': np.__version__}\n"
            "print(json.dumps(out))\n")
        done = subprocess.run([python, "-c", script, str(npz)], capture_output=True, text=True, timeout=900)
        if done.returncode:
            raise SystemExit(f"anchor failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


# -- cost: the same model served with monitoring off and on, interleaved rounds ----------------


def _cpu_s(pid: int, children: bool = True) -> float:
    """User + system CPU seconds of the process (all its threads) and, with `children`, of its
    live children (the profiler process), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if not children:
        return own
    kids = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            continue
    return own + sum(_cpu_s(c) for c in kids if Path(f"/proc/{c}").exists())


def cost(seconds: float, rounds: int, concurrency: int, sample_rate: float = 1.0, aa: bool = False,
         drain: str = "process", slice_us: float | None = None, slice_min: int | None = None,
         on_args: tuple[str, ...] = (), pin: bool = False) -> dict:
    from modelship_server import bench, samples
    from modelship_server.readiness import free_ports, wait_until_ok

    repo = Path(tempfile.mkdtemp(prefix="mon-cost-"))
    samples.write_model(repo, "mlp", samples.mlp(), "max_batch_size: 16\ndynamic_batching { }\n")
    procs, urls = {}, {}
    slicing = {k: str(v) for k, v in (("MODELSHIP_MONITORING_SLICE_US", slice_us),
                                      ("MODELSHIP_MONITORING_SLICE_MIN", slice_min)) if v is not None}
    try:
        monitoring = ["--monitoring", "--monitoring-sample-rate", str(sample_rate), *on_args]
        for name, extra in (("off", []), ("on", [] if aa else monitoring)):
            hp, gp, mp = free_ports(3)
            procs[name] = subprocess.Popen([*(["taskset", "-c", "0"] if pin else []),
                                            sys.executable, "-m", "modelship_server", "--model-repository", str(repo),
                                            "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
                                            "--metrics-address", "127.0.0.1", "--http-port", str(hp), "--grpc-port",
                                            str(gp), "--metrics-port", str(mp), *extra],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           env={**os.environ, "MODELSHIP_MONITORING_DRAIN": drain, **slicing})
            urls[name] = f"127.0.0.1:{hp}"
            wait_until_ok(f"http://{urls[name]}/v2/health/ready", procs[name], timeout=60, what=name)
        if pin:  # the servers (and a profiler process: a child inherits the mask) on CPU 0, the clients on 1
            os.sched_setaffinity(0, {1})
        results: dict[str, list] = {"off": [], "on": []}
        cpus: dict[str, list[float]] = {"off": [], "on": []}
        owns: dict[str, list[float]] = {"off": [], "on": []}  # the server process alone, no profiler process
        for r in range(rounds):
            for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
                target = bench._Target(urls[name], "http", "mlp", "", 1, {}, "random", True)
                cpu0, own0 = _cpu_s(procs[name].pid), _cpu_s(procs[name].pid, children=False)
                res = bench.run_level_async(target, concurrency, warmup_s=1.0, measure_s=seconds)
                # CPU over warm-up and measurement, divided by the requests of both (the rate is steady)
                done = res.throughput_req_s * (seconds + 1.0)
                cpu_us = (_cpu_s(procs[name].pid) - cpu0) / max(done, 1) * 1e6
                own_us = (_cpu_s(procs[name].pid, children=False) - own0) / max(done, 1) * 1e6
                owns[name].append(own_us)
                results[name].append(res)
                cpus[name].append(cpu_us)
                print(f"round {r + 1} {name:>3}: {res.throughput_req_s:8.0f} req/s  p50 {res.latency_p50_ms:.3f} ms"
                      f"  p99 {res.latency_p99_ms:.3f} ms  server CPU {cpu_us:6.1f} us/req ({own_us:6.1f} in the server"
                      f" process)  errors {res.errors}", flush=True)
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(timeout=30)

    def agg(name: str) -> dict:
        rs = results[name]
        return {"req_s": float(np.mean([x.throughput_req_s for x in rs])),
                "p50_ms": float(np.median([x.latency_p50_ms for x in rs])),
                "p99_ms": float(np.median([x.latency_p99_ms for x in rs])),
                "errors": int(sum(x.errors for x in rs)),
                "cpu_us_per_request": float(np.median(cpus[name])), "cpu_us_per_request_rounds": cpus[name],
                "server_process_cpu_us_per_request": float(np.median(owns[name])),
                "req_s_rounds": [x.throughput_req_s for x in rs]}
    off, on = agg("off"), agg("on")
    return {"model": "samples.mlp() [N,64]->[N,10], batch 1, HTTP binary", "concurrency": concurrency,
            "sample_rate": sample_rate, "on_args": list(on_args), "pinned": pin, "a_a": aa, "drain": drain, "slicing": slicing,
            "seconds_per_round": seconds, "rounds": rounds, "off": off, "on": on,
            "throughput_ratio": on["req_s"] / off["req_s"], "p99_added_ms": on["p99_ms"] - off["p99_ms"],
            # CPU per request is what the throughput target bounds on a CPU-bound server, and it is far
            # less disturbed by other load on the machine than req/s: off / on is the CPU-based ratio
            "cpu_ratio": off["cpu_us_per_request"] / on["cpu_us_per_request"],
            "cpu_us_added_per_request": on["cpu_us_per_request"] - off["cpu_us_per_request"],
            "p50_added_ms": on["p50_ms"] - off["p50_ms"]}


# -- path: what --monitoring adds to one request, measured in process --------------------------


def path(calls: int, drain: int = 500) -> dict:
    """Time the request-path hook (id, prediction store, sampling, queueing a copy of the inputs)
    per call, and the drain's CPU per request when it profiles `drain` queued requests at once
    (about what a 100 ms drain takes at 5,000 req/s); the same model shapes as `cost`. The drain
    is timed with the process's CPU clock, best of its repetitions (a shared machine's
    preemption inflates wall time, not CPU time)."""
    from types import SimpleNamespace

    from modelship_server.messages import InferRequest, Tensor
    from modelship_server.monitoring.monitor import Monitoring
    from modelship_server.settings import MonitoringSettings

    hub = Monitoring(MonitoringSettings(enabled=True, peer_address="10.0.0.5:8000"))  # no loop: drained below
    spec = SimpleNamespace(name="INPUT0", datatype="FP32")
    out = SimpleNamespace(name="OUTPUT0", datatype="FP32")
    model = SimpleNamespace(name="mlp", version="1", inputs=[spec], outputs=[out], policy=SimpleNamespace(max_batch_size=16),
                            output_specs={"OUTPUT0": out}, model_path=None)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(drain, 1, 64)).astype(np.float32)
    ys = rng.normal(size=(drain, 1, 10)).astype(np.float32)
    hook = np.empty(calls)
    perf = time.perf_counter
    for i in range(calls):
        req = InferRequest("mlp", "", [Tensor("INPUT0", "FP32", [1, 64], xs[i % drain])])
        t0 = perf()
        req.id = hub.new_id(model)
        hub.after_infer(model, req, {"OUTPUT0": ys[i % drain]})
        hook[i] = perf() - t0
        if hub.monitors["mlp"].pending_n >= drain:  # dropped, not profiled: the drain is timed apart
            hub.monitors["mlp"].take_pending()
    mon = hub.monitors["mlp"]
    mon.take_pending()
    blocks = []  # the hook's CPU per call, in blocks of 500 calls (what preemption does not inflate)
    for b in range(min(calls, 20_000) // drain):
        reqs = [InferRequest("mlp", "", [Tensor("INPUT0", "FP32", [1, 64], xs[j])]) for j in range(drain)]
        t0 = time.process_time()
        for j, req in enumerate(reqs):
            req.id = hub.new_id(model)
            hub.after_infer(model, req, {"OUTPUT0": ys[j]})
        blocks.append(time.process_time() - t0)
        mon.take_pending()

    def one_drain() -> float:
        for j in range(drain):
            mon.offer([Tensor("INPUT0", "FP32", [1, 64], xs[j])], {"OUTPUT0": ys[j]})
        t0 = time.process_time()
        hub.drain()
        return time.process_time() - t0

    collecting = sum(one_drain() for _ in range(-(-1000 // drain)))  # the first 1000: the frozen reference
    assert mon.reference is not None
    drains = [one_drain() for _ in range(max(5, 20_000 // drain))]
    whole = getattr(mon.drift["INPUT0"], "whole", mon.drift["INPUT0"])  # fused with OUTPUT0: their shared windows
    scored = min(_timed(lambda: whole.__dict__.update(_scored=-1) or mon.snapshot()) for _ in range(20))
    us = hook * 1e6
    return {"calls": calls, "hook_us_p50": float(np.percentile(us, 50)), "hook_us_p99": float(np.percentile(us, 99)),
            "hook_us_mean": float(us.mean()), "hook_cpu_us_per_request_best": min(blocks) / drain * 1e6,
            "hook_cpu_us_per_request_median": float(np.median(blocks)) / drain * 1e6, "drain_requests": drain,
            "drain_us_per_request_collecting": collecting / (-(-1000 // drain) * drain) * 1e6,
            "drain_us_per_request_best": min(drains) / drain * 1e6,
            "drain_us_per_request_median": float(np.median(drains)) / drain * 1e6,
            "drain_ms_best": min(drains) * 1e3,
            "snapshot_with_scores_ms": scored * 1e3}


# -- stalls: how long, and how often, the drain holds the event loop -------------------------


def stalls(seconds: float, rate: float, budget_us: float | None = None, gap_ms: float | None = None,
           min_slice: int | None = None) -> dict:
    """Run the hub on an event loop with requests arriving at `rate` per second (the request-path
    hook, in bursts every millisecond) and record every drain slice: its CPU time (the thread's
    clock, which another process's preemption does not inflate), and the holds: runs of slices
    with no gap between them, which a request waiting on the loop sits through whole. A request's
    added latency is at most the hold it meets, so the p99 a served client sees rises by about the
    hold when more than 1 % of requests meet one. `--budget-us 1e9 --gap-ms 0` profiles like the
    old drain (slices of SLICE=128 back to back)."""
    from modelship_server.monitoring import monitor as mm

    saved = {k: getattr(mm, k) for k in ("SLICE_BUDGET_S", "SLICE_GAP_S", "SLICE_GAP_MIN_S", "SLICE_MIN") if hasattr(mm, k)}
    if min_slice is not None:
        mm.SLICE_MIN = min_slice
    if budget_us is not None:
        mm.SLICE_BUDGET_S = budget_us * 1e-6
    if gap_ms is not None:  # a fixed gap
        mm.SLICE_GAP_S = mm.SLICE_GAP_MIN_S = gap_ms * 1e-3
    try:
        return _stalls(mm, seconds, rate)
    finally:
        for k, v in saved.items():
            setattr(mm, k, v)


def compare_stalls(seconds: float, rate: float, rounds: int, budget_us: float | None = None,
                   gap_ms: float | None = None, min_slice: int | None = None) -> dict:
    """`stalls` as served now (`spread`) and as the old drain profiled (`burst`: slices of up to
    SLICE=128 back to back), alternating in one process: a loaded machine slows both alike."""
    runs: dict[str, list[dict]] = {"spread": [], "burst": []}
    for r in range(rounds):
        for name in (("spread", "burst") if r % 2 == 0 else ("burst", "spread")):
            res = stalls(seconds, rate, *((1e9, 0.0, None) if name == "burst" else (budget_us, gap_ms, min_slice)))
            runs[name].append(res)
            print(f"round {r + 1} {name:>6}: slices of {res['slice_requests_median']:.0f}, hold p50 "
                  f"{res['hold_cpu_us_p50']:.0f} us p99 {res['hold_cpu_us_p99']:.0f} us max {res['hold_cpu_us_max']:.0f} us,"
                  f" drain {res['drain_cpu_us_per_request']:.1f} us/request, dropped {res['dropped']}", flush=True)
    keys = ("hold_cpu_us_p50", "hold_cpu_us_p99", "hold_cpu_us_max", "slice_cpu_us_p99", "drain_cpu_us_per_request",
            "slice_requests_median", "dropped")
    out: dict = {"rate_req_s": rate, "seconds_per_round": seconds, "rounds": rounds, "spread_settings": {
        "budget_us": budget_us, "gap_ms": gap_ms, "min_slice": min_slice}}
    for name, rs in runs.items():
        out[name] = {k: float(np.median([x[k] for x in rs])) for k in keys} | {"rounds": rs}
    return out


def _stalls(mm, seconds: float, rate: float) -> dict:
    import asyncio
    from types import SimpleNamespace

    from modelship_server.messages import InferRequest, Tensor
    from modelship_server.settings import MonitoringSettings

    spec, out = SimpleNamespace(name="INPUT0", datatype="FP32"), SimpleNamespace(name="OUTPUT0", datatype="FP32")
    model = SimpleNamespace(name="mlp", version="1", inputs=[spec], outputs=[out], policy=SimpleNamespace(max_batch_size=16),
                            output_specs={"OUTPUT0": out}, model_path=None)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(1000, 1, 64)).astype(np.float32)
    ys = rng.normal(size=(1000, 1, 10)).astype(np.float32)
    slices: list[tuple[float, float, float, int]] = []  # (start, end, cpu, requests) after the reference

    async def run() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        hub = mm.Monitoring(MonitoringSettings(enabled=True), None, loop)
        real = hub._profile

        def timed(mon, cols, n):
            ready = mon.reference is not None  # not the slices that collect and freeze the reference
            t0, c0 = time.perf_counter(), time.thread_time()
            real(mon, cols, n)
            if ready:
                slices.append((t0, time.perf_counter(), time.thread_time() - c0, n))
        hub._profile = timed  # type: ignore[method-assign]
        i, sent, t_end = 0, 0, None
        start = loop.time()
        try:
            while True:
                now = loop.time()
                if hub.monitors and hub.monitors["mlp"].reference is not None and t_end is None:
                    t_end = now + seconds
                if t_end is not None and now >= t_end:
                    break
                for _ in range(int((now - start) * rate) - sent):
                    req = InferRequest("mlp", "", [Tensor("INPUT0", "FP32", [1, 64], xs[i % 1000])])
                    req.id = hub.new_id(model)
                    hub.after_infer(model, req, {"OUTPUT0": ys[i % 1000]})
                    i, sent = i + 1, sent + 1
                await asyncio.sleep(0)  # a busy loop, as a loaded server's is (an idle CPU makes every slice cold)
            mon = hub.monitors["mlp"]
            return mon.profiled, mon.dropped
        finally:
            hub.close()

    profiled, dropped = asyncio.run(run())
    holds, cur, last_end = [], 0.0, None
    for t0, t1, cpu, _ in slices:
        if last_end is not None and t0 - last_end > 2e-4:  # the loop ran free in between
            holds.append(cur)
            cur = 0.0
        cur += cpu
        last_end = t1
    holds.append(cur)
    cpu = np.array([c for _, _, c, _ in slices]) * 1e6
    sizes = [n for *_, n in slices]
    hold = np.array(holds) * 1e6
    return {"rate_req_s": rate, "seconds": seconds, "slice_budget_us": getattr(mm, "SLICE_BUDGET_S", 0.0) * 1e6,
            "slice_gap_ms": getattr(mm, "SLICE_GAP_S", 0.0) * 1e3, "slices": len(slices), "profiled": profiled,
            "dropped": dropped, "slice_requests_median": float(np.median(sizes)),
            "slice_cpu_us_p50": float(np.percentile(cpu, 50)), "slice_cpu_us_p99": float(np.percentile(cpu, 99)),
            "slice_cpu_us_max": float(cpu.max()), "holds": len(holds),
            "hold_cpu_us_p50": float(np.percentile(hold, 50)), "hold_cpu_us_p99": float(np.percentile(hold, 99)),
            "hold_cpu_us_max": float(hold.max()),
            "drain_cpu_us_per_request": float(cpu.sum() / max(sum(sizes), 1))}


def _timed(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    d = sub.add_parser("detection", help="ours: detection delay and false alarms, in process")
    a = sub.add_parser("anchor", help="alibi-detect KSDrift on the same stream, with its own python")
    a.add_argument("--python", required=True, help="python of a venv with alibi-detect installed")
    for q in (d, a):
        q.add_argument("--trials", type=int, default=20)
        q.add_argument("--stationary", type=int, default=100_000)
        q.add_argument("--seed", type=int, default=0)
    pa = sub.add_parser("path", help="per-request cost of the hook and the profiler, in process")
    pa.add_argument("--calls", type=int, default=100_000)
    pa.add_argument("--drain-size", type=int, default=500, help="requests profiled per drain")
    c = sub.add_parser("cost", help="throughput and p99 with --monitoring on vs off, same run")
    c.add_argument("--seconds", type=float, default=8.0)
    c.add_argument("--rounds", type=int, default=3)
    c.add_argument("--concurrency", type=int, default=4)
    c.add_argument("--sample-rate", type=float, default=1.0, help="--monitoring-sample-rate of the `on` server")
    c.add_argument("--aa", action="store_true", help="an A/A run: both servers without monitoring (the noise floor)")
    c.add_argument("--drain", choices=("process", "loop", "thread"), default="process",
                   help="where the `on` server profiles: a child process (the default), event-loop slices, or a thread")
    c.add_argument("--slice-us", type=float, help="the `on` server's slice time budget (MODELSHIP_MONITORING_SLICE_US, 2000)")
    c.add_argument("--slice-min", type=int, help="its smallest slice (MODELSHIP_MONITORING_SLICE_MIN, 128)")
    c.add_argument("--pin", action="store_true",
                   help="servers on CPU 0 (a profiler process with them), the load generator on CPU 1")
    c.add_argument("--on-args", default="", metavar="FLAGS",
                   help='more server flags for the `on` server, e.g. "--feedback-max-entries 1000"')
    st = sub.add_parser("stalls", help="how long and how often the drain holds the event loop, in process")
    st.add_argument("--seconds", type=float, default=10.0)
    st.add_argument("--rate", type=float, default=6500.0, help="sampled requests per second")
    st.add_argument("--budget-us", type=float, help="override the slice time budget (SLICE_BUDGET_S)")
    st.add_argument("--gap-ms", type=float, help="a fixed gap between slices (SLICE_GAP_S and SLICE_GAP_MIN_S)")
    st.add_argument("--min-slice", type=int, help="override the smallest slice (SLICE_MIN)")
    st.add_argument("--compare", type=int, metavar="ROUNDS",
                    help="alternate ROUNDS rounds each of the drain as it is and the old one (slices of 128 back to back)")
    for q in (d, a, c, pa, st):
        q.add_argument("--json", type=Path, help="write the result here too")
    args = p.parse_args(argv)
    started = time.monotonic()
    if args.what == "cost":
        out = cost(args.seconds, args.rounds, args.concurrency, args.sample_rate, args.aa, args.drain, args.slice_us,
                   args.slice_min, tuple(args.on_args.split()), args.pin)
    elif args.what == "path":
        out = path(args.calls, args.drain_size)
    elif args.what == "stalls":
        out = (compare_stalls(args.seconds, args.rate, args.compare, args.budget_us, args.gap_ms, args.min_slice)
               if args.compare else stalls(args.seconds, args.rate, args.budget_us, args.gap_ms, args.min_slice))
    else:
        data = streams(args.trials, args.stationary, args.seed)
        out = evaluate(ours_windows, data) if args.what == "detection" else anchor(args.python, data)
    out["command"] = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    out["wall_s"] = round(time.monotonic() - started, 1)
    out["machine"] = f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}".strip()
    print(json.dumps({k: v for k, v in out.items() if k != "delay_requests_all"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
