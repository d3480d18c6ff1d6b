"""Text OpenCV cannot draw (Chinese class names): FreeType through Pillow, with a CJK font found on the system.

cv2.putText knows only the Hershey fonts (ASCII). Rasterising with FreeType costs far more than putText, so each
(text, size) is rasterised once into an alpha strip and kept in a bounded LRU cache; a frame only blends the
cached strips into its pixels (a few thousand pixels per label), which keeps the overlay's cost per frame near
the English one (`monitor bench overlay`).

Font: labels.font when given, else fc-match's answer for Simplified Chinese, else known paths (Debian's
fonts-noto-cjk, WenQuanYi). A candidate counts only when it really has CJK glyphs (a Latin font fc-match falls
back to draws tofu). No font: cjk_text() returns None, the caller draws English, and one WARNING is logged.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

# Tried in order after fc-match; (path, face index in a collection: Noto's .ttc holds JP, KR, SC, TC, HK).
KNOWN_FONTS: tuple[tuple[str, int], ...] = (
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc", 2),
    ("/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc", 2),
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),
    ("/usr/share/fonts/truetype/arphic/uming.ttc", 0),
)
PROBE_TEXT = "中文标签"            # a font without these glyphs is no CJK font
CACHE_STRIPS = 512                # (text, size) strips kept; a camera shows a handful of labels at a time
_FC_MATCH_TIMEOUT = 3.0


@dataclass(frozen=True)
class Strip:
    """One rasterised text, cropped to its inked rows: per-pixel weights for cv2.blendLinear (one C++ pass:
    out = frame * keep + ink * alpha, about 3x faster than the same in numpy)."""
    keep: np.ndarray    # (h, w) float32: 1 - alpha
    alpha: np.ndarray   # (h, w) float32
    width: int
    height: int
    ascent: int         # pixels from the strip's top to the baseline
    inks: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict, compare=False)

    def ink(self, color: tuple[int, int, int]) -> np.ndarray:
        """A (h, w, 3) uint8 image of `color`, made once per colour (a race makes it twice: harmless)."""
        image = self.inks.get(color)
        if image is None:
            image = np.empty((self.height, self.width, 3), np.uint8)
            image[...] = color
            self.inks[color] = image
        return image


class FreeTypeText:
    """Draws any text of one font at pixel sizes, with a bounded cache of rasterised strips (thread-safe)."""

    def __init__(self, path: Path, index: int = 0) -> None:
        self.path = Path(path)
        self.index = index
        self._fonts: dict[int, ImageFont.FreeTypeFont] = {}
        self._strips: OrderedDict[tuple[str, int], Strip] = OrderedDict()
        self._lock = threading.Lock()     # FreeType faces are not safe to use from two threads at once
        self.rasterised = 0               # strips made (cache misses): tests and the bench read it
        self.font(16)                     # fail here, not on the first frame, when the file is no font

    def font(self, size: int) -> ImageFont.FreeTypeFont:
        font = self._fonts.get(size)
        if font is None:
            font = ImageFont.truetype(str(self.path), size, index=self.index)
            self._fonts[size] = font
        return font

    def name(self) -> str:
        family, style = self.font(16).getname()
        return f"{family} {style}".strip()

    def strip(self, text: str, size: int) -> Strip:
        key = (text, size)
        with self._lock:
            cached = self._strips.get(key)
            if cached is not None:
                self._strips.move_to_end(key)
                return cached
            made = self._rasterise(text, size)
            self._strips[key] = made
            if len(self._strips) > CACHE_STRIPS:
                self._strips.popitem(last=False)
            self.rasterised += 1
            return made

    def measure(self, text: str, size: int) -> tuple[int, int]:
        """(width, height) in pixels of `text` at `size` (its inked rows)."""
        s = self.strip(text, size)
        return s.width, s.height

    def draw(self, image: np.ndarray, text: str, x: int, baseline: int, size: int,
             color: tuple[int, int, int]) -> int:
        """Blend `text` into the BGR `image` with its baseline at y = `baseline`; returns the width drawn."""
        s = self.strip(text, size)
        top = baseline - s.ascent
        h, w = image.shape[:2]
        y0, x0 = max(0, top), max(0, x)
        y1, x1 = min(h, top + s.height), min(w, x + s.width)
        if y1 <= y0 or x1 <= x0:
            return s.width
        sy, sx = y0 - top, x0 - x
        rows, cols = slice(sy, sy + (y1 - y0)), slice(sx, sx + (x1 - x0))
        roi = image[y0:y1, x0:x1]
        roi[...] = cv2.blendLinear(roi, s.ink(color)[rows, cols], s.keep[rows, cols], s.alpha[rows, cols])
        return s.width

    def render_mask(self, text: str, size: int) -> np.ndarray:
        """The strip's coverage as uint8 (h, w): what tests compare a drawn frame against."""
        s = self.strip(text, size)
        return (s.alpha * 255.0 + 0.5).astype(np.uint8)

    def _rasterise(self, text: str, size: int) -> Strip:
        font = self.font(size)
        ascent, descent = font.getmetrics()
        left, _, right, _ = font.getbbox(text, anchor="ls")
        width = max(1, int(right) - min(0, int(left)) + 1)
        height = ascent + descent
        canvas = Image.new("L", (width, height), 0)
        ImageDraw.Draw(canvas).text((-min(0, int(left)), ascent), text, font=font, fill=255, anchor="ls")
        coverage = np.asarray(canvas)
        inked = np.flatnonzero(coverage.any(axis=1))
        top, bottom = (int(inked[0]), int(inked[-1]) + 1) if inked.size else (0, 1)
        alpha = np.ascontiguousarray(coverage[top:bottom], dtype=np.float32) / 255.0
        return Strip(keep=1.0 - alpha, alpha=alpha, width=width, height=bottom - top, ascent=ascent - top)


