"""Benchmark of the local control plane: warm start-to-ready time and memory of the running plane.

    .venv/bin/python benchmarks/dev_cluster.py --runs 5

Each run starts a fresh plane in a temporary state directory (binaries already built), times
`up` until nodes are Ready and the default ServiceAccount exists, lets it settle, reads each
component's resident memory from /proc, and stops it. Prints a Markdown table for docs/.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from modelship.devcluster.plane import ControlPlane
from modelship.devcluster.toolchain import ensure_binaries


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="number of start/stop cycles (default 5)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds idle before reading memory")
    args = parser.parse_args()
    binaries = ensure_binaries()
    startups: list[float] = []
    memory: dict[str, list[float]] = {}
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="msbench-") as state:
            plane = ControlPlane(Path(state), binaries, progress=lambda _: None)
            started = time.monotonic()
            try:
                plane.up()
                startups.append(time.monotonic() - started)
                time.sleep(args.settle)
                for record in plane.running():
                    memory.setdefault(record.name, []).append(rss_mib(record.pid))
            finally:
                plane.down(quiet=True)
        print(f"run {run}/{args.runs}: ready in {startups[-1]:.2f}s", flush=True)
    print()
    print(f"| warm start to ready (n={len(startups)}) | median {statistics.median(startups):.2f} s "
          f"| min {min(startups):.2f} s | max {max(startups):.2f} s |")
    print()
    print("| component | RSS after ready + settle (median MiB) |")
    print("| --- | ---: |")
    for name, values in memory.items():
        print(f"| {name} | {statistics.median(values):.0f} |")
    total = sum(statistics.median(v) for v in memory.values())
    print(f"| **total** | **{total:.0f}** |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
