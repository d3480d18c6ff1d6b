"""MobileNetV3-Large for ImageNet-1k, float and quantizable, with torchvision's module names.

The parameter names equal torchvision's `mobilenet_v3_large`, so `mobilenet_v3_large-8738ca79.pth` loads with
`strict=True` (5,483,032 parameters). The quantizable form follows torchvision's models/quantization/mobilenetv3.py:
Conv-BN(-ReLU) fused, Hardswish quantized as its own op, the squeeze-excitation's multiply and the residual add
through FloatFunctional, its gate a Hardsigmoid (which runs on quantized tensors as it is).

Unlike ResNet, the classifier is not linear on the pooled features: Linear(960, 1280) -> Hardswish -> Dropout ->
Linear(1280, 1000). It stays in float after quantization (quantize(..., quantize_fc=False)): 2.5 MMAC of the
network's ~220, and the runtime's Grad-CAM (monitor/inference/gradcam.py) then reproduces exactly what the
network computes after the pooled features.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import Tensor, nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import torch.ao.quantization as tq
    from torch.ao.nn.quantized import FloatFunctional

NUM_CLASSES = 1000
LAST_CONV = 960      # channels of the last feature map = the pooled features
HIDDEN = 1280        # the classifier's hidden layer


def _make_divisible(v: float, divisor: int = 8) -> int:
    # torchvision's rounding of channel counts (from the TensorFlow reference): never below 90 % of v.
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


_BatchNorm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


class ConvBNActivation(nn.Sequential):
    """torchvision's Conv2dNormActivation: children "0" conv, "1" batch norm, "2" activation (when there is one)."""

    def __init__(self, inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 activation: Callable[..., nn.Module] | None = nn.ReLU) -> None:
        layers: list[nn.Module] = [nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                                   _BatchNorm(out)]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation with MobileNetV3's Hardsigmoid gate."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def _scale(self, x: Tensor) -> Tensor:
        return self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))

    def forward(self, x: Tensor) -> Tensor:
        return self._scale(x) * x


class QuantizableSqueezeExcitation(SqueezeExcitation):
    def __init__(self, *args: int) -> None:
        super().__init__(*args)
        self.skip_mul = FloatFunctional()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip_mul.mul(self._scale(x), x)

    def fuse_model(self, is_qat: bool = False) -> None:
        fuse = tq.fuse_modules_qat if is_qat else tq.fuse_modules
        fuse(self, ["fc1", "activation"], inplace=True)


@dataclass(frozen=True)
class BlockConfig:
    inp: int
    kernel: int
    expanded: int
    out: int
    use_se: bool
    hardswish: bool
    stride: int


# torchvision's _mobilenet_v3_conf("mobilenet_v3_large") at width 1.0, dilation 1.
LARGE: tuple[BlockConfig, ...] = tuple(BlockConfig(*c) for c in (
    (16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2), (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2), (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1), (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1), (160, 5, 960, 160, True, True, 1)))


