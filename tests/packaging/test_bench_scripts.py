"""Every benchmark script starts: `--help` answers with its usage.

The bench scripts import their siblings and the server's modules at run time (sys.path), where
neither lint nor mypy follows them: a helper removed in one place once left four of them unable to
start (and a fifth failing at its first measurement), found only when a benchmark was due. This runs
each one's `--help` in the project's venv; imports inside functions are not covered.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Run inside the KServe and MLServer venvs by the bench scripts, not in ours.
OTHER_VENVS = {"kserve_onnx_server.py", "mlserver_onnx_runtime.py"}
SCRIPTS = sorted(p for d in ("server_image/bench", "benchmarks") for p in (REPO / d).glob("*.py")
                 if p.name not in OTHER_VENVS and not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_the_script_answers_help(script: Path) -> None:
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"{script.name} --help exited {done.returncode}:\n{done.stderr[-2000:]}"
    assert "usage:" in done.stdout, f"{script.name} --help printed no usage:\n{done.stdout[:500]}"
