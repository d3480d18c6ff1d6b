"""FramePool: frame-sized arrays that cv2's retrieve() writes into, reused once nobody refers to them any more."""
from __future__ import annotations

import sys

import numpy as np

# References an array in the pool has while only the pool holds it: the list slot, the loop variable in
# take() and getrefcount's own argument. A Frame, a Result, a numpy view (its .base) or a cv2 call running in
# another thread each add one, so the array is then left alone.
_POOL_ONLY = 3


class FramePool:
    """Up to `limit` arrays of one shape, owned by one capture thread.

    A 1080p BGR frame is 6.2 MB. Allocating one per retrieve() makes glibc hand such blocks back and forth
    between the heap and mmap and leaves freed ones resident; reusing a few fixed arrays keeps the camera's
    footprint at (arrays in use) x frame size. Written by hand because no library pools numpy arrays by
    reference count; CPython's sys.getrefcount is exact here because only the capture thread hands the
    arrays out and every holder keeps a real reference.
    """

    def __init__(self, limit: int = 3) -> None:
        self.limit = limit
        self._arrays: list[np.ndarray] = []
        self.allocated = 0          # arrays adopted over the pool's life (tests, status)

    def take(self) -> np.ndarray | None:
        """A pooled array nobody else holds, or None (then let OpenCV allocate and adopt() the result)."""
        for arr in self._arrays:
            if sys.getrefcount(arr) <= _POOL_ONLY:
                return arr
        return None

    def adopt(self, arr: np.ndarray) -> None:
        """Keep an array OpenCV allocated for later reuse; a new frame size replaces the old arrays."""
        if any(a is arr for a in self._arrays):
            return
        if self._arrays and self._arrays[0].shape != arr.shape:
            self._arrays.clear()        # the camera changed resolution (reconnect): old arrays are useless
        if len(self._arrays) < self.limit:
            self._arrays.append(arr)
            self.allocated += 1

    def __len__(self) -> int:
        return len(self._arrays)
