"""A load generator for Open Inference Protocol servers, in the spirit of Triton's perf_analyzer.

It drives any KServe v2 server (ours, Triton, KServe, MLServer) with the unmodified
tritonclient over HTTP or gRPC, sweeps a range of concurrencies (each level is
that many closed-loop clients, each sending its next request when the previous
answer arrives), and reports throughput and p50/p90/p95/p99 latency per level,
as a table, CSV or JSON. `modelship bench` calls main() here.

    python -m modelship_server.bench -m mlp -u localhost:8001 -i grpc --concurrency-range 1:16:x2
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from modelship_server import feeds
from modelship_server.feeds import InputHint, InputSpec, shape_text

DEFAULT_URLS = {"http": "localhost:8000", "grpc": "localhost:8001"}


@dataclasses.dataclass
class LevelResult:
    """What one concurrency level measured."""

    concurrency: int
    protocol: str
    batch_size: int
    requests: int
    errors: int
    duration_s: float
    throughput_infer_s: float  # samples per second (requests x batch size)
    throughput_req_s: float
    latency_avg_ms: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    first_error: str = ""


def percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


class _Target:
    """The model's inputs, resolved once from its metadata, and a client factory."""

    def __init__(self, url: str, protocol: str, model: str, version: str, batch_size: int,
                 shapes: dict[str, list[int]], data: str, binary: bool, metadata: dict | None = None,
                 *, hints: Sequence[InputHint] = (), feed: dict[str, np.ndarray] | None = None,
                 dataset: Path | None = None) -> None:
        """`feed`: the exact request to send; else the first sample(s) of `dataset`; else data
        generated in the shapes of `shapes` (without the batch axis) or `hints` (with it)."""
        self.url, self.protocol, self.model, self.version = url, protocol, model, version
        self.batch_size = batch_size
        self.binary = binary
        if protocol == "grpc":
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
        self.mod = mod
        md = metadata
        if md is None:
            client = self.client()
            try:
                md = client.get_model_metadata(model, version)
                md = md if isinstance(md, dict) else _grpc_md_to_dict(md)
            finally:
                client.close()
        if not md.get("inputs"):
            raise SystemExit(
                f"bench: the server's metadata for model {model!r} lists no inputs; "
                "this tool needs them to build requests"
            )
        batching = self._batches(md)
        specs = _specs(md, batching)
        if feed is None and dataset is not None:
            feed = _dataset_request(dataset, specs, batch_size if batching else 1)
        if feed is not None:
            missing = sorted({s.name for s in specs} - feed.keys())
            if missing:
                raise SystemExit(f"bench: the request has no data for input(s) {missing} of model {model!r}")
            self.arrays = {s.name: feed[s.name] for s in specs}
        else:
            self.arrays = _generate(specs, hints, shapes, batch_size if batching else None, data)
        self.datatypes = {t["name"]: t["datatype"] for t in md["inputs"]}
        self.outputs = [t["name"] for t in md["outputs"]]

    @staticmethod
    def _batches(md: dict) -> bool:
        return all(len(t["shape"]) > 0 and t["shape"][0] == -1 for t in md["inputs"])

    def client(self):
        if self.protocol == "grpc":
            return self.mod.InferenceServerClient(self.url)
        return self.mod.InferenceServerClient(self.url, connection_timeout=60, network_timeout=120)

    def inputs(self):
        out = []
        for name, arr in self.arrays.items():
            i = self.mod.InferInput(name, list(arr.shape), self.datatypes[name])
            if self.protocol == "http":
                i.set_data_from_numpy(arr, binary_data=self.binary)
            else:
                i.set_data_from_numpy(arr)
            out.append(i)
        return out

    def requested_outputs(self):
        if self.protocol == "http":
            return [self.mod.InferRequestedOutput(n, binary_data=self.binary) for n in self.outputs]
        return None


def _grpc_md_to_dict(md) -> dict:
    return {
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in md.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in md.outputs],
    }


