"""An image's Python environment, built on this machine the way its Dockerfile builds it.

The node agent runs each pod from the environment of the image it names, and the packaging
tests start each image's entry points from it, so both run what the image would hold: a clean
venv with the image's lock installed (`pip install --require-hashes -r requirements/<lock>`),
then modelship's wheel with `--no-deps`. Nothing from the development venv leaks in.

Environments are cached under the binary cache (`image-envs/<image>-<key>`), keyed by the lock,
the wheel's sources and the Python version, and built once, in place, under a file lock, so
concurrent test sessions and agents share one build.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelship.devcluster.errors import DevClusterError
from modelship.devcluster.toolchain import cache_dir

Progress = Callable[[str], None]

# What the wheel is built from: what the Dockerfiles copy into their build stage.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "operator/modelship", "server_image/modelship_server")
UNUSED_FOR_S = 7 * 24 * 3600  # an environment nobody used for a week is removed when another is built


@dataclass(frozen=True)
class ImageEnv:
    """An image's dependency set: the lock its Dockerfile installs (the CPU stand-in for the GPU
    image: the same versions, onnxruntime in place of onnxruntime-gpu, see requirements/pins.txt)."""

    name: str
    lock: str


OPERATOR = ImageEnv("operator", "requirements/operator.txt")
SERVER = ImageEnv("server", "requirements/server.txt")


def source_root() -> Path:
    """The checkout modelship runs from (an editable install): where the locks and sources are."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "requirements" / "operator.txt").is_file() and (parent / "pyproject.toml").is_file():
            return parent
    raise DevClusterError(
        "cannot find requirements/operator.txt above modelship's sources: image environments are "
        "built from a modelship source checkout; install modelship editable from a clone (make venv)"
    )


def _files(root: Path, relative: str) -> list[Path]:
    path = root / relative
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def sources_digest(root: Path) -> str:
    """sha256 over the wheel's source files (names and bytes): changes when the wheel would."""
    digest = hashlib.sha256()
    for relative in WHEEL_SOURCES:
        for path in _files(root, relative):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def env_key(lock_bytes: bytes, sources: str, python_version: str) -> str:
    """The cache key of one environment: its lock, its wheel's sources and its Python."""
    return hashlib.sha256(b"\0".join([lock_bytes, sources.encode(), python_version.encode()])).hexdigest()[:16]


