"""ResNet-18 key layouts equal torchvision's, float and quantized; quantization really converts."""
from __future__ import annotations

import pytest
import torch

from monitor import weights
from monitor.weights import model

BLOCK_CONVS = ("conv1", "conv2")
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_resnet18_keys() -> list[str]:
    """torchvision `resnet18().state_dict()` key names, written out from its naming scheme."""
    keys = ["conv1.weight"] + [f"bn1.{k}" for k in BN_KEYS]
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}"
            keys += [f"{p}.conv1.weight"] + [f"{p}.bn1.{k}" for k in BN_KEYS]
            keys += [f"{p}.conv2.weight"] + [f"{p}.bn2.{k}" for k in BN_KEYS]
            if layer > 1 and block == 0:
                keys += [f"{p}.downsample.0.weight"] + [f"{p}.downsample.1.{k}" for k in BN_KEYS]
    return keys + ["fc.weight", "fc.bias"]


def torchvision_quantized_resnet18_keys() -> set[str]:
    """Keys of torchvision's fused, converted quantizable ResNet-18 (resnet18_fbgemm_16fa66dd.pth)."""
    conv = ("weight", "bias", "scale", "zero_point")
    keys = {f"conv1.{k}" for k in conv} | {"quant.scale", "quant.zero_point"}
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}"
            keys |= {f"{p}.{c}.{k}" for c in BLOCK_CONVS for k in conv}
            keys |= {f"{p}.add_relu.scale", f"{p}.add_relu.zero_point"}
            if layer > 1 and block == 0:
                keys |= {f"{p}.downsample.0.{k}" for k in conv}
    return keys | {"fc.scale", "fc.zero_point", "fc._packed_params.dtype", "fc._packed_params._packed_params"}


def test_float_keys_equal_torchvision() -> None:
    assert list(model.resnet18().state_dict()) == torchvision_resnet18_keys()
    assert list(model.quantizable_resnet18().state_dict()) == torchvision_resnet18_keys()


def test_torchvision_layout_checkpoint_loads_strict(tmp_path) -> None:
    shapes = model.resnet18().state_dict()
    torch.manual_seed(1)
    checkpoint = {k: torch.randn(shapes[k].shape) if shapes[k].is_floating_point() else shapes[k].clone()
                  for k in torchvision_resnet18_keys()}
    path = tmp_path / "resnet18-test.pth"
    torch.save(checkpoint, path)
    net = weights.float_model_from_state_dict(weights.load_checkpoint(path), path)
    assert torch.equal(net.layer3[0].downsample[0].weight, checkpoint["layer3.0.downsample.0.weight"])


@pytest.mark.parametrize("fault", ["missing", "renamed", "shape"])
def test_wrong_checkpoint_refused(tmp_path, fault: str) -> None:
    sd = model.resnet18().state_dict()
    if fault == "missing":
        del sd["fc.bias"]
    elif fault == "renamed":
        sd["module.fc.weight"] = sd.pop("fc.weight")
    else:
        sd["fc.weight"] = torch.zeros(10, 512)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(weights.WeightsError) as err:
        weights.float_model_from_state_dict(weights.load_checkpoint(path), path)
    assert str(path) in str(err.value)
    if fault != "shape":
        assert "fc." in str(err.value)


def test_not_a_checkpoint_refused(tmp_path) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(weights.WeightsError, match="junk.pth: not a PyTorch checkpoint"):
        weights.load_checkpoint(path)


def test_quantized_layout_equals_torchvision_and_reloads() -> None:
    torch.manual_seed(0)
    q = model.quantize(model.quantizable_resnet18(), lambda m: m(torch.randn(2, 3, 224, 224)))
    sd = q.state_dict()
    assert set(sd) == torchvision_quantized_resnet18_keys()
    assert model.is_int8_state_dict(sd)
    again = model.int8_from_state_dict(sd)  # the path the official INT8 checkpoint takes
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(q(x), again(x))


def test_quantize_converts_and_detects_float() -> None:
    engine = model.default_engine()
    assert engine in torch.backends.quantized.supported_engines
    q = model.quantize(model.quantizable_resnet18(), lambda m: m(torch.randn(1, 3, 224, 224)))
    model.assert_quantized(q)
    assert q.conv1.weight().is_quantized
    with pytest.raises(RuntimeError, match="did not convert"):
        model.assert_quantized(model.quantizable_resnet18())


def test_unsupported_engine_is_refused() -> None:
    with pytest.raises(RuntimeError, match="not supported"):
        model.quantize(model.quantizable_resnet18(), lambda m: None, engine="no-such-engine")
