"""The backbones `monitor weights` builds (`--arch`): their torch definitions, official checkpoints' formats, and
what goes into an artifact besides the network (the classifier's float weights).

The runtime's view of the same backbones (feature size, classifier shape, CAM or Grad-CAM) is
monitor/inference/archs.py; the names here are its keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from monitor.inference import artifact
from monitor.inference.archs import ARCHS, DEFAULT_ARCH, ArchSpec
from monitor.inference.locate import WeightsError
from monitor.weights import mobilenet, model, resnet


@dataclass(frozen=True)
class Backbone:
    name: str
    float_net: Callable[[], nn.Module]         # torchvision's float layout (the FP32 checkpoint loads strict)
    quantizable: Callable[[], nn.Module]       # the same parameters, ready for fuse + prepare + convert
    marker: str                                # a state-dict key only this backbone has (any precision)

    @property
    def spec(self) -> ArchSpec:
        return ARCHS[self.name]


BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone("resnet18", model.resnet18, model.quantizable_resnet18, "layer1.1.conv2.weight"),
    Backbone("resnet50", resnet.resnet50, resnet.quantizable_resnet50, "layer1.0.conv3.weight"),
    Backbone("mobilenet_v3_large", mobilenet.mobilenet_v3_large, mobilenet.quantizable_mobilenet_v3_large,
             "features.16.0.weight"),
)}
NAMES = tuple(BACKBONES)


def backbone(name: str | None) -> Backbone:
    try:
        return BACKBONES[name or DEFAULT_ARCH]
    except KeyError:
        raise WeightsError(f"unknown backbone {name!r}: choose one of {', '.join(NAMES)}") from None


def arch_of(net: nn.Module) -> str:
    return str(getattr(net, "arch", DEFAULT_ARCH))


def detect(state_dict: dict[str, Any]) -> str | None:
    """The backbone a torchvision-layout state dict (float, INT8 or QAT) belongs to, from its key names."""
    keys = set(state_dict)
    # ResNet-50 also has layer1.1.conv2.weight: test the more specific markers first
    for name in ("mobilenet_v3_large", "resnet50", "resnet18"):
        if BACKBONES[name].marker in keys:
            return name
    return None


def last_layer_input(net: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """What the last layer reads: the pooled features (ResNet), or MobileNetV3's hidden layer output."""
    if isinstance(net, mobilenet.MobileNetV3):
        return net.classifier[:3](pooled)
    return pooled


def classifier_parts(net: nn.Module) -> dict[str, bytes]:
    """The artifact's float classifier parts: the last layer, and a hidden layer where there is one."""
    if isinstance(net, mobilenet.MobileNetV3):
        mlp = mobilenet.classifier_mlp(net)
        return {**artifact.fc_parts(mlp["fc_weight"].numpy(), mlp["fc_bias"].numpy()),
                **artifact.hidden_parts(mlp["hidden_weight"].numpy(), mlp["hidden_bias"].numpy())}
    weight, bias = model.fc_params(net)
    return artifact.fc_parts(weight.numpy(), bias.numpy())
