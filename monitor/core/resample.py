"""The network input's pixels, defined once: the centre crop's box and a box resized to the input with
anti-aliasing. cv2 and numpy only, nothing of the package: the upload decoder process (monitor/web/
decode_worker.py, a script run with `python -I`) loads this file by path to prepare the network input where it
decodes (a 224x224x3 picture goes back through the pipe, not the decoded one), and Region and
monitor.inference.preprocess call the same functions in-process. One definition, so both give the same pixels.
"""
from __future__ import annotations

import numpy as np


def center_box(width: int, height: int, share: float) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the centred square of `share` of the shorter side (224/256: the ImageNet centre crop)."""
    side = max(1, round(min(width, height) * share))
    return (width - side) // 2, (height - side) // 2, side, side


def resize_into(region: np.ndarray, out: np.ndarray) -> None:
    """Resize a BGR uint8 region into `out` (size x size x 3 uint8), in place."""
    import cv2        # here, not at the top: Region (hence the config) imports this module, and needs no cv2
    size = out.shape[0]
    h, w = region.shape[:2]
    if w <= size and h <= size:
        cv2.resize(region, (size, size), dst=out, interpolation=cv2.INTER_LINEAR)
        return
    # Shrinking needs anti-aliasing (PIL's resize has it). INTER_AREA at a non-integer ratio costs ~0.9 ms for a
    # 378 px crop; halving with the Gaussian pyramid after a linear resize to twice the size gives the same
    # picture (mean difference 0.3 grey levels) in ~0.3 ms. Large frames are halved first while >= 4x.
    while region.shape[0] >= 4 * size and region.shape[1] >= 4 * size:
        region = cv2.pyrDown(region)
    double = cv2.resize(region, (2 * size, 2 * size), interpolation=cv2.INTER_LINEAR)
    cv2.pyrDown(double, dst=out)


def center_prepared(image: np.ndarray, size: int, resize: int) -> np.ndarray:
    """The network input (size x size x 3 uint8) of a whole BGR picture: shorter side to `resize`, centre crop
    `size`, done as one resize of the crop's box."""
    h, w = image.shape[:2]
    x, y, bw, bh = center_box(w, h, size / resize)
    out = np.empty((size, size, 3), np.uint8)
    resize_into(image[y:y + bh, x:x + bw], out)
    return out
