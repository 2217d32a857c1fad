"""Build and start the gofront prototype (server_image/gofront: a grpc-go front end and a Python
ONNX Runtime worker on a Unix socket) for ghz_compare.py, and check its answers against ONNX
Runtime before anything is timed.

The binary is built with the local Go toolchain (CGO off, GOTOOLCHAIN=local, as
modelship.devcluster.toolchain builds the plane's tools) into ~/.cache/modelship/bin/gofront-<digest>,
keyed by a digest of the module's go.mod, go.sum and sources: a second run costs nothing.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from modelship_server.readiness import free_ports  # noqa: E402
from grpc_path import Proc  # noqa: E402

SOURCE = Path(__file__).resolve().parents[1] / "gofront"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build() -> Path:
    """The gofront binary, built from server_image/gofront on first use (seconds with a warm module cache)."""
    from modelship.devcluster import toolchain

    files = sorted(p for p in SOURCE.iterdir() if p.suffix == ".go" or p.name in ("go.mod", "go.sum"))
    digest = hashlib.sha256(b"\0".join(p.name.encode() + b"\0" + p.read_bytes() for p in files)).hexdigest()[:10]
    binary = toolchain.cache_dir() / "bin" / f"gofront-{digest}" / "gofront"
    if binary.is_file():
        return binary
    go = shutil.which(os.environ.get("MODELSHIP_GO", "go"))
    if go is None:
        raise SystemExit("gofront: no Go toolchain on PATH (or MODELSHIP_GO); it is needed to build the prototype")
    log(f"gofront: building {binary} with {go} ...")
    staging = binary.with_name("gofront.partial")
    staging.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN", "local")}
    r = subprocess.run([go, "build", "-trimpath", "-mod=readonly", "-o", str(staging), "."], cwd=SOURCE, env=env,
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"gofront: go build failed:\n{r.stderr[-3000:]}")
    staging.rename(binary)
    return binary


class GoFront:
    """The two processes, worker first; `pids` for CPU accounting, `stop()` ends both."""

    def __init__(self, worker: Proc, front: Proc, folder: Path) -> None:
        self.worker, self.front, self.folder = worker, front, folder
        self.proc = front.proc
        self.pids = [front.proc.pid, worker.proc.pid]
        self.batching: list[str] = []  # the front's exit lines: requests and batches per model

    def stop(self) -> None:
        try:
            self.front.stop()
            text = Path(self.front.log.name).read_text(errors="replace")
            self.batching = [line.removeprefix("gofront: ") for line in text.splitlines() if "batches (mean" in line]
        finally:
            self.worker.stop()
            shutil.rmtree(self.folder, ignore_errors=True)


def max_batch_sizes(repo: Path, models: list[str]) -> dict[str, int]:
    """Each model's max_batch_size from its config.pbtxt in the benchmark's repository (0 if unset)."""
    sizes = {}
    for m in models:
        text = (repo / m / "config.pbtxt").read_text()
        match = re.search(r"^max_batch_size:\s*(\d+)", text, re.MULTILINE)
        sizes[m] = int(match.group(1)) if match else 0
    return sizes


def start(repo: Path, max_batch: dict[str, int], extra: tuple[str, ...] = ()) -> tuple[GoFront, str, str]:
    """Worker and front, both on the servers' CPU (Proc pins them), ready to answer."""
    from modelship_server.readiness import wait_until_ok

    binary = build()
    folder = Path(tempfile.mkdtemp(prefix="gofront-"))
    sock = folder / "worker.sock"
    models = [f"{m}={repo / m / '1' / 'model.onnx'}:{b}" for m, b in max_batch.items()]
    worker = Proc([sys.executable, str(SOURCE / "worker.py"), "--socket", str(sock), *models])
    try:
        hp, gp = free_ports(2)
        front = Proc([str(binary), "--worker-socket", str(sock), "--grpc-port", str(gp), "--http-port", str(hp),
                      *extra])
    except BaseException:
        worker.stop()
        raise
    g = GoFront(worker, front, folder)
    try:
        last = next(iter(max_batch))
        wait_until_ok(f"http://127.0.0.1:{hp}/v2/models/{last}/ready", front.proc, timeout=120, what="gofront",
                      interval=0.1)
    except BaseException:
        log(f"gofront: did not start; worker log: {Path(worker.log.name).read_text()[-1000:]}")
        g.stop()
        raise
    return g, f"127.0.0.1:{hp}", f"127.0.0.1:{gp}"


