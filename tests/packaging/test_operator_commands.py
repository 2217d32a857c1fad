"""The operator image's environment, as installed, starts its commands: `modelship --help` (which
imports every subcommand's module), `modelship run --help`, and `modelship render` of an example.
Reconciling on the real plane: tests/operator/test_operator_image.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _modelship(operator_env: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{operator_env / 'bin'}:/usr/bin:/bin", "HOME": str(cwd)}  # nothing of the dev venv
    return subprocess.run([str(operator_env / "bin" / "modelship"), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"]])
def test_the_operator_commands_start(operator_env: Path, args: list[str], tmp_path: Path) -> None:
    done = _modelship(operator_env, *args, cwd=tmp_path)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stdout + done.stderr


def test_render_prints_the_objects_of_an_example(operator_env: Path, tmp_path: Path) -> None:
    done = _modelship(operator_env, "render", "-f", str(REPO / "examples" / "cpu-onnxruntime.yaml"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(done.stdout) if d}
    assert {"Deployment", "Service"} <= kinds, kinds
