"""Why the network chose a class: a map over the last feature maps, for every backbone, in numpy.

ResNets: the classifier is linear on the global-average-pooled features, so the class activation map
map_c = sum_k w_ck F_k is exact (monitor/inference/heads/cam.py): its mean plus the bias is the logit.

MobileNetV3-Large: logits = W2 hardswish(W1 f + b1) + b2 on the pooled features f = mean_xy F. No map is exact
there; Grad-CAM weighs each channel by the gradient of the class logit. The gradient is analytic, so it needs
neither autograd nor a runtime that has gradients (the OpenVINO daemon has none): the artifact carries the float
classifier (the INT8 network keeps it float, so these are the very weights it runs), and

    d logit_c / d f = W1^T (W2[c] * hardswish'(W1 f + b1)),      alpha_k = (1 / HW) d logit_c / d f_k
    map_c = ReLU(sum_k alpha_k F_k)

(alpha_k is Grad-CAM's spatial mean of d logit_c / d F_k(x, y), each pixel holding 1/HW of f_k). One
(N, 960) x (960, 1280) product and its transpose per batch, ~2.5 MMAC per frame. tests/test_backbones.py checks
it against torch autograd on the float network.
"""
from __future__ import annotations

import numpy as np

from monitor.inference.archs import ArchSpec
from monitor.inference.heads.cam import activation_maps


def hardswish(x: np.ndarray) -> np.ndarray:
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def hardswish_grad(x: np.ndarray) -> np.ndarray:
    # torch's hardswish_backward: 0 below -3, x/3 + 1/2 up to 3 (inclusive), 1 above
    return np.where(x < -3.0, 0.0, np.where(x <= 3.0, x / 3.0 + 0.5, 1.0)).astype(np.float32)


class Explainer:
    """Class maps for one artifact's classifier: exact CAM, or analytic Grad-CAM through its hidden layer."""

    def __init__(self, spec: ArchSpec, fc_weight: np.ndarray, fc_bias: np.ndarray,
                 hidden_weight: np.ndarray | None = None, hidden_bias: np.ndarray | None = None) -> None:
        self.spec = spec
        self.method = spec.explain
        self.fc_weight, self.fc_bias = fc_weight, fc_bias
        self.hidden_weight, self.hidden_bias = hidden_weight, hidden_bias
        if spec.hidden and (hidden_weight is None or hidden_bias is None):
            raise ValueError(f"{spec.title}: Grad-CAM needs the classifier's hidden layer")

    def logits(self, pooled: np.ndarray) -> np.ndarray:
        """(N, D) pooled features -> (N, classes): the classifier as the network runs it (float)."""
        x = np.asarray(pooled, np.float32)
        if self.hidden_weight is not None and self.hidden_bias is not None:
            x = hardswish(x @ self.hidden_weight.T + self.hidden_bias)
        return x @ self.fc_weight.T + self.fc_bias

    def channel_weights(self, pooled: np.ndarray, classes: np.ndarray, pixels: int | None = None) -> np.ndarray:
        """(N, D) weights per feature-map channel for class classes[n]: CAM's class row, or Grad-CAM's alpha
        (`pixels`: H x W of the feature maps the pooled features are the mean of)."""
        classes = np.asarray(classes, dtype=np.intp)
        if self.hidden_weight is None or self.hidden_bias is None:
            return self.fc_weight[classes]
        pre = np.asarray(pooled, np.float32) @ self.hidden_weight.T + self.hidden_bias      # (N, 1280)
        grad_hidden = self.fc_weight[classes] * hardswish_grad(pre)                          # (N, 1280)
        grad_pooled = grad_hidden @ self.hidden_weight                                       # (N, 960)
        return grad_pooled / float(pixels or self.spec.map_size * self.spec.map_size)

    def maps(self, feature_maps: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """(N, D, H, W) feature maps, (N,) class per frame -> (N, H, W) float32 maps (larger = more evidence)."""
        feature_maps = np.asarray(feature_maps, np.float32)
        if not len(feature_maps):
            return np.zeros(feature_maps.shape[:1] + feature_maps.shape[2:], np.float32)
        if self.method == "cam":
            return activation_maps(feature_maps, self.fc_weight[np.asarray(classes, dtype=np.intp)])
        weights = self.channel_weights(feature_maps.mean(axis=(2, 3)), classes,
                                       feature_maps.shape[2] * feature_maps.shape[3])
        return np.maximum(activation_maps(feature_maps, weights), 0.0)
