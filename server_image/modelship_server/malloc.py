"""glibc's malloc settings for a server of large request buffers (glibc only; elsewhere nothing
happens).

Two settings, one for each size of buffer:

- **Buffers of 1 MiB and more are mmapped**, and unmapped when freed. glibc serves a large
  allocation with mmap only while it is above a threshold that it raises each time such a block
  is freed (up to 32 MiB). After a few large request bodies, every later body comes from the
  heap, and a heap fragmented by the small objects around them is not trimmed: measured here,
  30 gRPC requests of 16 MiB left RSS 160-200 MiB higher than with the threshold pinned at
  1 MiB. A pinned threshold keeps RSS near what is in use, which is what the byte budget
  (budget.py) assumes.
- **Up to 8 MiB of free heap is kept** instead of glibc's 128 KiB. Pinning the mmap threshold
  also pins the trim threshold at its default, so a body under 1 MiB freed at the top of the
  heap was handed back to the kernel at once, and the next request's body faulted its pages in
  again: ~150 page faults, zeroed pages and an unmap per 600 KB body, 0.5 ms of CPU per request
  for a 224x224 image over HTTP (docs/server-benchmarks.md, "Page faults per request").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024 * 1024
TRIM_THRESHOLD = 8 * 1024 * 1024


def tune(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Allocations of `mmap_threshold` bytes or more use mmap and are unmapped when freed; up to
    `trim_threshold` bytes of free memory stay at the top of the heap. True if both were applied."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    ok = True
    for param, value, what in ((M_MMAP_THRESHOLD, mmap_threshold, "M_MMAP_THRESHOLD"),
                               (M_TRIM_THRESHOLD, trim_threshold, "M_TRIM_THRESHOLD")):
        if not mallopt(param, value):
            ok = False
            log.debug("mallopt(%s) was refused; glibc's default applies", what)
    return ok
