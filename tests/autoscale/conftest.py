"""Fixtures of the autoscaler tests: a real modelship-server (tests/server's factory) and a
real Prometheus server (Debian's `prometheus` package), each stopped by the PID we started."""

from __future__ import annotations

import pathlib
import sys

import pytest

TESTS = pathlib.Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from server.conftest import _server_factory  # noqa: E402  (the one server factory, reused)


@pytest.fixture(scope="module")
def module_server_factory(tmp_path_factory: pytest.TempPathFactory):
    """Start real modelship-server processes; all are stopped when the module ends."""
    yield from _server_factory(tmp_path_factory)


@pytest.fixture(scope="module")
def kube(cluster):
    """The operator's KubeClient on the session's control plane, with the ModelService CRD."""
    import kubernetes

    from modelship.kube.client import KubeClient

    cluster.kubectl("apply", "--server-side", "-f", str(TESTS.parent / "crds"))
    cluster.wait_established("modelservices.modelship.dev")
    client = KubeClient(kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig)))
    try:
        yield client
    finally:
        client.close()
