"""Class activation maps: where in the picture a class's score comes from.

For a network ending in global average pooling + a linear layer (ResNet-18, and every head on its pooled
features), the logit of class c is  b_c + sum_k w_ck * mean_xy F_k(x, y)  =  b_c + mean_xy [sum_k w_ck F_k(x, y)].
So map_c(x, y) = sum_k w_ck F_k(x, y) is exact, needs no gradients (unlike Grad-CAM), and its spatial mean plus
the bias is the logit: one (512,) x (512, 7, 7) product per frame.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def pooled_features(feature_maps: np.ndarray) -> np.ndarray:
    """(N, D, H, W) -> (N, D): the float spatial mean of the (dequantized) layer4 maps.

    Heads read this rather than the INT8 network's own pooled output, which is requantized to a coarser step
    (up to ~3 % apart): with it a head's logit is exactly its class activation map's mean plus its bias, and it
    is finer. 512 x 49 additions per frame."""
    return np.asarray(feature_maps, np.float32).mean(axis=(2, 3))


def activation_map(feature_maps: np.ndarray, weight_row: np.ndarray) -> np.ndarray:
    """(D, H, W) feature maps x (D,) class weights -> (H, W) float32 map (bias not included)."""
    return np.tensordot(np.asarray(weight_row, np.float32), np.asarray(feature_maps, np.float32), axes=(0, 0))


def activation_maps(feature_maps: np.ndarray, weight_rows: np.ndarray) -> np.ndarray:
    """(N, D, H, W) x (N, D) (one class row per frame) -> (N, H, W) float32."""
    return np.einsum("nd,ndhw->nhw", np.asarray(weight_rows, np.float32), np.asarray(feature_maps, np.float32))


def normalise(cam: np.ndarray) -> np.ndarray:
    """Map to 0..1 over the frame (min to max), the usual CAM display; a flat map becomes all zeros."""
    lo, hi = float(cam.min()), float(cam.max())
    if hi - lo < 1e-12:
        return np.zeros_like(cam, dtype=np.float32)
    return ((cam - lo) / (hi - lo)).astype(np.float32)


def overlay(frame: np.ndarray, cam: np.ndarray, box: Sequence[int], alpha: float = 0.45) -> np.ndarray:
    """A copy of the BGR frame with the map, upsampled over `box` (x, y, w, h: the crop the network saw),
    blended in as a JET colour map (red = the class's evidence)."""
    x, y, w, h = (int(v) for v in box)
    out = frame.copy()
    heat = cv2.resize(normalise(cam), (w, h), interpolation=cv2.INTER_CUBIC)
    colour = cv2.applyColorMap(np.clip(heat * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    region = out[y:y + h, x:x + w]
    cv2.addWeighted(colour[:region.shape[0], :region.shape[1]], alpha, region, 1.0 - alpha, 0.0, dst=region)
    return out
