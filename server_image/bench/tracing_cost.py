"""What tracing costs a request: p50 at batch 1 with tracing off, on but unsampled, and on and sampled.

    .venv/bin/python server_image/bench/tracing_cost.py [--rounds 6] [--seconds 2] \
        [--json docs/benchmarks/tracing-cost.json]

Three modelship-server processes serve the same small MLP (samples.mlp, the `mlp` model of
compare.py): tracing off; `mode=opentelemetry ratio=0` (every request goes through the
sampling decision and is dropped); `mode=opentelemetry ratio=1` (every request records its
spans and exports them). The sampled server exports by OTLP/gRPC to a real receiver in this
process (tests/server/otlp_receiver.py), which counts the spans; a fourth samples at ratio 0.1,
whose cost shows in the mean rather than the p50. One tritonclient client per
protocol calls each server in turn, in `--rounds` interleaved rounds of `--seconds`, so drift
on a shared machine lands on all three alike; the p50 of each server is the median of its
rounds' p50s, and the added cost is that minus the off server's.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests" / "server"))

from compare import CONFIGS, Proc, log  # noqa: E402
from modelship_server.readiness import free_ports  # noqa: E402
from modelship_server import samples  # noqa: E402
from otlp_receiver import GrpcReceiver  # noqa: E402

MODES = {
    "off": [],
    "on-unsampled": ["--trace-config", "mode=opentelemetry", "--trace-config", "ratio=0"],
    "on-ratio-0.1": ["--trace-config", "mode=opentelemetry", "--trace-config", "ratio=0.1",
                     "--trace-config", "opentelemetry,bsp_schedule_delay=200"],
    "on-sampled": ["--trace-config", "mode=opentelemetry", "--trace-config", "ratio=1",
                   "--trace-config", "opentelemetry,bsp_schedule_delay=200"],
}


def start(repo: Path, name: str, extra: list[str]) -> tuple[Proc, str, str]:
    hp, gp, mp = free_ports(3)
    p = Proc(name, [sys.executable, "-m", "modelship_server", "--model-repository", str(repo),
                    "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
                    "--http-port", str(hp), "--grpc-port", str(gp), "--metrics-port", str(mp),
                    "--log-level", "warning", *extra])
    p.wait_ready(f"127.0.0.1:{hp}", "mlp")
    return p, f"127.0.0.1:{hp}", f"127.0.0.1:{gp}"


def client_for(protocol: str, url: str):
    if protocol == "grpc":
        import tritonclient.grpc as mod
    else:
        import tritonclient.http as mod
    client = mod.InferenceServerClient(url)
    x = np.random.default_rng(0).random((1, 64), np.float32)
    inp = mod.InferInput("INPUT0", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    return client, [inp]


def p50_for(client, inputs, seconds: float) -> tuple[float, float]:
    """(p50, mean) in microseconds: a 10 % sample hides below the p50, not in the mean."""
    ts = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        client.infer("mlp", inputs)
        ts.append(time.perf_counter() - t)
    return float(np.percentile(ts, 50) * 1e6), float(np.mean(ts) * 1e6)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=2.0, help="length of one measurement (default 2)")
    ap.add_argument("--json", type=Path, default=None, help="write the results there")
    args = ap.parse_args(argv)

    receiver = GrpcReceiver()
    procs: list[Proc] = []
    try:
        root = Path(tempfile.mkdtemp(prefix="tracing-cost-"))
        repo = root / "repo"
        samples.write_model(repo, "mlp", samples.mlp(), CONFIGS["mlp"])
        urls = {}
        for mode, extra in MODES.items():
            if mode != "off":
                extra = [*extra, "--trace-config", f"opentelemetry,url={receiver.endpoint}"]
            log(f"starting the server with tracing {mode}")
            p, http_url, grpc_url = start(repo, f"modelship-{mode}", extra)
            procs.append(p)
            urls[mode] = {"http": http_url, "grpc": grpc_url}
        results: dict = {}
        for protocol in ("grpc", "http"):
            clients = {mode: client_for(protocol, urls[mode][protocol]) for mode in MODES}
            for mode, (client, inputs) in clients.items():  # warm-up
                p50_for(client, inputs, 0.5)
            rounds: dict[str, list[float]] = {mode: [] for mode in MODES}
            means: dict[str, list[float]] = {mode: [] for mode in MODES}
            for r in range(args.rounds):
                for mode, (client, inputs) in clients.items():
                    p50, mean = p50_for(client, inputs, args.seconds)
                    rounds[mode].append(p50)
                    means[mode].append(mean)
                log(f"  {protocol} round {r + 1}: " + "  ".join(f"{m} {v[-1]:.1f} us" for m, v in rounds.items()))
            for client, _ in clients.values():
                client.close()
            med = {mode: float(np.median(v)) for mode, v in rounds.items()}
            mean = {mode: float(np.median(v)) for mode, v in means.items()}
            results[protocol] = {
                "p50_us": med,
                "added_us": {mode: med[mode] - med["off"] for mode in MODES if mode != "off"},
                "mean_us": mean,
                "added_mean_us": {mode: mean[mode] - mean["off"] for mode in MODES if mode != "off"},
                "rounds_p50_us": rounds,
            }
        time.sleep(1.0)  # the sampled server's last batch of spans
        results["spans_received"] = len(receiver.spans())
        results["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                              "note": "loaded shared 2-core machine"}
        results["command"] = "python server_image/bench/tracing_cost.py " + " ".join(argv or sys.argv[1:])
        for protocol in ("grpc", "http"):
            r = results[protocol]
            log(f"{protocol}: p50 off {r['p50_us']['off']:.1f} us; added p50 / mean: " + ", ".join(
                f"{m} {r['added_us'][m]:+.1f} / {r['added_mean_us'][m]:+.1f} us" for m in r["added_us"]))
        log(f"spans received by the OTLP receiver: {results['spans_received']}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    finally:
        for p in procs:
            p.stop()
        receiver.stop()


if __name__ == "__main__":
    sys.exit(main())
