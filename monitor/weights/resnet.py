"""ResNet-50 for ImageNet-1k, float and quantizable, with torchvision's module names.

The Bottleneck block (1x1 -> 3x3 -> 1x1, expansion 4) on the ResNet body of model.py: parameter names equal
torchvision's `resnet50`, so `resnet50-0676ba61.pth` loads with `strict=True` (25,557,032 parameters). The
quantizable block follows torchvision's models/quantization/resnet.py (separate relu1/relu2 so each fuses with
its convolution, the residual add + ReLU through FloatFunctional), so the official INT8 state dict
`resnet50_fbgemm_bf931d71.pth` loads into the converted network unchanged.
"""
from __future__ import annotations

import warnings

from torch import Tensor, nn

from monitor.weights.model import NUM_CLASSES, QuantizableResNet, ResNet

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import torch.ao.quantization as tq
    from torch.ao.nn.quantized import FloatFunctional


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # torchvision (v1.5) strides in the 3x3 convolution, not the first 1x1
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class QuantizableBottleneck(Bottleneck):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.skip_add_relu = FloatFunctional()
        self.relu1 = nn.ReLU(inplace=False)
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.skip_add_relu.add_relu(out, identity)

    def fuse_model(self) -> None:
        tq.fuse_modules(self, [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["conv3", "bn3"]], inplace=True)
        if self.downsample is not None:
            tq.fuse_modules(self.downsample, ["0", "1"], inplace=True)


class QuantizableResNet50(QuantizableResNet):
    arch = "resnet50"
    quantized_convs = 53      # stem + 16 blocks x 3 + 4 downsamples

    def fuse_model(self) -> None:
        tq.fuse_modules(self, ["conv1", "bn1", "relu"], inplace=True)
        for m in self.modules():
            if isinstance(m, QuantizableBottleneck):
                m.fuse_model()


class ResNet50(ResNet):
    arch = "resnet50"
    quantized_convs = 53


def resnet50(num_classes: int = NUM_CLASSES) -> ResNet:
    """Float ResNet-50 with torchvision's parameter names."""
    return ResNet50(Bottleneck, (3, 4, 6, 3), num_classes)  # type: ignore[arg-type]


def quantizable_resnet50(num_classes: int = NUM_CLASSES) -> QuantizableResNet:
    """Float ResNet-50 ready for eager-mode quantization (fuse_model, prepare, convert)."""
    return QuantizableResNet50(QuantizableBottleneck, (3, 4, 6, 3), num_classes)  # type: ignore[arg-type]