def base_python() -> str:
    """The interpreter behind the running venv: image environments must not inherit its packages."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise DevClusterError(f"{what} failed (exit {result.returncode}): {' '.join(cmd)}\n{tail}")


def build_wheel(root: Path, cache: Path, sources: str, progress: Progress = print) -> Path:
    """modelship's wheel from a copy of its sources (so the checkout gets no build/ or egg-info),
    built once per sources digest."""
    folder = cache / "wheels" / sources[:16]
    found = sorted(folder.glob("modelship-*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".lock", "w") as held:  # one build per digest, whoever asks first
        fcntl.flock(held, fcntl.LOCK_EX)
        found = sorted(folder.glob("modelship-*.whl"))
        return found[0] if found else _build_wheel(root, folder, sources, progress)


def _build_wheel(root: Path, folder: Path, sources: str, progress: Progress) -> Path:
    progress(f"building modelship's wheel ({sources[:16]})")
    with tempfile.TemporaryDirectory(prefix="modelship-wheel-") as tmp:
        copy = Path(tmp) / "src"
        for relative in WHEEL_SOURCES:
            for path in _files(root, relative):
                target = copy / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
        out = Path(tmp) / "out"
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(copy)],
             "building modelship's wheel")
        wheel = next(out.glob("modelship-*.whl"))
        partial = folder / (wheel.name + ".partial")
        shutil.copy2(wheel, partial)
        partial.rename(folder / wheel.name)
    return folder / wheel.name


def ensure(image: ImageEnv, *, root: Path | None = None, cache: Path | None = None,
           python: str | None = None, progress: Progress = print) -> Path:
    """The venv of `image` (its folder; run `<venv>/bin/...`), built if not cached yet.

    Two steps, each cached: the lock into a venv of its own (a minute or two, once per lock), then
    per version of the sources a hard-linked copy of it with modelship's wheel installed (seconds),
    so an edit to the sources does not reinstall ONNX Runtime."""
    root = root or source_root()
    cache = cache or cache_dir()
    python = python or base_python()
    lock = root / image.lock
    version = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True,
                             check=True).stdout.strip()
    sources = sources_digest(root)
    envs = cache / "image-envs"
    deps = envs / f"{image.name}-deps-{env_key(lock.read_bytes(), '', version)}"
    venv = envs / f"{image.name}-{env_key(lock.read_bytes(), sources, version)}"
    if _marker(venv).is_file():
        os.utime(_marker(venv))
        return venv
    envs.mkdir(parents=True, exist_ok=True)
    with open(envs / f".{image.name}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if _marker(venv).is_file():
            return venv
        if not _marker(deps).is_file():
            _build(deps, f"the {image.name} image's dependencies from {image.lock}", progress, [
                [python, "-m", "venv", str(deps)],
                [str(deps / "bin" / "python"), *PIP_INSTALL, "--require-hashes", "-r", str(lock)],
            ])
        wheel = build_wheel(root, cache, sources, progress)
        _build(venv, f"the {image.name} image's environment (modelship {sources[:16]})", progress, [
            ["cp", "-al", str(deps), str(venv)],
            [str(deps / "bin" / "python"), "-c", _RETARGET, str(deps), str(venv)],
            [str(venv / "bin" / "python"), *PIP_INSTALL, "--no-deps", str(wheel)],
        ])
        _remove_unused(envs, keep={venv, deps})
    return venv


def ensure_all(images: tuple[ImageEnv, ...], *, progress: Progress = print) -> dict[str, Path]:
    """Several images' venvs, built side by side (pip spends much of its time unpacking)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        futures = {image.name: pool.submit(ensure, image, progress=progress) for image in images}
        return {name: future.result() for name, future in futures.items()}


def _marker(folder: Path) -> Path:
    """Written last: a folder without it is a build that died half-way. Named after its folder,
    so the deps venv's marker, hard-linked into a copy, does not count there."""
    return folder / f".complete-{folder.name}"


PIP_INSTALL = ("-m", "pip", "install", "--quiet", "--disable-pip-version-check")
# A hard-linked copy shares every file with its source, so the files that name the venv's folder
# (scripts' shebangs, activate) are replaced by new files, never edited in place.
_RETARGET = """
import os, sys
from pathlib import Path
old, new = sys.argv[1].encode(), sys.argv[2].encode()
for path in (Path(sys.argv[2]) / "bin").iterdir():
    if path.is_file() and not path.is_symlink() and old in path.read_bytes():
        fresh = path.with_name(path.name + ".new")
        fresh.write_bytes(path.read_bytes().replace(old, new))
        os.chmod(fresh, path.stat().st_mode)
        os.replace(fresh, path)
"""


def _build(folder: Path, what: str, progress: Progress, commands: list[list[str]]) -> None:
    started = time.monotonic()
    progress(f"building {what}")
    shutil.rmtree(folder, ignore_errors=True)
    try:
        for cmd in commands:
            _run(cmd, f"building {what}")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    _marker(folder).write_text(f"{what}\n")
    progress(f"built {what} in {time.monotonic() - started:.0f}s")


def _remove_unused(envs: Path, keep: set[Path]) -> None:
    now = time.time()
    for venv in envs.iterdir():
        marker = _marker(venv)
        if venv not in keep and marker.is_file() and now - marker.stat().st_mtime > UNUSED_FOR_S:
            shutil.rmtree(venv, ignore_errors=True)
