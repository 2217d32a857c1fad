"""Intermediates shared by the builds of one search, through files in its work folder.

Several recipes start from the same intermediate (the fused graph, ONNX Runtime's optimized
graph, the sensitivity ranking), and builds run in parallel worker processes: the first to need
one makes it, under a file lock, and the others wait for it and reuse it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from pathlib import Path
from typing import Callable, Iterator


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock named after `path` (across processes) while the block runs."""
    with open(path.with_suffix(".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def shared_file(workdir: Path, step: str, source: Path, make: Callable[[Path, Path], None]) -> Path:
    """`make(source, target)` done once per step, source file and work folder; the path of its result."""
    # Named after the source file's identity, not its bytes: hashing a large model once per
    # recipe would read it again each time, and within one search a source does not change.
    info = source.stat()
    identity = f"{source.resolve()}:{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"
    target = workdir / f"{step}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.onnx"
    with locked(target):
        if not target.is_file():
            partial = target.with_name(f"{target.stem}.partial{target.suffix}")  # ORT picks the format by suffix
            make(source, partial)
            partial.rename(target)
    return target
