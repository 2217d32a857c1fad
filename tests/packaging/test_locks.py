"""The committed lock files: pinned, hashed, one ONNX Runtime on CPU and GPU, the images' versions
those of dev.txt; and the check itself catches each of those mistakes."""

from __future__ import annotations

import shutil
from pathlib import Path

import locks


def test_the_committed_locks_hold() -> None:
    assert locks.problems(locks.REPO / "requirements", locks.REPO / "pyproject.toml") == []


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "requirements"
    shutil.copytree(locks.REPO / "requirements", folder)
    return folder


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def test_a_gpu_runtime_other_than_the_cpu_one_is_named(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    version = locks.parse_lock((folder / "server-gpu.txt").read_text())[0]["onnxruntime-gpu"][0].version
    _edit(folder / "server-gpu.txt", f"onnxruntime-gpu=={version}", "onnxruntime-gpu==1.22.0")
    found = locks.problems(folder, locks.REPO / "pyproject.toml")
    assert any("onnxruntime-gpu ['1.22.0']" in line and "one and the same version" in line for line in found), found


def test_an_image_version_the_tests_did_not_run_is_named(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    version = locks.parse_lock((folder / "operator.txt").read_text())[0]["kopf"][0].version
    _edit(folder / "operator.txt", f"kopf=={version}", "kopf==1.37.0")
    found = locks.problems(folder, locks.REPO / "pyproject.toml")
    assert found == [f"operator.txt: kopf ['1.37.0'] but dev.txt, which the tests run, has ['{version}']"]


def _without(text: str, package: str) -> str:
    """A lock's text with one package's entry (its pin, hashes and `# via` lines) taken out."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{package}=="))
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()), len(lines))
    return "\n".join(lines[:start] + lines[end:]) + "\n"


def test_an_unhashed_or_loose_requirement_is_named(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    version = locks.parse_lock((folder / "server.txt").read_text())[0]["prometheus-client"][0].version
    text = _without((folder / "server.txt").read_text(), "prometheus-client")
    (folder / "server.txt").write_text(text + f"prometheus-client=={version}\nhttptools>=0.6\n")
    found = locks.problems(folder, locks.REPO / "pyproject.toml")
    assert found == ["server.txt: 'httptools>=0.6' is not pinned with == (run `make lock`)",
                     f"server.txt: prometheus-client=={version} has no --hash (pip --require-hashes would refuse it)"]


def test_a_lock_without_what_its_extra_asks_for_is_named(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "operator.txt").write_text(_without((folder / "operator.txt").read_text(), "prometheus-client"))
    found = locks.problems(folder, locks.REPO / "pyproject.toml")
    assert found == ["operator.txt: does not hold ['prometheus-client'], which pyproject.toml's extras "
                     "['operator'] ask for (run `make lock`)"]


def test_requirement_names_are_compared_as_pep_503_names() -> None:
    assert locks.normalize("Prometheus_Client") == locks.normalize("prometheus-client") == "prometheus-client"
    project = {"name": "modelship", "dependencies": ["PyYAML>=6"],
               "optional-dependencies": {"x": ["modelship[a]", "uvloop>=1; sys_platform != 'win32'"]}}
    assert locks.direct_requirements({"project": project}, ("x",)) == {"pyyaml", "uvloop"}
