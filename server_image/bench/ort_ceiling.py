"""The ceiling a server on one core can reach: raw ONNX Runtime in a tight loop on that core.

With the model run inline, a server on one core does the run plus its front end's work per
request; raw `InferenceSession.run` back to back on the same core, with the same session
options (one intra-op thread, no spinning) and the same request tensors, is what is left with
a front end that costs nothing (the ceiling is the loop's rate, or 1/p50 of a run where the loop was
preempted by other processes on a shared core, whichever is higher). So `server / raw` is the share of the ceiling a server reaches,
and `1/server - 1/raw` (seconds per request) is what its front end costs per request, load
generator on the other core included in neither. If raw / KServe is below a target ratio, no
front end reaches that ratio by being cheaper; only running more samples per run (dynamic
batching, when ORT is cheaper per sample in a batch) or more cores can.

Used by ghz_compare.py (in its rounds, alternately with the servers); alone:

    .venv/bin/python server_image/bench/ort_ceiling.py MODEL.onnx --seconds 3 --batch 1 8
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

SERVER_CPU = 0  # where ghz_compare.py and grpc_path.py pin the servers


def session(path: Path) -> ort.InferenceSession:
    """The servers' session options for these runs: one intra-op thread, no spinning, all graph optimizations."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def tight_loop(s: ort.InferenceSession, feeds: dict[str, np.ndarray], seconds: float,
               warmup_s: float = 1.0) -> dict:
    """Runs back to back for `seconds` after a warm-up: runs/s, samples/s, and the run's p50."""
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        s.run(None, feeds)
    times = []
    cpu = time.thread_time()
    start = time.perf_counter()
    end = start + seconds
    t = start
    while t < end:
        s.run(None, feeds)
        now = time.perf_counter()
        times.append(now - t)
        t = now
    total = t - start
    cpu = time.thread_time() - cpu
    batch = int(next(iter(feeds.values())).shape[0])
    p50 = float(np.percentile(times, 50))
    loop_runs = len(times) / total
    # On a shared core the loop is preempted by other processes (a server, sleeping between
    # requests, is favoured by the kernel over a process that never sleeps): 1/p50 is what the
    # core gives one run when nothing else takes it, and the ceiling is the better of the two.
    runs = max(loop_runs, 1 / p50)
    return {"runs_per_s": runs, "infer_per_s": runs * batch, "loop_runs_per_s": loop_runs,
            "loop_infer_per_s": loop_runs * batch, "p50_ms": p50 * 1000,
            "cpu_ms_per_run": cpu * 1000 / len(times), "runs": len(times), "batch": batch}


def measure(path: Path, feeds: dict[str, np.ndarray], seconds: float, cpu: int | None = SERVER_CPU) -> dict:
    """`tight_loop` on CPU `cpu` (this thread only, restored after), where the servers run."""
    pin = cpu is not None and (os.cpu_count() or 1) > 1
    saved = os.sched_getaffinity(0) if pin else None
    if pin:
        os.sched_setaffinity(0, {cpu})
    try:
        return tight_loop(session(path), feeds, seconds)
    finally:
        if saved is not None:
            os.sched_setaffinity(0, saved)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` and every live descendant.

    On a shared core wall-clock rates depend on who else runs there; CPU time per request
    does not, so it compares a server with the raw loop even when other work takes turns."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo += [c for c, pp in parents.items() if pp == p]
    return total


def front_end_ms(server_req_per_s: float, raw_runs_per_s: float) -> float:
    """Per-request cost above the raw run, in ms: 1/server - 1/raw (negative: the server batched runs)."""
    if server_req_per_s <= 0 or raw_runs_per_s <= 0:
        return float("nan")
    return (1 / server_req_per_s - 1 / raw_runs_per_s) * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="an ONNX file with one float32 input")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    args = p.parse_args(argv)
    s = session(args.model)
    inp = s.get_inputs()[0]
    per = {}
    for b in args.batch:
        dims = [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
        feeds = {inp.name: np.random.default_rng(0).random((b, *dims), np.float32)}
        per[b] = measure(args.model, feeds, args.seconds)
        print(f"batch {b}: {per[b]['infer_per_s']:.1f} infer/s ({per[b]['runs_per_s']:.1f} runs/s; the loop itself "
              f"{per[b]['loop_infer_per_s']:.1f} infer/s, run p50 {per[b]['p50_ms']:.3f} ms, "
              f"CPU {per[b]['cpu_ms_per_run']:.4f} ms a run)")
    if 1 in per:
        for b, r in per.items():
            if b != 1:
                print(f"batch {b} / batch 1 per sample: {r['infer_per_s'] / per[1]['infer_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