class InvertedResidual(nn.Module):
    se_layer: type[SqueezeExcitation] = SqueezeExcitation

    def __init__(self, cnf: BlockConfig) -> None:
        super().__init__()
        self.use_res_connect = cnf.stride == 1 and cnf.inp == cnf.out
        act: Callable[..., nn.Module] = nn.Hardswish if cnf.hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if cnf.expanded != cnf.inp:
            layers.append(ConvBNActivation(cnf.inp, cnf.expanded, 1, activation=act))
        layers.append(ConvBNActivation(cnf.expanded, cnf.expanded, cnf.kernel, cnf.stride, groups=cnf.expanded,
                                       activation=act))
        if cnf.use_se:
            layers.append(self.se_layer(cnf.expanded, _make_divisible(cnf.expanded // 4, 8)))
        layers.append(ConvBNActivation(cnf.expanded, cnf.out, 1, activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        result = self.block(x)
        return result + x if self.use_res_connect else result


class QuantizableInvertedResidual(InvertedResidual):
    se_layer = QuantizableSqueezeExcitation

    def __init__(self, cnf: BlockConfig) -> None:
        super().__init__(cnf)
        self.skip_add = FloatFunctional()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip_add.add(x, self.block(x)) if self.use_res_connect else self.block(x)


class MobileNetV3(nn.Module):
    arch = "mobilenet_v3_large"
    # stem + 15 blocks (expand if any, depthwise, project) + 8 squeeze-excitations x 2 + the last 1x1
    quantized_convs = 62
    block: type[InvertedResidual] = InvertedResidual
    # the modules that stay float in the INT8 network (quantize(..., quantize_fc=False))
    float_modules: tuple[str, ...] = ("classifier",)

    def __init__(self, num_classes: int = NUM_CLASSES, config: tuple[BlockConfig, ...] = LARGE) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNActivation(3, config[0].inp, 3, 2, activation=nn.Hardswish)]
        layers += [self.block(c) for c in config]
        layers.append(ConvBNActivation(config[-1].out, 6 * config[-1].out, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(6 * config[-1].out, HIDDEN), nn.Hardswish(inplace=True),
                                        nn.Dropout(p=0.2, inplace=True), nn.Linear(HIDDEN, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so a seeded random network behaves like an untrained torchvision one.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _forward_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        maps = self.features(x)
        features = torch.flatten(self.avgpool(maps), 1)
        return self.classifier(features), features, maps

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_all(x)[0]

    def forward_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits, pooled features (960, the classifier's input) and the last feature maps, from one pass."""
        return self._forward_all(x)

    @property
    def fc(self) -> nn.Linear:
        """The last layer (the one whose rows are the classes)."""
        return self.classifier[3]


class QuantizableMobileNetV3(MobileNetV3):
    block = QuantizableInvertedResidual

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.quant = tq.QuantStub()
        self.dequant = tq.DeQuantStub()

    def _forward_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        maps = self.features(x)
        features = torch.flatten(self.avgpool(maps), 1)
        if features.is_quantized and type(self.classifier[0]) is nn.Linear:
            return self.classifier(features.dequantize()), features, maps
        return self.classifier(features), features, maps

    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self._forward_all(self.quant(x))[0])

    def forward_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, features, maps = self._forward_all(self.quant(x))
        return self.dequant(logits), self.dequant(features), self.dequant(maps)

    def fuse_model(self, is_qat: bool = False) -> None:
        fuse = tq.fuse_modules_qat if is_qat else tq.fuse_modules
        for m in self.modules():
            if type(m) is ConvBNActivation:
                names = ["0", "1"] + (["2"] if len(m) == 3 and type(m[2]) is nn.ReLU else [])
                fuse(m, names, inplace=True)
            elif type(m) is QuantizableSqueezeExcitation:
                m.fuse_model(is_qat)


def mobilenet_v3_large(num_classes: int = NUM_CLASSES) -> MobileNetV3:
    """Float MobileNetV3-Large with torchvision's parameter names."""
    return MobileNetV3(num_classes)


def quantizable_mobilenet_v3_large(num_classes: int = NUM_CLASSES) -> QuantizableMobileNetV3:
    """Float MobileNetV3-Large ready for eager-mode quantization (fuse_model, prepare, convert)."""
    return QuantizableMobileNetV3(num_classes)


def classifier_mlp(net: MobileNetV3) -> dict[str, Tensor]:
    """The float classifier as the runtime's Grad-CAM reads it: hidden (1280, 960) + bias, last (1000, 1280) + bias."""
    hidden, last = net.classifier[0], net.classifier[3]
    if not (type(hidden) is nn.Linear and type(last) is nn.Linear):
        raise RuntimeError(f"the classifier must stay float for Grad-CAM, got {type(hidden).__name__}, "
                           f"{type(last).__name__}")
    return {name: t.detach().float().contiguous() for name, t in (
        ("hidden_weight", hidden.weight), ("hidden_bias", hidden.bias),
        ("fc_weight", last.weight), ("fc_bias", last.bias))}
