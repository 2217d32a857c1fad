"""A volume folder updated the kubelet's way, so a reader never sees half of an update.

The content lives in a `..<timestamp>` folder, `..data` is a link to it, and each top-level
entry of the volume is a link through `..data` (`tls.crt -> ..data/tls.crt`). An update writes
a new timestamped folder and swaps `..data` with one rename: a container that has the volume
folder bound (and the server's API-key and TLS watchers, which stat through the links) sees
the old set or the new set, never a new certificate with the old key. The folder itself is
never replaced, because the containers' bind mounts hold it.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping

from modelship.devcluster.agent.envvars import ConfigError

DATA = "..data"
DATA_SWAP = "..data_tmp"

Files = Mapping[str, tuple[bytes, int]]  # relative path -> (content, mode)


@dataclass(frozen=True)
class Change:
    """What an update changes, by relative path; empty when the volume is already up to date."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    modified: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.modified)

    def describe(self) -> str:
        parts = [f"{what} {', '.join(paths)}" for what, paths in
                 (("added", self.added), ("removed", self.removed), ("changed", self.modified)) if paths]
        return "; ".join(parts) or "unchanged"


def diff(current: Files, desired: Files) -> Change:
    """The paths added, removed and modified (content or permission bits) from `current` to `desired` (pure)."""
    modified = sorted(p for p in set(current) & set(desired)
                      if current[p][0] != desired[p][0] or current[p][1] & 0o7777 != desired[p][1] & 0o7777)
    return Change(added=tuple(sorted(set(desired) - set(current))), removed=tuple(sorted(set(current) - set(desired))),
                  modified=tuple(modified))


def check_path(relative: str) -> None:
    """A volume path stays inside its volume and cannot shadow the layout's own `..` entries."""
    parts = PurePosixPath(relative).parts
    if not relative or relative.startswith("/") or ".." in parts or relative.startswith(".."):
        raise ConfigError(f"volume path {relative!r} must be relative, without '..' and not starting with '..'")


def top_entries(paths: Iterable[str]) -> set[str]:
    """The top-level names the volume shows, each a link through `..data` (pure)."""
    return {PurePosixPath(p).parts[0] for p in paths}


def stale_entries(existing: Iterable[str], paths: Iterable[str]) -> set[str]:
    """Top-level entries of the folder to remove: neither the layout's own `..` entries nor wanted (pure)."""
    wanted = top_entries(paths)
    return {name for name in existing if not name.startswith("..") and name not in wanted}


def read(root: Path) -> dict[str, tuple[bytes, int]]:
    """The content `..data` shows now; empty when the folder has not been written this way yet."""
    data = root / DATA
    if not data.is_symlink():
        return {}
    base = data.resolve()
    out = {}
    for folder, _dirs, names in os.walk(base):
        for name in names:
            path = Path(folder) / name
            out[path.relative_to(base).as_posix()] = (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    return out


def _stamp() -> str:
    now = time.time_ns()
    return time.strftime("..%Y_%m_%d_%H_%M_%S", time.gmtime(now / 1e9)) + f".{now % 1_000_000_000:09d}"


def _replace_with_link(path: Path, target: str) -> None:
    """`path` becomes a link to `target`, in one rename (a folder in the way is removed first)."""
    if path.is_symlink() and os.readlink(path) == target:
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    swap = path.with_name(f"..{path.name}.swap")
    swap.unlink(missing_ok=True)
    os.symlink(target, swap)
    os.replace(swap, path)


def write(root: Path, files: Files) -> None:
    """Make `root` show exactly `files`: a new timestamped folder, then the `..data` swap, then
    the top-level links; old timestamped folders and entries no longer wanted are removed."""
    for relative in files:
        check_path(relative)
    root.mkdir(parents=True, exist_ok=True)
    stamped = Path(tempfile.mkdtemp(prefix=_stamp() + ".", dir=root))
    os.chmod(stamped, 0o755)  # noqa: S103 - as the kubelet: readable by the container, files keep their modes
    for relative, (content, mode) in files.items():
        target = stamped / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        os.chmod(target, mode)
    (root / DATA_SWAP).unlink(missing_ok=True)
    os.symlink(stamped.name, root / DATA_SWAP)
    os.replace(root / DATA_SWAP, root / DATA)
    for name in sorted(top_entries(files)):
        _replace_with_link(root / name, f"{DATA}/{name}")
    existing = os.listdir(root)
    for name in stale_entries(existing, files):
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for name in existing:
        if name.startswith("..") and name not in (DATA, DATA_SWAP, stamped.name) and not name.endswith(".swap"):
            path = root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
