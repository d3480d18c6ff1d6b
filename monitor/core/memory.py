"""Process memory settings for a long-running daemon (glibc malloc)."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameters (malloc.h)
_M_ARENA_MAX = -8

ARENAS = 2
# Blocks at least this big are mmapped on their own and unmapped on free. glibc's default threshold starts at
# 128 KB but rises to the size of any mmapped block that is freed (up to 32 MB): after the first 6.2 MB 1080p
# frame is freed every later frame comes from the heap, and freed frames then stay resident inside the arenas
# (malloc_info: 93 MB free but resident with 4 cameras). A fixed threshold also turns the dynamic rise off.
# 256 KB: every frame, decoder plane and inference batch is above it; Python's small objects are far below.
MMAP_THRESHOLD = 256 * 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018  (only glibc has it: musl/macOS have nothing to tune)
        return libc
    except (OSError, AttributeError):
        return None


def tune_malloc(arenas: int | None = None, mmap_threshold: int | None = None) -> dict[str, int]:
    """Cap glibc's malloc arenas and fix its mmap threshold; returns what was set ({} when not glibc).

    Same as MALLOC_ARENA_MAX / MALLOC_MMAP_THRESHOLD_ (the systemd unit sets both, so they hold from the first
    allocation), but done from inside so `monitor run` started any other way gets them too. Call it before the
    capture threads start: arenas made before it stay (and past 8 glibc fixes its own limit), and the
    threshold only applies to later allocations. A value the operator exported is left alone (glibc already read it).

    Arenas: capture, worker, sink and HTTP threads each allocate frame-sized buffers; with one arena per thread
    (up to 8 per core) the freed blocks stay resident in each.

    None takes the module's ARENAS / MMAP_THRESHOLD (read at call time: `monitor bench capacity --malloc`
    sets them in its child to measure the alternatives); 0 leaves that setting to glibc.
    """
    arenas = ARENAS if arenas is None else arenas
    mmap_threshold = MMAP_THRESHOLD if mmap_threshold is None else mmap_threshold
    libc = _libc()
    if libc is None:
        return {}
    done: dict[str, int] = {}
    if arenas and "MALLOC_ARENA_MAX" not in os.environ and libc.mallopt(_M_ARENA_MAX, arenas):
        done["arena_max"] = arenas
    if (mmap_threshold and "MALLOC_MMAP_THRESHOLD_" not in os.environ
            and libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)):
        done["mmap_threshold"] = mmap_threshold
    return done



# How often the daemon hands free heap pages back (daemon._supervise). Measured (issue 24, in-process daemon, 4
# sample cameras, mallinfo2): MJPEG viewer connect/disconnect cycles grew the arenas with the memory in use flat
# (900 connections: RSS +8.6 MB, arena 275 -> 283 MB, in use 221 -> 222 MB, free 53 -> 61 MB), while 1,200 uploads
# left them flat. The growth is free memory glibc keeps resident: blocks under the mmap threshold (JPEGs, stream
# parts, socket buffers) freed between longer-lived small objects leave holes, and free() only ever gives back
# the top of a heap. malloc_trim(0) madvises every free page of every arena away: RSS 610 -> 566 MB, free in
# the arenas 51 -> 21 MB, in about a millisecond.
TRIM_EVERY = 60.0


def trim() -> bool:
    """Return the free pages inside glibc's arenas to the system (malloc_trim(0)); False when not glibc or
    nothing was released."""
    libc = _libc()
    trim_fn = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim_fn is None:
        return False
    return bool(trim_fn(0))
