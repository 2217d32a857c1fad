"""GitOps health of a ModelService: Argo CD's Lua check and kstatus (Flux), on real status objects.

Every status here comes from the operator's own status computation (`compute_status`, the
code that writes status in a cluster) fed with Deployments and pods in the states a cluster
shows. The Argo CD check is the Lua file the chart ships, run by a real Lua 5.4 (lupa), the
way Argo CD runs it: a global `obj`, a returned table with `status` and `message`.

kstatus (sigs.k8s.io/cli-utils/pkg/kstatus, what Flux's health checks use) is run for real:
hack/tools/kstatus is a small Go command around `status.Compute`, built once into the cache
(skipped, with the reason, where there is no Go toolchain). Its rules for a custom resource are
also written out below (`kstatus`), so each row states what it expects and why:
deletionTimestamp -> Terminating; status.observedGeneration present and not metadata.generation
-> InProgress; a Reconciling=True condition -> InProgress; a Stalled=True condition -> Failed;
anything else -> Current (kstatus does not read Ready).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from lupa import LuaRuntime

from modelship.api.v1alpha1 import ModelService
from modelship.status.compute import Observed, compute_status
from modelship.status.optimization import Wait
from msvc_samples import body
from pods import deployment, pod, unschedulable, waiting

REPO = Path(__file__).resolve().parents[2]
LUA = REPO / "charts" / "modelship" / "gitops" / "argocd-health.lua"
T0 = "2024-05-01T10:00:00Z"


def argocd_health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(LUA.read_text())
    return hs["status"], hs["message"]


def kstatus(obj: dict[str, Any]) -> str:
    """kstatus's Compute for a kind it has no built-in rules for (see the module docstring)."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating"
    if "generation" in meta and "observedGeneration" in status and status["observedGeneration"] != meta["generation"]:
        return "InProgress"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Reconciling" and condition.get("status") == "True":
            return "InProgress"
        if condition.get("type") == "Stalled" and condition.get("status") == "True":
            return "Failed"
    return "Current"


