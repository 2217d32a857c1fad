"""The operator image's environment, as installed (requirements/operator.txt, then the wheel with
--no-deps; modelship.devcluster.imageenv), runs `modelship run` against the real local plane
with the chart's ServiceAccount and reconciles an example ModelService to Ready."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from kube_helpers import apply, children, condition, get, is_ready, wait_for
from modelship.devcluster import imageenv
from msvc_samples import example

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def image_operator(operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`modelship run` from the operator image's venv, as the image's ENTRYPOINT/CMD start it; its log."""
    venv = imageenv.ensure(imageenv.OPERATOR)
    folder = tmp_path_factory.mktemp("operator-image")
    log = folder / "operator.log"
    # Only what the image's pod would have: no development venv on PATH, no PYTHONPATH.
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(folder), "KUBECONFIG": str(operator_kubeconfig),
           "LANG": os.environ.get("LANG", "C.UTF-8")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(venv / "bin" / "modelship"), "run", "--liveness", "off", "--resync-seconds", "30"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
    try:
        yield log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        print(log.read_text()[-4000:])


def test_the_operator_image_reconciles_an_example_to_ready(cluster: Any, image_operator: Path, namespace: str) -> None:
    manifest = example("cpu-onnxruntime.yaml")
    name = manifest["metadata"]["name"]
    apply(cluster, manifest, namespace)
    msvc = wait_for(lambda: (m := get(cluster, "msvc", "-n", namespace, name)) and is_ready(m) and m,
                    timeout=120, what=f"{name} Ready, reconciled by the operator image's venv")
    assert condition(msvc, "Ready")["status"] == "True"
    owned = children(cluster, namespace, name)
    assert len(owned["deployments"]) == 1 and len(owned["services"]) == 1, owned
    log = image_operator.read_text()
    assert "Traceback" not in log and "ModuleNotFoundError" not in log, log[-4000:]
