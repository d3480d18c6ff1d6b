"""Draw predictions, camera name, local time, fps and the event banner on a copy of a frame.

cv2 draws the ASCII text; Chinese class names (language "zh") go through monitor.render.text (FreeType, cached
strips), and without a CJK font the overlay falls back to English.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

from monitor.core import groups
from monitor.core.labels import display_name
from monitor.inference.heads.cam import overlay as heat_overlay
from monitor.render.text import FreeTypeText, cjk_text

if TYPE_CHECKING:
    from monitor.inference.classifier import Prediction
    from monitor.inference.results import CustomResult

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WHITE = (255, 255, 255)
_GREY = (200, 200, 200)
_BAR = (80, 200, 80)            # BGR green
_BANNER = (0, 0, 255)           # BGR red
_UNTRAINED = (0, 215, 255)      # BGR amber
_PANEL_DIM = 0.35               # panel keeps this fraction of the underlying brightness
_BASE_WIDTH = 1536.0            # font scale 0.5 at 768 px wide, 1.0 at 1536 px
_LABEL_CHARS = 24
_LABEL_CHARS_ZH = 12            # Chinese names are 1-9 characters, each about two Latin letters wide
_EVENT_ZH = "事件: "
_METRIC_TEXT = "Agjpqy"         # getTextSize's baseline depends on the text: measure with descenders, always

BANNER_COLOR = _BANNER


def _font_scale(width: int) -> float:
    return float(min(2.0, max(0.35, width / _BASE_WIDTH)))


def draw_overlay(image: np.ndarray, camera: str, predictions: Sequence[Prediction], fps: float | None,
                 active: Sequence[str], untrained: bool, when: float | None = None,
                 custom: Sequence[CustomResult] = (),
                 heatmap: tuple[np.ndarray, Sequence[int]] | None = None, language: str = "en",
                 font: Path | None = None) -> np.ndarray:
    """Return a new BGR image with the overlay drawn; `image` (shared by other readers) is never modified.

    Layout: a translucent panel top-left (camera, local time, fps, then one line per prediction with its score
    and a bar), an amber "UNTRAINED DEMO MODEL" marker top-right, and a solid red "EVENT: ..." banner along the
    bottom edge while `active` is non-empty. Sizes follow the image width so the text stays legible.
    `custom` adds one "head: class" line per custom head; `heatmap` (map, box) blends the class activation map
    over the region the network saw. `language` "zh" draws the class names and the banner in Chinese with
    the CJK font `font` (None: found on the system; none there: English).
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"draw_overlay: expected a BGR uint8 image of shape (H, W, 3), got "
                         f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
    out = heat_overlay(image, heatmap[0], heatmap[1]) if heatmap is not None else image.copy()
    h, w = out.shape[:2]
    scale = _font_scale(w)
    thick = max(1, int(round(scale * 2)))
    (_, text_h), baseline = cv2.getTextSize(_METRIC_TEXT, _FONT, scale, thick)
    line_h = text_h + baseline + max(3, int(6 * scale))
    pad = max(4, int(8 * scale))

    # --- panel: header + predictions
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() if when is None else when))
    header = f"{camera}  {stamp}" + (f"  {fps:.1f} fps" if fps is not None else "")
    cjk: FreeTypeText | None = cjk_text(font) if language == "zh" else None
    size = text_h + baseline        # the em of the CJK font matches the Latin text's line
    # (text, probability, drawn by FreeType)
    rows = [(display_name(p.index, "zh")[:_LABEL_CHARS_ZH], float(p.probability), True) if cjk is not None
            else (p.label[:_LABEL_CHARS], float(p.probability), False) for p in predictions]
    rows += [(f"{c.head}: {c.label}"[:_LABEL_CHARS], c.probability, False) for c in custom]
    label_w = max([cjk.measure(lbl, size)[0] if zh and cjk is not None
                   else cv2.getTextSize(lbl, _FONT, scale, thick)[0][0] for lbl, _, zh in rows] or [0])
    score_w = cv2.getTextSize("0.00", _FONT, scale, thick)[0][0]
    bar_max = max(20, int(120 * scale))
    header_w = cv2.getTextSize(header, _FONT, scale, thick)[0][0]
    panel_w = min(w, max(header_w, label_w + score_w + bar_max + 3 * pad) + 2 * pad)
    panel_h = min(h, line_h * (1 + len(rows)) + pad)
    roi = out[0:panel_h, 0:panel_w]
    # Dimming only the panel's ROI costs a fraction of a full-frame addWeighted.
    out[0:panel_h, 0:panel_w] = cv2.convertScaleAbs(roi, alpha=_PANEL_DIM)

    y = pad + text_h
    cv2.putText(out, header, (pad, y), _FONT, scale, _WHITE, thick, cv2.LINE_AA)
    for label, prob, zh in rows:
        y += line_h
        if zh and cjk is not None:
            cjk.draw(out, label, pad, y, size, _WHITE)
        else:
            cv2.putText(out, label, (pad, y), _FONT, scale, _WHITE, thick, cv2.LINE_AA)
        sx = pad + label_w + pad
        cv2.putText(out, f"{prob:.2f}", (sx, y), _FONT, scale, _GREY, thick, cv2.LINE_AA)
        bx = sx + score_w + pad
        bar_w = int(round(bar_max * min(1.0, max(0.0, prob))))
        if bar_w > 0:
            cv2.rectangle(out, (bx, y - text_h), (bx + bar_w, y), _BAR, cv2.FILLED)
        cv2.rectangle(out, (bx, y - text_h), (bx + bar_max, y), _GREY, 1)

    # --- untrained marker, top-right
    if untrained:
        text = "UNTRAINED DEMO MODEL"
        (tw, th), tb = cv2.getTextSize(text, _FONT, scale, thick)
        tb = cv2.getTextSize(_METRIC_TEXT, _FONT, scale, thick)[1]
        x0 = max(0, w - tw - 2 * pad)
        cv2.rectangle(out, (x0, 0), (w, th + tb + 2 * pad), (0, 0, 0), cv2.FILLED)
        cv2.putText(out, text, (x0 + pad, pad + th), _FONT, scale, _UNTRAINED, thick, cv2.LINE_AA)

    # --- event banner, bottom edge, solid red
    if active:
        bh = banner_height(w)
        (_, th), tb = cv2.getTextSize(_METRIC_TEXT, _FONT, scale * 1.2, thick + 1)
        cv2.rectangle(out, (0, h - bh), (w, h), _BANNER, cv2.FILLED)
        if cjk is not None:
            text = _EVENT_ZH + ", ".join(dict.fromkeys(groups.display_name(a, "zh") for a in active))
            cjk.draw(out, text, pad, h - pad - tb, th + tb, _WHITE)
        else:
            text = "EVENT: " + ", ".join(dict.fromkeys(active))
            cv2.putText(out, text, (pad, h - pad - tb), _FONT, scale * 1.2, _WHITE, thick + 1, cv2.LINE_AA)
    return out


def banner_height(width: int) -> int:
    """Height in pixels of the event banner for an image this wide (lets tests and the web UI locate it)."""
    scale = _font_scale(width)
    thick = max(1, int(round(scale * 2)))
    (_, th), tb = cv2.getTextSize(_METRIC_TEXT, _FONT, scale * 1.2, thick + 1)
    return th + tb + 2 * max(4, int(8 * scale))
