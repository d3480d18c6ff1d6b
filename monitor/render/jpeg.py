"""The one JPEG encoder of the package: live view frames, the camera snapshot route and event pictures."""
from __future__ import annotations

import cv2
import numpy as np


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """`image` (BGR uint8, H x W x 3) as JPEG bytes at `quality` (1..100); RuntimeError if OpenCV refuses."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed ({getattr(image, 'dtype', '?')} {getattr(image, 'shape', '')})")
    return buf.tobytes()
