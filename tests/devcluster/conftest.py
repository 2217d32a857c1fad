"""Fixtures of the local cluster's own tests."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from waiting import wait_for


@pytest.fixture
def namespace(cluster: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace named after the test, ready for pods (its default ServiceAccount exists)."""
    name = ("t-" + request.node.name.replace("_", "-").replace("[", "-").replace("]", "").lower()[:40]).rstrip("-")
    cluster.kubectl("create", "namespace", name)
    wait_for("the namespace's default ServiceAccount",
             lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0, 60, 0.2)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")