def _specs(md: dict, batching: bool) -> list[InputSpec]:
    """The model's inputs as the feeds module sees them: whole shapes, None where free."""
    from tritonclient.utils import triton_to_np_dtype

    specs = []
    for t in md["inputs"]:
        dtype = np.dtype(object) if t["datatype"] == "BYTES" else np.dtype(triton_to_np_dtype(t["datatype"]))
        dims = [None if d < 0 else d for d in t["shape"]]
        specs.append(InputSpec(t["name"], dtype, tuple(dims if not batching else [None] + dims[1:])))
    return specs


def _generate(specs: list[InputSpec], hints: Sequence[InputHint], shapes: dict[str, list[int]],
              batch: int | None, kind: str) -> dict[str, np.ndarray]:
    """One request: --shape (without the batch axis) wins, then the declared inputs; a free
    dimension nobody gave is an error naming both ways, never a silent 1."""
    by_name = {h.name: h for h in hints}
    resolved = []
    for spec in specs:
        hint = by_name.get(spec.name)
        if spec.name in shapes:
            whole = ([1] if batch is not None else []) + list(shapes[spec.name])
            hint = dataclasses.replace(hint, shape=tuple(whole)) if hint else InputHint(spec.name, tuple(whole))
        rest = spec.shape[1:] if batch is not None else spec.shape
        if (hint is None or hint.typical() is None) and any(d is None for d in rest):
            dims = ",".join("4" if d is None else str(d) for d in rest)
            raise SystemExit(
                f"bench: input {spec.name} has variable dims {shape_text(spec.shape)}; give them with "
                f"--shape {spec.name}:{dims} (without the batch axis) or --inputs "
                f"'[{{\"name\": \"{spec.name}\", \"shape\": [...]}}]' (the whole shape)"
            )
        declared = hint.typical() if hint is not None else None
        if declared is not None and len(declared) != len(spec.shape):
            raise SystemExit(f"bench: input {spec.name}: expected {len(spec.shape)} dimensions like the model's "
                             f"{shape_text(spec.shape)}, got {list(declared)}")
        if hint is not None:
            resolved.append(hint)
    feed = feeds.generate(specs, resolved, 1, seed=0, batch=batch, zeros=kind == "zero")[0]
    for spec in specs:  # strings: a fixed word, not the empty string
        if spec.dtype.kind == "O" and spec.name not in {h.name for h in resolved if h.value is not None}:
            feed[spec.name] = np.full(feed[spec.name].shape, b"modelship", dtype=object)
    return feed


def _dataset_request(path: Path, specs: list[InputSpec], batch: int) -> dict[str, np.ndarray]:
    """The first `batch` samples of a dataset (either layout), as one request."""
    from modelship_server.optimize.inputs import DatasetError, load_dataset

    try:
        samples = load_dataset(path, specs)
    except DatasetError as exc:
        raise SystemExit(f"bench: {exc}") from None
    chosen = [samples[i % len(samples)] for i in range(batch)]
    if batch == 1:
        return chosen[0]
    return {name: np.concatenate([s[name] for s in chosen], axis=0) for name in chosen[0]}


# How far past its end a window may stretch to hold --measurement-request-count requests: a dead
# server ends the level instead of hanging it.
MAX_EXTENSION_S = 60.0


class _Window:
    """The measurement window, shared by a level's clients: it opens after the warm-up and closes at
    its end, or later, when `min_requests` have not been counted by then (perf_analyzer's
    count_windows). A request counts when it started after the warm-up and ended inside the window."""

    def __init__(self, begin: float, measure_s: float, min_requests: int) -> None:
        self.begin, self.end = begin, begin + measure_s
        self.min_requests = min_requests
        self.counted = 0
        self.last = self.end

    def open(self, now: float) -> bool:
        """May a client start another request at `now`?"""
        if now >= self.end + MAX_EXTENSION_S:
            return False
        return now < self.end or self.counted < self.min_requests

    def count(self, t0: float, t1: float) -> bool:
        """Does a request sent at `t0` and done at `t1` (the window's clock) count? Counts it if so."""
        if t0 < self.begin or not (t1 <= self.end or self.counted < self.min_requests):
            return False
        self.counted += 1
        self.last = max(self.last, t1)
        return True

    @property
    def seconds(self) -> float:
        return self.last - self.begin


