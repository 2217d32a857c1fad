"""The server's gRPC core experiments: set before grpc is first imported, and an operator's own
GRPC_EXPERIMENTS (even empty) left alone. Each case runs in a fresh interpreter, since gRPC core
reads the variable once per process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Records GRPC_EXPERIMENTS as it is when anything first imports grpc, then imports the CLI.
PROBE = r"""
import importlib.abc, os, sys
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "grpc" and not seen:
            seen.append(os.environ.get("GRPC_EXPERIMENTS"))
        return None
sys.meta_path.insert(0, Watch())
import modelship_server.cli  # noqa: F401
import grpc  # noqa: F401 - in case nothing above did
print(repr(seen[0]))
"""


def _first_import_sees(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    env["PYTHONPATH"] = str(ROOT / "server_image")
    if env_value is not None:
        env["GRPC_EXPERIMENTS"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_grpc_sees_the_servers_experiments_from_its_first_import():
    from modelship_server.grpc_env import GRPC_EXPERIMENTS

    assert _first_import_sees(None) == repr(GRPC_EXPERIMENTS)


def test_an_operators_grpc_experiments_win_even_empty():
    assert _first_import_sees("-event_engine_client") == repr("-event_engine_client")
    assert _first_import_sees("") == repr("")
