"""Text as Pillow draws it on its own (not through monitor.render.text), and where it shows in a picture: how the
Chinese-label tests check the overlay's glyphs against a reference rendering."""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

NOTO = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"     # Debian's fonts-noto-cjk


def template(text: str, size: int) -> np.ndarray:
    """`text` in Noto Sans CJK SC (face 2 of the collection) at `size` px, cropped to its ink."""
    font = ImageFont.truetype(NOTO, size, index=2)
    canvas = Image.new("L", (size * (len(text) + 2), size * 2), 0)
    ImageDraw.Draw(canvas).text((size // 2, size // 2), text, font=font, fill=255)
    mask = np.asarray(canvas)
    ys, xs = np.nonzero(mask)
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def best_match(image: np.ndarray, glyphs: np.ndarray) -> float:
    """Highest normalised correlation of the template anywhere in the BGR image (1.0: drawn exactly there)."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return float(cv2.matchTemplate(grey, glyphs, cv2.TM_CCOEFF_NORMED).max())
