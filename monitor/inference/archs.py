"""The backbones an artifact can hold, as the runtime sees them: pooled feature size and classifier shape.

No torch here: the daemon checks an artifact against this table on every load (monitor/inference/classifier.py),
and chooses how `explain` is computed (monitor/inference/explain.py). The networks themselves are defined at
build time in monitor/weights/ (model.py, resnet.py, mobilenet.py) with torchvision's parameter names.
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_ARCH = "resnet18"   # what an artifact without an `arch` field (made before there was a choice) holds


@dataclass(frozen=True)
class ArchSpec:
    name: str          # torchvision's builder name, and the artifact header's `arch`
    title: str
    features: int      # pooled features: the heads' input, the feature maps' channels
    hidden: int        # 0: the classifier is linear on the pooled features; else its hidden layer's width
    map_size: int      # feature map height = width at the 224 crop

    @property
    def explain(self) -> str:
        """`cam` (exact: linear on pooled features) or `grad-cam` (a hidden layer between them and the logits)."""
        return "grad-cam" if self.hidden else "cam"

    @property
    def classifier_in(self) -> int:
        """Columns of the last layer's weight (the artifact's `fc_weight`)."""
        return self.hidden or self.features


ARCHS: dict[str, ArchSpec] = {a.name: a for a in (
    ArchSpec("resnet18", "ResNet-18", 512, 0, 7),
    ArchSpec("resnet50", "ResNet-50", 2048, 0, 7),
    # Linear(960, 1280) -> Hardswish -> Dropout -> Linear(1280, 1000)
    ArchSpec("mobilenet_v3_large", "MobileNetV3-Large", 960, 1280, 7),
)}


def arch_spec(name: str) -> ArchSpec | None:
    return ARCHS.get(name)