def run_level(target: _Target, concurrency: int, *, warmup_s: float, measure_s: float,
              min_requests: int = 0) -> LevelResult:
    """Run `concurrency` closed-loop clients; measure what completes inside the window (stretched
    until it holds `min_requests`, see _Window)."""
    start = threading.Barrier(concurrency + 1)
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    first_error = [""]
    window = _Window(0.0, measure_s, min_requests)

    def worker():
        client = target.client()
        inputs = target.inputs()
        outputs = target.requested_outputs()
        mine: list[float] = []
        errs = 0
        try:
            start.wait()
            while True:
                t0 = time.perf_counter()
                with lock:
                    if not window.open(t0):
                        break
                try:
                    client.infer(target.model, inputs, model_version=target.version, outputs=outputs)
                    ok = True
                except Exception as exc:  # noqa: BLE001 - counted and reported, not fatal
                    ok = False
                    if not first_error[0]:
                        first_error[0] = str(exc)[:300]
                t1 = time.perf_counter()
                with lock:
                    counted = window.count(t0, t1)
                if counted:
                    if ok:
                        mine.append(t1 - t0)
                    else:
                        errs += 1
        finally:
            client.close()
            with lock:
                latencies.extend(mine)
                errors[0] += errs

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    window.begin = time.perf_counter() + warmup_s
    window.end = window.last = window.begin + measure_s
    start.wait()
    for t in threads:
        t.join()
    lat = np.array(latencies) * 1000.0
    n = len(lat)
    seconds = window.seconds
    return LevelResult(
        concurrency=concurrency, protocol=target.protocol, batch_size=target.batch_size,
        requests=n, errors=errors[0], duration_s=seconds,
        throughput_infer_s=n * target.batch_size / seconds, throughput_req_s=n / seconds,
        latency_avg_ms=float(lat.mean()) if n else float("nan"),
        latency_p50_ms=percentile(lat, 50), latency_p90_ms=percentile(lat, 90),
        latency_p95_ms=percentile(lat, 95), latency_p99_ms=percentile(lat, 99),
        first_error=first_error[0],
    )


def run_level_async(target: _Target, concurrency: int, *, warmup_s: float, measure_s: float,
                    min_requests: int = 0) -> LevelResult:
    """Like run_level, but the clients are asyncio tasks on one event loop (tritonclient's aio
    clients), as perf_analyzer's --async: far less client CPU per request than N threads
    contending for the GIL, which matters when client and server share a few cores."""
    import asyncio

    if target.protocol == "grpc":
        import tritonclient.grpc.aio as aio
    else:
        import tritonclient.http.aio as aio

    async def main():
        latencies: list[float] = []
        errors = [0]
        first_error = [""]
        clients = [aio.InferenceServerClient(target.url) for _ in range(concurrency)]
        mod = target.mod
        loop = asyncio.get_running_loop()
        window = _Window(loop.time() + warmup_s, measure_s, min_requests)

        async def worker(client):
            inputs = target.inputs()
            outputs = target.requested_outputs()
            perf = time.perf_counter
            while True:
                now = loop.time()
                if not window.open(now):
                    return
                t0 = perf()
                try:
                    await client.infer(target.model, inputs, model_version=target.version, outputs=outputs)
                    ok = True
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    ok = False
                    if not first_error[0]:
                        first_error[0] = str(exc)[:300]
                t1 = perf()
                if window.count(now, loop.time()):
                    if ok:
                        latencies.append(t1 - t0)
                    else:
                        errors[0] += 1

        del mod
        try:
            await asyncio.gather(*(worker(c) for c in clients))
        finally:
            for c in clients:
                await c.close()
        return latencies, errors[0], first_error[0], window.seconds

    try:
        import uvloop

        latencies, errors, first_error, seconds = uvloop.run(main())
    except ImportError:  # pragma: no cover
        latencies, errors, first_error, seconds = asyncio.run(main())
    lat = np.array(latencies) * 1000.0
    n = len(lat)
    return LevelResult(
        concurrency=concurrency, protocol=target.protocol, batch_size=target.batch_size,
        requests=n, errors=errors, duration_s=seconds,
        throughput_infer_s=n * target.batch_size / seconds, throughput_req_s=n / seconds,
        latency_avg_ms=float(lat.mean()) if n else float("nan"),
        latency_p50_ms=percentile(lat, 50), latency_p90_ms=percentile(lat, 90),
        latency_p95_ms=percentile(lat, 95), latency_p99_ms=percentile(lat, 99),
        first_error=first_error,
    )


