"""The Gateway API's standard CRDs (HTTPRoute, Gateway, ...) for the local plane, from the Go module
proxy like every other tool here: the module `sigs.k8s.io/gateway-api` at a pinned version holds
them under config/crd/standard/. Checked against the pinned module hash, cached outside the repo.

`modelship`'s canary renders an HTTPRoute where they are installed (docs/rollout.md); the tests
install them into their plane to prove the route on a real API server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from modelship.devcluster.errors import DevClusterError
from modelship.devcluster.toolchain import Progress, cache_dir

MODULE = "sigs.k8s.io/gateway-api"
VERSION = "v1.4.0"
# go.sum's h1: hash of the module zip at VERSION (`go mod download -json` prints it as "Sum").
MODULE_SUM = "h1:ZwlNM6zOHq0h3WUX2gfByPs2yAEsy/EenYJB78jpQfQ="
CRD_DIR = "config/crd/standard/"


def standard_crds(progress: Progress = print) -> list[Path]:
    """The standard channel's CRD files, downloaded once (`go mod download`) and cached."""
    folder = cache_dir() / "gateway-api" / VERSION
    files = sorted(folder.glob("*.yaml"))
    if files:
        return files
    go = shutil.which(os.environ.get("MODELSHIP_GO", "go"))
    if go is None:
        raise DevClusterError("no Go toolchain on PATH: the Gateway API CRDs come from the Go module proxy "
                              f"({MODULE}@{VERSION}). Install Go or point MODELSHIP_GO at a go binary.")
    progress(f"downloading {MODULE}@{VERSION} from the Go module proxy (its CRDs) ...")
    with tempfile.TemporaryDirectory() as scratch:  # outside any module, so no go.mod is read or written
        result = subprocess.run([go, "mod", "download", "-json", f"{MODULE}@{VERSION}"], cwd=scratch,
                                capture_output=True, text=True, timeout=600,
                                env={**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"})
    if result.returncode != 0:
        raise DevClusterError(f"go mod download {MODULE}@{VERSION} failed: {result.stderr.strip() or result.stdout}")
    info = json.loads(result.stdout)
    if info.get("Sum") != MODULE_SUM:
        raise DevClusterError(f"{MODULE}@{VERSION}: module hash {info.get('Sum')!r}, expected {MODULE_SUM!r}")
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    prefix = f"{MODULE}@{VERSION}/{CRD_DIR}"
    with zipfile.ZipFile(info["Zip"]) as archive:
        for entry in archive.namelist():
            if entry.startswith(prefix) and entry.endswith(".yaml") and "/" not in entry[len(prefix):]:
                (staging / entry[len(prefix):]).write_bytes(archive.read(entry))
    if not any(staging.glob("*httproutes.yaml")):
        raise DevClusterError(f"{MODULE}@{VERSION} holds no {CRD_DIR}*httproutes.yaml")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return sorted(folder.glob("*.yaml"))
