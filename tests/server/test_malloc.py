"""The server's malloc settings: a request body under 1 MiB reuses freed heap instead of faulting
fresh pages in, and a body of 1 MiB or more is still unmapped when freed. Counted in page faults
and resident memory (getrusage, /proc), never in time; each case runs in its own interpreter so
the settings do not leak into the test process."""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SERVER_IMAGE = Path(__file__).resolve().parents[2] / "server_image"

pytestmark = pytest.mark.skipif(sys.platform != "linux" or not ctypes.util.find_library("c"),
                                reason="glibc's mallopt only")

PROBE = """
import ctypes, ctypes.util, json, resource, sys
from modelship_server import malloc
if sys.argv[1] == "tune":
    applied = malloc.tune()
else:  # what the server did before: the mmap threshold pinned, the trim threshold left at its default
    applied = bool(ctypes.CDLL(ctypes.util.find_library("c")).mallopt(malloc.M_MMAP_THRESHOLD, malloc.MMAP_THRESHOLD))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
small = [bytearray(100) for _ in range(10)]  # small objects around the bodies, as in a server
for _ in range(5):
    b = bytearray(602112); del b
f0 = faults()
for _ in range(200):  # one 224x224x3 float32 image body per request
    b = bytearray(602112); b[-1] = 1; del b
per_body = (faults() - f0) / 200
r0 = rss()
big = bytearray(16 << 20); big[::4096] = b"x" * len(big[::4096])
held = rss() - r0
del big
print(json.dumps({"applied": applied, "faults_per_body": per_body, "big_held": held, "big_left": rss() - r0}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SERVER_IMAGE)}, timeout=60)
    return json.loads(out.stdout)


def test_a_body_under_1_mib_reuses_the_heap_and_one_over_it_is_returned() -> None:
    before, tuned = _probe("pin-only"), _probe("tune")
    assert before["applied"] and tuned["applied"]
    # The probe sees the problem it guards against: with only the mmap threshold pinned, every
    # freed body was trimmed and the next one faulted its ~147 pages in again.
    assert before["faults_per_body"] > 50, before
    assert tuned["faults_per_body"] < 5, tuned
    # 16 MiB is above the mmap threshold: resident while held, returned when freed.
    assert tuned["big_held"] >= 15 << 20, tuned
    assert tuned["big_left"] < 1 << 20, tuned
