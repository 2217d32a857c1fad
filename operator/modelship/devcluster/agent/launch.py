"""`python -m modelship.devcluster.agent.launch SPEC`: become one container's process.

Runs as the agent's child, in its own session: enters a private mount namespace, binds the
pod's volume folders (and the per-container termination-log file) at their mountPaths,
read-only where asked, changes to the working directory, and execs the container's command,
so the PID the agent holds is the container's process. Sources are opened before any bind,
because a bind over /tmp (an emptyDir) would otherwise hide sources that live under /tmp.

Mount points that do not exist on this machine (/models, /dev/termination-log, ...) are
created on the host as empty folders or files: a mount namespace isolates mounts, not the
file tree underneath them.

The container's commands come from its image's venv (the spec's "keep", built by
modelship.devcluster.imageenv) and the base Python; this launcher from the agent's installation.
A pod volume over a folder that holds them (an emptyDir at /tmp when the checkout or the cache
lives under /tmp, as a CI clone may) would hide them, so those paths are bound back, read-only,
on top of the pod's volumes.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 0x4000, 1 << 18


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def installation_paths() -> list[str]:
    """Folders the container's commands come from: the virtualenv, the base Python, and the
    folders holding the `modelship` and `modelship_server` packages (the sources, when editable)."""
    import importlib.util

    paths = {sys.prefix, sys.base_prefix, str(Path(__file__).resolve().parents[3])}
    spec = importlib.util.find_spec("modelship_server")
    if spec is not None and spec.origin:
        paths.add(str(Path(spec.origin).resolve().parents[1]))
    return sorted(p for p in paths if os.path.isdir(p))


def hidden_by(paths: list[str], targets: list[str]) -> list[str]:
    """The paths that lie at or under a mount target, so the mount would hide them (pure)."""
    def under(path: str, target: str) -> bool:
        return path == target or path.startswith(target.rstrip("/") + "/")

    return [p for p in paths if any(under(p, t) for t in targets)]


def enter(mounts: list[dict], working_dir: str | None, keep: tuple[str, ...] = ()) -> None:
    libc = _libc()
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    # Opened inside the new namespace (a bind source must belong to it), before any bind.
    paths = sorted({*installation_paths(), *(p for p in keep if os.path.isdir(p))})
    hidden = hidden_by(paths, [m["target"] for m in mounts])
    restore = [(os.open(p, os.O_PATH), {"source": p, "target": p, "readOnly": True}) for p in hidden]
    handles = [(os.open(m["source"], os.O_PATH), m) for m in mounts]
    ordered = sorted(handles, key=lambda h: len(Path(h[1]["target"]).parts)) + restore
    for fd, mount in ordered:
        target = Path(mount["target"])
        if not target.exists():
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
        _check(libc.mount(f"/proc/self/fd/{fd}".encode(), str(target).encode(), None, MS_BIND | MS_REC, None),
               f"bind {mount['source']} at {target}")
        if mount.get("readOnly"):
            _check(libc.mount(None, str(target).encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None),
                   f"make {target} read-only")
        os.close(fd)
    os.chdir(working_dir or "/")


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    try:
        enter(spec["mounts"], spec.get("workingDir"), tuple(spec.get("keep", ())))
        os.execvpe(spec["argv"][0], spec["argv"], os.environ)
    except OSError as exc:
        message = f"failed to start container: {spec['argv'][0]}: {exc.strerror or exc}"
        print(message, file=sys.stderr, flush=True)
        try:
            Path(spec["terminationLog"]).write_text(message)
        except OSError:
            pass
        os._exit(128)


if __name__ == "__main__":
    main()
