"""ResNet-18 for ImageNet-1k, float and quantizable, with torchvision's module names.

Parameter and buffer names equal torchvision's `resnet18`, so `resnet18-f37072fd.pth` loads with
`strict=True`; after `fuse_model()` + prepare + convert the quantizable form equals torchvision's quantizable
ResNet-18, so the official INT8 state dict `resnet18_fbgemm_16fa66dd.pth` loads into it unchanged.
torchvision itself is never imported (its registry build needs CUDA operators).
"""
from __future__ import annotations

import platform
import warnings
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

with warnings.catch_warnings():
    # torch.ao.quantization still works in 2.13 but announces its move to torchao on import.
    warnings.simplefilter("ignore")
    import torch.ao.quantization as tq
    from torch.ao.nn.quantized import Conv2d as QuantizedConv2d
    from torch.ao.nn.quantized import Linear as QuantizedLinear

NUM_CLASSES = 1000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class QuantizableBasicBlock(BasicBlock):
    """The residual add goes through FloatFunctional so that convert() can replace it with a quantized add."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # torchvision's quantizable block uses a non-inplace ReLU; keep the same so fusion patterns match.
        self.relu = nn.ReLU(inplace=False)
        self.add_relu = torch.ao.nn.quantized.FloatFunctional()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.add_relu.add_relu(out, identity)

    def fuse_model(self) -> None:
        tq.fuse_modules(self, [["conv1", "bn1", "relu"], ["conv2", "bn2"]], inplace=True)
        if self.downsample is not None:
            tq.fuse_modules(self.downsample, ["0", "1"], inplace=True)


class ResNet(nn.Module):
    arch = "resnet18"
    quantized_convs = 20                         # convolutions after fusion: all INT8 once converted
    float_modules: tuple[str, ...] = ("fc",)     # what quantize(..., quantize_fc=False) keeps float

    def __init__(self, block: type[BasicBlock], layers: Iterable[int], num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            setattr(self, f"layer{i + 1}", self._make_layer(block, planes, blocks, stride=1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so a seeded random network behaves like an untrained torchvision one.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: type[BasicBlock], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _forward_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        features = torch.flatten(self.avgpool(maps), 1)
        return self.fc(features), features, maps

    def _forward_impl(self, x: Tensor) -> Tensor:
        return self._forward_all(x)[0]

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_impl(x)

    def forward_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits, pooled features (the fc layer's input) and the layer4 feature maps, from one pass."""
        return self._forward_all(x)


class QuantizableResNet(ResNet):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.quant = tq.QuantStub()
        self.dequant = tq.DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self._forward_impl(self.quant(x)))

    def _forward_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        features = torch.flatten(self.avgpool(maps), 1)
        if features.is_quantized and type(self.fc) is nn.Linear:
            # A float last layer (quantize(..., quantize_fc=False)) takes the dequantized features.
            return self.fc(features.dequantize()), features, maps
        return self.fc(features), features, maps

    def forward_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, features, maps = self._forward_all(self.quant(x))
        return self.dequant(logits), self.dequant(features), self.dequant(maps)

    def fuse_model(self) -> None:
        tq.fuse_modules(self, ["conv1", "bn1", "relu"], inplace=True)
        for m in self.modules():
            if isinstance(m, QuantizableBasicBlock):
                m.fuse_model()


