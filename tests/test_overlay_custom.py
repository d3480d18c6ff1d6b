"""The overlay shows custom heads' answers as extra lines and the class activation map over the crop."""
from __future__ import annotations

import numpy as np

from monitor.inference.classifier import Prediction
from monitor.render.overlay import draw_overlay
from monitor.inference.results import CustomResult


def panel_height(img: np.ndarray, base: np.ndarray) -> int:
    dimmed = (img[:, 0] < base[:, 0] - 40).all(axis=1)   # left column: the panel dims it
    return int(np.argmin(dimmed)) if not dimmed.all() else img.shape[0]


def test_custom_lines_extend_the_panel_and_heatmap_covers_the_box() -> None:
    base = np.full((432, 768, 3), 200, np.uint8)
    preds = [Prediction("tabby", 281, 0.8)]
    plain = draw_overlay(base, "front", preds, 5.0, [], False, when=0)
    custom = [CustomResult("porch", ("none", "package"), np.array([0.1, 0.9], np.float32)),
              CustomResult("door", ("closed", "open"), np.array([0.7, 0.3], np.float32))]
    more = draw_overlay(base, "front", preds, 5.0, [], False, when=0, custom=custom)
    assert panel_height(more, base) > panel_height(plain, base)
    heat = np.zeros((7, 7), np.float32)
    heat[3, 3] = 1.0
    hot = draw_overlay(base, "front", preds, 5.0, [], False, when=0, heatmap=(heat, (195, 27, 378, 378)))
    centre, corner, outside = hot[216, 384].astype(int), hot[400, 200].astype(int), hot[216, 760].astype(int)
    assert (outside == 200).all()                      # right of the box: untouched
    assert centre[2] > centre[0] + 40                  # the evidence is red (BGR) ...
    assert corner[0] > corner[2] + 40                  # ... the rest blue
    assert (base == 200).all()                         # the shared frame is never modified