def concurrency_levels(spec: str) -> list[int]:
    """'4' -> [4]; '1,4,16' -> list; 'start:end[:step]' linear, or with 'xN' a geometric step."""
    spec = spec.strip()
    if ":" in spec:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise argparse.ArgumentTypeError(f"expected start:end[:step], got {spec!r}")
        try:
            lo, hi = int(parts[0]), int(parts[1])
            step = parts[2] if len(parts) == 3 else "1"
            geometric = step.startswith("x")
            k = int(step[1:] if geometric else step)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected integers in {spec!r}, e.g. 1:16 or 1:16:x2") from None
        if lo < 1 or hi < lo or k < 1 or (geometric and k < 2):
            raise argparse.ArgumentTypeError(f"bad range {spec!r}: need 1 <= start <= end and a positive step")
        levels, c = [], lo
        while c <= hi:
            levels.append(c)
            c = c * k if geometric else c + k
        return levels
    try:
        levels = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, a list (1,4,16) or a range (1:16:x2), got {spec!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"concurrency must be >= 1, got {spec!r}")
    return levels


def _shape(value: str) -> tuple[str, list[int]]:
    name, sep, dims = value.rpartition(":")
    try:
        parsed = [int(d) for d in dims.split(",")]
    except ValueError:
        parsed = None
    if not sep or not name or not parsed or min(parsed) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME:d1,d2,... with positive dims, got {value!r}")
    return name, parsed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelship bench",
        description="Measure throughput and latency of a model on any KServe v2 / Open Inference "
                    "Protocol server (modelship-server, Triton, KServe, MLServer) with tritonclient, "
                    "over HTTP or gRPC, at one or more concurrency levels.",
        epilog="examples:\n"
               "  modelship bench -m mlp                                  # gRPC on localhost:8001, concurrency 1\n"
               "  modelship bench -m mlp -i http -u localhost:8000 --concurrency-range 1:16:x2\n"
               "  modelship bench -m resnet --shape input:3,224,224 -b 4 -f results.csv\n"
               "  modelship bench -m mlp --concurrency-range 1,8,16 --output-format json -f out.json\n\n"
               "Each level runs N closed-loop clients for --warmup-interval, then measures for\n"
               "--measurement-interval; latency is the client-side round trip of one request.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-m", "--model-name", required=True, help="model to load-test")
    p.add_argument("-x", "--model-version", default="", help="model version (default: the server's choice)")
    p.add_argument("-u", "--url", help="server host:port (default localhost:8001 for gRPC, localhost:8000 for HTTP)")
    p.add_argument("-i", "--protocol", choices=["grpc", "http"], default="grpc", help="protocol (default grpc)")
    p.add_argument("-b", "--batch-size", type=int, default=1, help="samples per request (default 1)")
    p.add_argument("--concurrency-range", type=concurrency_levels, default=[1], metavar="SPEC",
                   help="concurrency levels: 8, or 1,4,16, or start:end[:step] with step N or xN "
                        "(1:16:x2 = 1,2,4,8,16) (default 1)")
    p.add_argument("--measurement-interval", type=float, default=5000, metavar="MS",
                   help="measurement window per level in milliseconds (default 5000)")
    p.add_argument("--measurement-request-count", type=int, default=0, metavar="N",
                   help="stretch a window that holds fewer than N requests at its end until it holds N "
                        f"(at most {MAX_EXTENSION_S:.0f} s longer), as perf_analyzer's count_windows; "
                        "throughput is over the window's real length (default 0: time only)")
    p.add_argument("--warmup-interval", type=float, default=1000, metavar="MS",
                   help="unmeasured warm-up per level in milliseconds (default 1000)")
    p.add_argument("--shape", type=_shape, action="append", default=[], metavar="NAME:DIMS",
                   help="shape of an input with variable dims, without the batch dim, e.g. image:3,224,224")
    p.add_argument("--inputs", metavar="JSON", default=None,
                   help="declared inputs, as a ModelService's spec.model.inputs in JSON: whole shapes (batch axis "
                        "included, as 1) and values, e.g. '[{\"name\": \"x\", \"shape\": [1, 3, 48, 160]}, "
                        "{\"name\": \"sr\", \"value\": 16000}]'")
    p.add_argument("--dataset", type=Path, default=None, metavar="FILE.npz",
                   help="send the first sample(s) of this .npz (batch-first or stacked feeds, as "
                        "`modelship optimize --dataset` reads it) instead of generated data")
    p.add_argument("--input-data", choices=["random", "zero"], default="random", help="input values (default random)")
    p.add_argument("--async", dest="use_async", action="store_true",
                   help="run the clients as asyncio tasks on one thread (tritonclient's aio clients) instead "
                        "of one thread each: less client CPU per request, as perf_analyzer's --async")
    p.add_argument("--http-json", action="store_true",
                   help="HTTP only: send and receive tensors as JSON instead of Triton's binary extension")
    p.add_argument("--output-format", choices=["table", "csv", "json"], default="table",
                   help="format of the results on stdout or in -f (default table)")
    p.add_argument("-f", "--output-file", help="also write the results to this file (csv or json by --output-format, or by extension)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return p


def format_results(results: list[LevelResult], fmt: str) -> str:
    rows = [dataclasses.asdict(r) for r in results]
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [f.name for f in dataclasses.fields(LevelResult)])
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    head = f"{'concurrency':>11} {'infer/s':>10} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'avg ms':>8} {'errors':>6}"
    lines = [head]
    for r in results:
        lines.append(
            f"{r.concurrency:>11} {r.throughput_infer_s:>10.1f} {r.throughput_req_s:>9.1f} {r.latency_p50_ms:>8.3f} "
            f"{r.latency_p90_ms:>8.3f} {r.latency_p99_ms:>8.3f} {r.latency_avg_ms:>8.3f} {r.errors:>6}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.measurement_interval <= 0:
        parser.error("--measurement-interval must be > 0 milliseconds")
    if args.measurement_request_count < 0:
        parser.error(f"--measurement-request-count must be >= 0, got {args.measurement_request_count}")
    url = args.url or DEFAULT_URLS[args.protocol]
    if "://" in url:
        parser.error(f"--url takes host:port without a scheme, got {url!r}")
    fmt = args.output_format
    if args.output_file and fmt == "table":
        fmt_file = "json" if args.output_file.endswith(".json") else "csv"
    else:
        fmt_file = fmt
    progress: Callable[[str], None] = (lambda _: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        from modelship_server.feeds import InputsError, parse_hints

        try:
            hints = parse_hints(args.inputs, where="--inputs")
        except InputsError as exc:
            raise SystemExit(f"bench: {exc}") from None
        target = _Target(url, args.protocol, args.model_name, args.model_version, args.batch_size,
                         dict(args.shape), args.input_data, not args.http_json, hints=hints, dataset=args.dataset)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the server is unreachable or the model unknown
        print(f"bench: cannot read metadata of model {args.model_name!r} from {args.protocol}://{url}: {exc}\n"
              f"Is the server running there, and does it serve this model?", file=sys.stderr)
        return 2
    results = []
    for c in args.concurrency_range:
        progress(f"concurrency {c}: warming up {args.warmup_interval:.0f} ms, measuring {args.measurement_interval:.0f} ms ...")
        runner = run_level_async if args.use_async else run_level
        r = runner(target, c, warmup_s=args.warmup_interval / 1000, measure_s=args.measurement_interval / 1000,
                   min_requests=args.measurement_request_count)
        results.append(r)
        progress(
            f"concurrency {c}: {r.requests} requests, {r.throughput_infer_s:.1f} infer/s, "
            f"p50 {r.latency_p50_ms:.3f} ms, p90 {r.latency_p90_ms:.3f} ms, p99 {r.latency_p99_ms:.3f} ms, "
            f"{r.errors} errors" + (f" (first: {r.first_error})" if r.first_error else "")
        )
    sys.stdout.write(format_results(results, fmt))
    if args.output_file:
        with open(args.output_file, "w") as fh:
            fh.write(format_results(results, fmt_file))
    return 1 if any(r.errors and not r.requests for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