def resnet18(num_classes: int = NUM_CLASSES) -> ResNet:
    """Float ResNet-18 with torchvision's parameter names."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def quantizable_resnet18(num_classes: int = NUM_CLASSES) -> QuantizableResNet:
    """Float ResNet-18 ready for eager-mode quantization (fuse_model, prepare, convert)."""
    return QuantizableResNet(QuantizableBasicBlock, (2, 2, 2, 2), num_classes)


def default_engine() -> str:
    """`x86` on x86-64, `qnnpack` on ARM; checked against what this torch build supports."""
    supported = torch.backends.quantized.supported_engines
    machine = platform.machine().lower()
    wanted = ["qnnpack"] if machine in ("aarch64", "arm64", "armv7l") else ["x86", "fbgemm"]
    for engine in wanted:
        if engine in supported:
            return engine
    raise RuntimeError(f"no quantized engine for {machine}: torch supports {supported}, wanted one of {wanted}")


def quantize(model: QuantizableResNet, calibrate: Callable[[nn.Module], None], engine: str | None = None,
             qconfig_engine: str | None = None, quantize_fc: bool = True) -> nn.Module:
    """Fuse, observe with an explicit qconfig, run `calibrate(prepared_model)`, convert; assert it converted.

    `qconfig_engine` selects the observers (e.g. `fbgemm` to match the official INT8 checkpoint) while `engine`
    is the kernel backend the converted model runs on. `quantize_fc=False` keeps the last layer in float: the
    logits then keep their precision instead of one 8-bit (x86: 7-bit) step over their whole range, which ties
    close top classes; it costs 0.5 MMAC per frame, 0.03 % of the network.
    """
    engine = engine or default_engine()
    convs = sum(type(m) is nn.Conv2d for m in model.modules())   # fusion keeps one convolution per conv
    if engine not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"quantized engine {engine!r} not supported here ({torch.backends.quantized.supported_engines})")
    torch.backends.quantized.engine = engine
    model.eval()
    model.fuse_model()
    # torchvision's quantize_model has no x86 branch and silently stays float: always set the qconfig ourselves.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.qconfig = tq.get_default_qconfig(qconfig_engine or engine)
        if not quantize_fc:
            for name in getattr(model, "float_modules", ("fc",)):
                model.get_submodule(name).qconfig = None
        tq.prepare(model, inplace=True)
        with torch.inference_mode():
            calibrate(model)
        tq.convert(model, inplace=True)
    assert_quantized(model, quantize_fc, convs)
    return model


def assert_quantized(model: nn.Module, fc: bool = True, want_convs: int | None = None) -> None:
    want_convs = want_convs or int(getattr(model, "quantized_convs", 20))
    # the float classifier's linears (ResNet: fc; MobileNetV3: its hidden layer and its last one)
    want_linears = sum(isinstance(m, (nn.Linear, QuantizedLinear)) for m in model.modules()) if fc else 0
    convs = sum(isinstance(m, QuantizedConv2d) for m in model.modules())
    linears = sum(isinstance(m, QuantizedLinear) for m in model.modules())
    float_convs = sum(type(m) is nn.Conv2d for m in model.modules())
    if convs != want_convs or linears != want_linears or float_convs:
        raise RuntimeError(
            f"quantization did not convert the model: {convs} quantized convolutions (want {want_convs}), "
            f"{linears} quantized linear (want {want_linears}), {float_convs} float convolutions left")


def is_int8_state_dict(state_dict: dict) -> bool:
    return "quant.scale" in state_dict


def int8_from_state_dict(state_dict: dict, engine: str | None = None,
                         make: Callable[[], nn.Module] | None = None) -> nn.Module:
    """Rebuild the quantized model (`make()`: a quantizable network, default ResNet-18) from an INT8 state dict
    (an official fbgemm checkpoint or our own)."""
    model = (make or quantizable_resnet18)()

    def one_pass(m: nn.Module) -> None:
        # Observers need one forward before convert; the checkpoint then overwrites every scale and weight.
        m(torch.rand(1, 3, 224, 224))

    quantize(model, one_pass, engine=engine, qconfig_engine="fbgemm")
    model.load_state_dict(state_dict, strict=True)
    return model


class Normalize(nn.Module):
    """uint8 NHWC BGR batch -> float NCHW RGB normalised: done inside the graph, in C++, on all threads."""

    def __init__(self, mean: Iterable[float] = IMAGENET_MEAN, std: Iterable[float] = IMAGENET_STD) -> None:
        super().__init__()
        mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("offset", mean_t * 255.0)
        self.register_buffer("scale", 1.0 / (std_t * 255.0))

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 3, 1, 2).flip(1).float()
        return (x - self.offset) * self.scale


class Runtime(nn.Module):
    """What the artifact holds: uint8 BGR NHWC frames in; logits, pooled features and feature maps out."""

    def __init__(self, net: ResNet) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.net.forward_all(self.normalize(x))


def fc_params(net: ResNet) -> tuple[Tensor, Tensor]:
    """The last layer as the network computes it: float, or the dequantized INT8 weight of a converted model."""
    fc = net.fc
    if isinstance(fc, QuantizedLinear):
        weight, bias = fc.weight().dequantize(), fc.bias()
    else:
        weight, bias = fc.weight, fc.bias
    return weight.detach().float().contiguous(), bias.detach().float().contiguous()


def freeze(net: nn.Module, size: int = 224) -> torch.jit.ScriptModule:
    """Trace and freeze the runtime module (uint8 NHWC input) for fast loading and inference."""
    runtime = Runtime(net).eval()
    example = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(runtime, example, check_trace=False)
        return torch.jit.freeze(traced.eval())