def check_answers(grpc_url: str, repo: Path, models: dict[str, tuple[str, tuple[int, ...]]], batch: int,
                  clients: int = 8, seed: int = 1) -> None:
    """Every answer must equal ONNX Runtime's own on the same input, alone and when `clients`
    different requests are in flight at once (so that they are batched together and split again).
    Raises SystemExit naming the model and the largest difference otherwise."""
    import onnxruntime as ort
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(grpc_url)
    for model, (name, dims) in models.items():
        s = ort.InferenceSession(str(repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        outputs = [o.name for o in s.get_outputs()]
        rng = np.random.default_rng(seed)
        data = [rng.random((batch, *dims), np.float32) for _ in range(clients)]

        def ask(x: np.ndarray, model: str = model, name: str = name) -> list[np.ndarray]:
            t = tc.InferInput(name, list(x.shape), "FP32")
            t.set_data_from_numpy(x)
            r = client.infer(model, [t])
            return [r.as_numpy(o) for o in outputs]

        alone = [ask(data[0])]
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            together = list(pool.map(ask, data))
        for i, got in enumerate(alone + together):
            x = data[0] if i == 0 else data[i - 1]
            want = s.run(outputs, {name: x})
            for o, g, w in zip(outputs, got, want):
                if g is None or g.shape != w.shape or not np.allclose(g, w, rtol=1e-4, atol=1e-5):
                    diff = "shape " + str(None if g is None else g.shape) if g is None or g.shape != w.shape \
                        else f"max |diff| {float(np.max(np.abs(g - w))):.3g}"
                    raise SystemExit(f"gofront: {model} output {o!r} differs from ONNX Runtime's ({diff}); "
                                     "not timing a server that answers wrongly")
        log(f"gofront: {model} batch {batch}: 1 + {clients} concurrent answers equal ONNX Runtime's")
    client.close()


def check_refusals(grpc_url: str) -> None:
    """Bad requests get a clear INVALID_ARGUMENT / NOT_FOUND / UNIMPLEMENTED naming what is wrong,
    and the front end keeps serving: raises SystemExit on any other answer."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    def infer(model: str = "mlp", dtype: str = "FP32", shape: tuple = (1, 64), nbytes: int = 256, name: str = "INPUT0",
              typed: bool = False) -> pb.ModelInferRequest:
        r = pb.ModelInferRequest(model_name=model)
        t = r.inputs.add(name=name, datatype=dtype, shape=list(shape))
        if typed:
            t.contents.fp32_contents.extend([0.0] * 64)
        else:
            r.raw_input_contents.append(b"\0" * nbytes)
        return r

    cases = [
        ("unknown model", "ModelInfer", infer(model="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        ("wrong datatype", "ModelInfer", infer(dtype="INT32"), grpc.StatusCode.INVALID_ARGUMENT, "INT32"),
        ("wrong shape", "ModelInfer", infer(shape=(1, 63), nbytes=252), grpc.StatusCode.INVALID_ARGUMENT, "[1 63]"),
        ("short bytes", "ModelInfer", infer(nbytes=255), grpc.StatusCode.INVALID_ARGUMENT, "255 bytes"),
        ("huge dims", "ModelInfer", infer(shape=(1, 1 << 62)), grpc.StatusCode.INVALID_ARGUMENT, "INPUT0"),
        ("batch over max", "ModelInfer", infer(shape=(99, 64), nbytes=99 * 256), grpc.StatusCode.INVALID_ARGUMENT,
         "batch size 99"),
        ("unknown input", "ModelInfer", infer(name="X"), grpc.StatusCode.INVALID_ARGUMENT, '"X"'),
        ("typed contents", "ModelInfer", infer(typed=True), grpc.StatusCode.UNIMPLEMENTED, "raw_input_contents"),
        ("not served", "ServerMetadata", pb.ServerMetadataRequest(), grpc.StatusCode.UNIMPLEMENTED, ""),
        ("metadata of unknown", "ModelMetadata", pb.ModelMetadataRequest(name="nope"), grpc.StatusCode.NOT_FOUND,
         "nope"),
    ]
    with grpc.insecure_channel(grpc_url) as ch:
        for what, method, msg, code, needle in cases:
            call = ch.unary_unary(f"/inference.GRPCInferenceService/{method}",
                                  request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=lambda b: b)
            try:
                call(msg, timeout=30)
                got, detail = grpc.StatusCode.OK, ""
            except grpc.RpcError as e:
                got, detail = e.code(), e.details() or ""
            if got != code or needle not in detail:
                raise SystemExit(f"gofront: {what}: answered {got.name} {detail!r}, expected {code.name} naming {needle!r}")
        md = pb.ModelMetadataResponse.FromString(
            ch.unary_unary("/inference.GRPCInferenceService/ModelMetadata",
                           request_serializer=lambda m: m.SerializeToString(),
                           response_deserializer=lambda b: b)(pb.ModelMetadataRequest(name="mlp"), timeout=30))
        if [(t.name, t.datatype, list(t.shape)) for t in md.inputs] != [("INPUT0", "FP32", [-1, 64])]:
            raise SystemExit(f"gofront: ModelMetadata for mlp: {md}")
    log(f"gofront: {len(cases)} bad requests refused with the right status, metadata as expected")


def check_isolation(grpc_url: str, model: str = "emb", requests: int = 64) -> None:
    """`samples.embedding` with one out-of-range token id in every 8th request, 8 in flight at once:
    the bad ones get INVALID_ARGUMENT, every good one its answer (batches ONNX Runtime refuses are
    re-run one request at a time). Raises SystemExit otherwise."""
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(grpc_url)

    def ask(i: int) -> str:
        ids = np.array([[1, 2, 3]], np.int64) + i % 5
        if i % 8 == 3:
            ids[0, 1] = 1000
        t = tc.InferInput("ids", [1, 3], "INT64")
        t.set_data_from_numpy(ids)
        try:
            got = client.infer(model, [t]).as_numpy("vectors")
            return "OK" if got is not None and got.shape == (1, 3, 4) else f"wrong shape {got}"
        except InferenceServerException as e:
            return str(e.status())

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(requests)))
    wrong = [(i, a) for i, a in enumerate(answers) if a != ("StatusCode.INVALID_ARGUMENT" if i % 8 == 3 else "OK")]
    client.close()
    if wrong:
        raise SystemExit(f"gofront: a bad token id hurt other requests or passed: {wrong[:5]}")
    log(f"gofront: {requests // 8} bad token ids refused alone, {requests - requests // 8} good requests answered")


if __name__ == "__main__":  # a quick manual run: build, start, check, stop
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " Run alone, it builds, starts, checks the "
                            "answers, refusals and isolation, and stops.").parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from grpc_path import build_repo

    root = Path(tempfile.mkdtemp(prefix="gofront-check-"))
    try:
        from modelship_server import samples

        repo, _ = build_repo(root)
        samples.write_model(repo, "emb", samples.embedding(), "max_batch_size: 8\ndynamic_batching { }\n")
        g, http_url, grpc_url = start(repo, max_batch_sizes(repo, ["mlp", "orient", "emb"]))
        try:
            t = time.monotonic()
            check_answers(grpc_url, repo, {"mlp": ("INPUT0", (64,)), "orient": ("x", (3, 224, 224))}, 1)
            check_refusals(grpc_url)
            check_isolation(grpc_url)
            check_answers(grpc_url, repo, {"mlp": ("INPUT0", (64,))}, 1)  # still serving
            log(f"checked in {time.monotonic() - t:.1f} s")
        finally:
            g.stop()
            for line in g.batching:
                log(f"gofront: {line}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