def has_glyphs(path: Path, index: int, text: str = PROBE_TEXT) -> bool:
    """True when the face draws every character of `text` (not the .notdef box a font shows for a missing one)."""
    try:
        font = ImageFont.truetype(str(path), 24, index=index)
    except OSError:
        return False
    missing = bytes(font.getmask("\ue000"))   # a private-use code point: no CJK font maps it, all draw .notdef
    return all(bytes(font.getmask(ch)) != missing for ch in text)


def find_cjk_font(configured: Path | None = None) -> tuple[Path, int] | None:
    """(font file, face index) able to draw Chinese: `configured`, fc-match's choice, then KNOWN_FONTS."""
    candidates: list[tuple[Path, int]] = []
    if configured is not None:
        configured = Path(configured)
        candidates += [(configured, i) for i in _face_order(configured)]
    candidates += _fc_match()
    candidates += [(Path(p), i) for p, i in KNOWN_FONTS if Path(p).is_file()]
    for path, index in candidates:
        if path.is_file() and has_glyphs(path, index):
            return path, index
    return None


def _face_order(path: Path) -> list[int]:
    """Faces of a font file to try: a collection's Simplified Chinese face first when it names one."""
    order: list[tuple[int, int]] = []
    for index in range(16):
        try:
            family = ImageFont.truetype(str(path), 16, index=index).getname()[0] or ""
        except OSError:
            break
        order.append((0 if " SC" in family or "Simplified" in family else 1, index))
    return [i for _, i in sorted(order)] or [0]


def _fc_match() -> list[tuple[Path, int]]:
    exe = shutil.which("fc-match")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-f", "%{file}|%{index}", "sans-serif:lang=zh-cn"], capture_output=True,
                             text=True, timeout=_FC_MATCH_TIMEOUT, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return []
    file, _, index = out.partition("|")
    if not file:
        return []
    return [(Path(file), int(index) if index.isdigit() else 0)]


_lock = threading.Lock()
_renderers: dict[Path | None, FreeTypeText | None] = {}


def cjk_text(configured: Path | None = None) -> FreeTypeText | None:
    """The process's CJK text renderer for `configured` (labels.font; None: found on the system), made once.
    None when no CJK font exists: the caller draws English; that is logged once as a WARNING."""
    with _lock:
        if configured in _renderers:
            return _renderers[configured]
        found = find_cjk_font(configured)
        renderer: FreeTypeText | None = None
        if found is None:
            where = (f"labels.font ({configured}) is missing or has no Chinese glyphs, and "
                     if configured is not None else "")
            log.warning("no CJK font: %sno font on the system draws Chinese (install fonts-noto-cjk or set "
                        "labels.font); the overlay shows English class names", where)
        else:
            if configured is not None and found[0] != configured:
                log.warning("labels.font (%s) is missing or has no Chinese glyphs; using %s", configured, found[0])
            renderer = FreeTypeText(*found)
            log.info("overlay draws Chinese with %s (%s)", renderer.name(), found[0])
        _renderers[configured] = renderer
        return renderer
