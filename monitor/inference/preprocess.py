"""BGR frame -> the model's uint8 input: only the crop region is resized; normalisation happens in the graph."""
from __future__ import annotations

from typing import Sequence, Union

import cv2
import numpy as np

from monitor.core.region import Box, Region
from monitor.core.resample import resize_into

# "center" (ImageNet convention: shorter side to `resize`, centre crop `size`), "full" (whole frame squashed
# to size x size), (x, y, w, h): that region of interest, squashed to size x size, or a Region.
Crop = Union[str, Sequence[int], Region]


def crop_box(height: int, width: int, crop: Crop, resize: int = 256, size: int = 224) -> Box:
    """The source-pixel box (x, y, w, h) whose resize gives the model input (Region.clip_to: RegionError, a
    ValueError, for a box that does not lie inside the frame)."""
    return Region.of(crop).clip_to(width, height, center_share=size / resize)


def prepare_into(frame: np.ndarray, out: np.ndarray, crop: Crop = "center", resize: int = 256) -> None:
    """Resize the crop region of a BGR uint8 frame into `out` (size x size x 3 uint8), in place."""
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    x, y, w, h = crop_box(frame.shape[0], frame.shape[1], crop, resize, out.shape[0])
    resize_into(frame[y:y + h, x:x + w], out)


def prepare_batch(frames: Sequence[np.ndarray], crops: Sequence[Crop] | None = None, size: int = 224,
                  resize: int = 256) -> np.ndarray:
    """(N, size, size, 3) uint8 BGR batch, the artifact's input layout."""
    batch = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        prepare_into(frame, batch[i], "center" if crops is None else crops[i], resize)
    return batch
