"""Process memory settings for a long-running daemon."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's per-thread malloc arenas. Capture, worker, sink and HTTP threads each allocate frame-sized
    buffers; with one arena per thread the freed blocks stay resident in each (~20 MB more with 4 cameras).
    Same as MALLOC_ARENA_MAX, but set from inside so `monitor run` gets it however it was started."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