def real_kstatus(objects: list[dict[str, Any]]) -> list[str]:
    """kstatus's verdicts from the library itself (hack/tools/kstatus), built once and cached."""
    module = REPO / "hack" / "tools" / "kstatus"
    go = shutil.which(os.environ.get("MODELSHIP_GO", "go"))
    digest = hashlib.sha256(b"".join((module / f).read_bytes() for f in ("go.mod", "go.sum", "main.go"))).hexdigest()[:10]
    cache = Path(os.environ.get("MODELSHIP_CACHE_DIR", Path.home() / ".cache" / "modelship"))
    binary = cache / "bin" / f"kstatus-{digest}" / "kstatus"
    if not binary.is_file():
        if go is None:
            pytest.skip("no Go toolchain to build hack/tools/kstatus (the real kstatus library); set MODELSHIP_GO")
        binary.parent.mkdir(parents=True, exist_ok=True)
        partial = binary.with_name("kstatus.partial")
        build = subprocess.run([go, "build", "-trimpath", "-o", str(partial), "."], cwd=module, capture_output=True,
                               text=True, timeout=900, env={**os.environ, "CGO_ENABLED": "0"})
        assert build.returncode == 0, f"building hack/tools/kstatus failed:\n{build.stderr[-3000:]}"
        partial.rename(binary)
    run = subprocess.run([str(binary)], input=json.dumps(objects), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [r["status"] for r in json.loads(run.stdout)]


def _object(generation: int = 1, **kw: Any) -> dict[str, Any]:
    """A ModelService as the API server returns it, with the status the operator computes for `kw`."""
    b = body(generation=generation)
    b["spec"].update(kw.pop("spec", {}))
    status, _ = compute_status(ModelService.from_body(b), previous=None, now=T0, desired_hash="h1", **kw)
    b["status"] = status
    return b


def _crash() -> dict[str, Any]:
    return pod(containers=[waiting("server", "CrashLoopBackOff", restarts=5,
                                   last={"exitCode": 137, "reason": "OOMKilled"})])


CASES = [
    # (id, object, Argo CD health, words in its message, kstatus)
    ("serving", lambda: _object(observed=Observed(deployment(replicas=2, updated=2, ready=2, available=2), [pod()]),
                                spec={"replicas": 2}),
     "Healthy", "2/2 replicas of generation 1 ready; serving at http://svc.ns.svc:8000", "Current"),
    ("rolling-out", lambda: _object(generation=2, spec={"replicas": 2},
                                    observed=Observed(deployment(replicas=2, updated=1, ready=1, available=3, total=3), [])),
     "Progressing", "RolloutInProgress: 1/2 replicas of generation 2 ready; 2 replicas of the previous spec still serve",
     "InProgress"),
    ("optimizing", lambda: _object(observed=Observed(None, []), variant=None,
                                   wait=Wait("Optimizing", "generation 1 rolls out once optimize Job j has finished (running)")),
     "Progressing", "Optimizing: generation 1 rolls out once optimize Job j has finished", "InProgress"),
    ("optimize-failed-closed", lambda: _object(observed=Observed(None, []), variant=None,
                                               wait=Wait("OptimizationFailed", "optimize Job j failed: boom; nothing rolls out",
                                                         blocked=True)),
     "Degraded", "OptimizationFailed: optimize Job j failed: boom", "Failed"),
    ("deadline-exceeded", lambda: _object(observed=Observed(deployment(updated=1, ready=0, available=0, deadline=True), [])),
     "Degraded", "ProgressDeadlineExceeded", "Failed"),
    ("apply-failed", lambda: _object(observed=Observed(None, []), apply_error="forbidden: cannot create deployments"),
     "Degraded", "ApplyFailed: cannot apply the children of generation 1: forbidden", "Failed"),
    ("crash-loop-while-rolling-out", lambda: _object(observed=Observed(deployment(updated=1, ready=0, available=0),
                                                                       [_crash()])),
     "Progressing", "CrashLoop", "InProgress"),
    ("crash-loop-after-rollout", lambda: _object(observed=Observed(deployment(), [_crash()])),
     "Degraded", "CrashLoop", "Failed"),
    ("gpu-shortage", lambda: _object(spec={"resources": {"gpu": {"count": 1}}},
                                     observed=Observed(deployment(updated=1, ready=0, available=0),
                                                       [pod(conditions=unschedulable("0/3 nodes are available: 3 "
                                                                                     "Insufficient nvidia.com/gpu."),
                                                            gpu=1)])),
     "Progressing", "InsufficientGPU", "InProgress"),
    ("scaled-to-zero", lambda: _object(spec={"replicas": 0},
                                       observed=Observed(deployment(replicas=0, updated=0, ready=0, available=0), [])),
     "Healthy", "0 replicas requested", "Current"),
]


@pytest.mark.parametrize("make,health,words,flux", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_argocd_and_kstatus_read_the_status_as_meant(make, health: str, words: str, flux: str) -> None:
    obj = make()
    status, message = argocd_health(obj)
    assert (status, kstatus(obj)) == (health, flux), message
    assert words in message
    ready = next(x for x in obj["status"]["conditions"] if x["type"] == "Ready")
    # The invariants: both tools call it done exactly when Ready is True.
    assert (status == "Healthy") == (ready["status"] == "True") == (kstatus(obj) == "Current")


def test_a_status_not_yet_written_or_of_an_older_generation_is_progressing() -> None:
    fresh = body(generation=1)
    assert argocd_health(fresh) == ("Progressing", "waiting for the modelship operator to report status")
    stale = _object(observed=Observed(deployment(), [pod()]))
    stale["metadata"]["generation"] = 2  # the user changed the spec; the operator has not seen it yet
    assert argocd_health(stale) == ("Progressing", "waiting for the modelship operator to observe generation 2")
    assert kstatus(stale) == "InProgress"
    # kstatus calls an object without any status Current: its rule, and the window lasts until the
    # operator's first status write (docs/gitops.md says so).
    assert kstatus(fresh) == "Current"


def test_every_condition_carries_the_generation_it_describes() -> None:
    obj = _object(generation=7, observed=Observed(deployment(), [pod()]))
    assert obj["status"]["observedGeneration"] == 7
    assert {x["observedGeneration"] for x in obj["status"]["conditions"]} == {7}
    assert {x["type"] for x in obj["status"]["conditions"]} >= {"Ready", "Reconciling", "Stalled"}


def test_a_deleted_object_is_terminating_for_kstatus() -> None:
    obj = copy.deepcopy(_object(observed=Observed(deployment(), [pod()])))
    obj["metadata"]["deletionTimestamp"] = T0
    assert kstatus(obj) == "Terminating"


def test_the_real_kstatus_library_agrees() -> None:
    objects = [make() for _, make, _, _, _ in CASES]
    fresh, stale = body(generation=1), _object(observed=Observed(deployment(), [pod()]))
    stale["metadata"]["generation"] = 2
    deleted = _object(observed=Observed(deployment(), [pod()]))
    deleted["metadata"]["deletionTimestamp"] = T0
    objects += [fresh, stale, deleted]
    want = [flux for _, _, _, _, flux in CASES] + ["Current", "InProgress", "Terminating"]
    assert real_kstatus(objects) == want
    assert [kstatus(o) for o in objects] == want, "the rules written out here must be the library's"


def test_the_docs_show_the_lua_the_chart_ships() -> None:
    doc = (REPO / "docs" / "gitops.md").read_text()
    lua = LUA.read_text()
    indented = "".join(("    " + line if line.strip() else line) for line in lua.splitlines(keepends=True))
    assert indented in doc, "docs/gitops.md's resource.customizations block must match charts/modelship/gitops/argocd-health.lua"
