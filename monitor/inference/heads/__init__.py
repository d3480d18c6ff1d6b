"""Custom classes: small linear heads on the backbone's pooled features (512-d for ResNet-18, 2048 ResNet-50, 960
MobileNetV3); one backbone pass serves all.

    head.py      Head (weights, class names, backbone sha256, training summary), load/save, HeadError
    softmax.py   multinomial logistic regression with L2 in numpy (training)
    examples.py  example images/videos from a folder per class, light augmentation
    training.py  train_head(): features, cross-validated accuracy per class, final fit
    cam.py       class activation maps (exact for global average pool + linear) and their rendering
"""
from __future__ import annotations

from monitor.inference.heads.head import Head, HeadError, load_head, save_head

__all__ = ["Head", "HeadError", "load_head", "save_head"]
