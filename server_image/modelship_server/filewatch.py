"""Noticing that mounted files changed: a Secret update, a cert-manager renewal.

Kubelet updates a mounted Secret by swapping a `..data` symlink, so inotify on the file
itself misses it; comparing a cheap signature (stat of each file, following links) on a
timer sees every kind of update, and a file that disappears too.
"""

from __future__ import annotations

import os
from pathlib import Path

Signature = tuple[tuple[str, int, int, int], ...]


def visible_files(path: Path) -> list[Path]:
    """The files a Secret mount shows: for a folder, its entries not starting with '.'."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
    return [path]


def signature(paths: list[Path]) -> Signature:
    """(path, inode, mtime, size) of each file; a missing file counts as (path, -1, -1, -1)."""
    out = []
    for root in paths:
        try:
            files = visible_files(root)
        except OSError:
            files = [root]
        for f in files:
            try:
                st = os.stat(f)
            except OSError:
                out.append((str(f), -1, -1, -1))
            else:
                out.append((str(f), st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)
