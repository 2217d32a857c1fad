"""The artifact as installed: each image's environment, built from its lock and modelship's wheel
(modelship.devcluster.imageenv, cached under ~/.cache/modelship/image-envs), shared by the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelship.devcluster import imageenv


@pytest.fixture(scope="session")
def server_env() -> Path:
    return imageenv.ensure(imageenv.SERVER)


@pytest.fixture(scope="session")
def operator_env() -> Path:
    return imageenv.ensure(imageenv.OPERATOR)
