"""The official checkpoints: where they live, their download (stream + sha256 + atomic move), loading them."""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from monitor.core.redact import redact_url
from monitor.inference.locate import WeightsError
from monitor.weights import backbones, model


BASE_URL_ENV = "MONITOR_WEIGHTS_BASE_URL"


@dataclass(frozen=True)
class WeightsDescriptor:
    """One official checkpoint: where it lives, its hash prefix, what it holds (torchvision's Weights enum)."""
    variant: str                  # "int8" | "fp32"
    url: str
    sha256_prefix: str
    precision: str                # what the file holds
    qconfig_engine: str           # observers it was quantized with ("" for float)
    accuracy_top1: float
    description: str
    arch: str = "resnet18"        # monitor/weights/backbones.py
    # The label order of torchvision's ImageNet-1k checkpoints (all three backbones share it): the artifact's
    # labels come from monitor/core/labels.py imagenet_classes().
    categories: str = "imagenet-1k"
    qat: bool = False             # a quantization-aware-training state dict: fuse, prepare_qat, load, convert

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def url_from(self, base_url: str | None) -> str:
        return f"{base_url.rstrip('/')}/{self.filename}" if base_url else self.url


OFFICIAL_BY_ARCH: dict[str, dict[str, WeightsDescriptor]] = {"resnet18": {
    "int8": WeightsDescriptor(
        variant="int8",
        url="https://download.pytorch.org/models/quantized/resnet18_fbgemm_16fa66dd.pth",
        sha256_prefix="16fa66dd", precision="int8", qconfig_engine="fbgemm", accuracy_top1=69.494,
        description="torchvision ResNet18_QuantizedWeights.IMAGENET1K_FBGEMM_V1"),
    "fp32": WeightsDescriptor(
        variant="fp32",
        url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
        sha256_prefix="f37072fd", precision="fp32", qconfig_engine="", accuracy_top1=69.758,
        description="torchvision ResNet18_Weights.IMAGENET1K_V1"),
}, "resnet50": {
    "int8": WeightsDescriptor(
        variant="int8", arch="resnet50",
        url="https://download.pytorch.org/models/quantized/resnet50_fbgemm_bf931d71.pth",
        sha256_prefix="bf931d71", precision="int8", qconfig_engine="fbgemm", accuracy_top1=75.920,
        description="torchvision ResNet50_QuantizedWeights.IMAGENET1K_FBGEMM_V1"),
    "fp32": WeightsDescriptor(
        variant="fp32", arch="resnet50",
        url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
        sha256_prefix="0676ba61", precision="fp32", qconfig_engine="", accuracy_top1=76.130,
        description="torchvision ResNet50_Weights.IMAGENET1K_V1"),
}, "mobilenet_v3_large": {
    "int8": WeightsDescriptor(
        variant="int8", arch="mobilenet_v3_large", qat=True,
        url="https://download.pytorch.org/models/quantized/mobilenet_v3_large_qnnpack-5bcacf28.pth",
        sha256_prefix="5bcacf28", precision="int8", qconfig_engine="qnnpack", accuracy_top1=73.004,
        description="torchvision MobileNet_V3_Large_QuantizedWeights.IMAGENET1K_QNNPACK_V1 (QAT state dict)"),
    "fp32": WeightsDescriptor(
        variant="fp32", arch="mobilenet_v3_large",
        url="https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth",
        sha256_prefix="8738ca79", precision="fp32", qconfig_engine="", accuracy_top1=74.042,
        description="torchvision MobileNet_V3_Large_Weights.IMAGENET1K_V1"),
}}
OFFICIAL: dict[str, WeightsDescriptor] = OFFICIAL_BY_ARCH["resnet18"]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(desc: WeightsDescriptor, dest_dir: str | Path, base_url: str | None = None,
             progress: bool | None = None, timeout: float = 30.0) -> Path:
    """Stream the checkpoint into a temp file while hashing; move it into place only if the hash matches."""
    base_url = base_url or os.environ.get(BASE_URL_ENV) or None
    url = desc.url_from(base_url)
    shown = redact_url(url)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / desc.filename
    fd, tmp_name = tempfile.mkstemp(prefix=f".{desc.filename}.", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        digest, size = _stream(url, shown, fd, timeout, progress)
        if not digest.startswith(desc.sha256_prefix):
            raise WeightsError(f"{shown}: sha256 {digest[:16]}... does not start with {desc.sha256_prefix}: "
                               f"not the official {desc.variant} checkpoint ({size} bytes); nothing was kept")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _stream(url: str, shown: str, fd: int, timeout: float, progress: bool | None) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "monitor-weights/1"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, os.fdopen(fd, "wb") as out:
            expected = int(resp.headers.get("Content-Length") or 0) or None
            # tqdm hides itself when stderr is not a terminal (disable=None): logs, CI and systemd stay clean.
            with tqdm(desc=f"downloading {Path(url).name}", total=expected, unit="B", unit_scale=True,
                      unit_divisor=1024, disable=None if progress is None else not progress) as bar:
                while chunk := resp.read(1 << 16):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    except urllib.error.HTTPError as e:
        raise WeightsError(f"{shown}: server answered HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise WeightsError(f"{shown}: cannot reach server ({e.reason}); use --base-url or "
                           f"${BASE_URL_ENV} to point at a mirror") from None
    except (TimeoutError, ConnectionError, OSError) as e:
        # http.client.IncompleteRead is also raised for a body cut short: treat as truncation below.
        raise WeightsError(f"{shown}: download failed after {size} bytes: {e}") from None
    if expected is not None and size != expected:
        raise WeightsError(f"{shown}: truncated download: {size} of {expected} bytes")
    return h.hexdigest(), size


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such checkpoint") from None
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise WeightsError(f"{path}: not a PyTorch checkpoint: {first}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return obj


def float_model_from_state_dict(state_dict: dict[str, Any], path: str | Path,
                                arch: str | None = None) -> torch.nn.Module:
    """The FP32 checkpoint (torchvision key layout, strict) in the quantizable form of `arch` (default: the
    backbone its key names belong to, else ResNet-18)."""
    bb = backbones.backbone(arch or backbones.detect(state_dict))
    net = bb.quantizable()
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        missing = [k for k in net.state_dict() if k not in state_dict]
        unexpected = [k for k in state_dict if k not in net.state_dict()]
        detail = "; ".join(filter(None, [
            f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})" if missing else "",
            f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
        ])) or str(e).splitlines()[0]
        raise WeightsError(f"{path}: not a torchvision {bb.spec.title} ImageNet checkpoint: {detail}") from None
    return net.eval()


def is_qat_state_dict(state_dict: dict[str, Any]) -> bool:
    """torchvision's QAT checkpoints (MobileNetV3's) hold fake-quantize modules next to the float weights."""
    return any(k.endswith("weight_fake_quant.scale") for k in state_dict)


def int8_from_qat_state_dict(state_dict: dict[str, Any], make: Callable[[], torch.nn.Module], qconfig_engine: str,
                             engine: str) -> torch.nn.Module:
    """torchvision's QAT route (fuse for QAT, prepare_qat, load, convert), but with the classifier kept float as
    everywhere else here: its fake-quantize entries are dropped and its float weights are the ones trained."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.quantization as tq
        torch.backends.quantized.engine = engine
        net = make()
        net.train()
        net.fuse_model(is_qat=True)
        net.qconfig = tq.get_default_qat_qconfig(qconfig_engine)
        floats = tuple(getattr(net, "float_modules", ()))
        for name in floats:
            net.get_submodule(name).qconfig = None
        tq.prepare_qat(net, inplace=True)
        kept = {k: v for k, v in state_dict.items()
                if not (k.startswith(tuple(f"{n}." for n in floats))
                        and ("fake_quant" in k or "activation_post_process" in k))}
        net.load_state_dict(kept, strict=True)
        net.eval()
        tq.convert(net, inplace=True)
    model.assert_quantized(net, fc=False)
    return net


def _int8_from_checkpoint(state_dict: dict[str, Any], path: str | Path, engine: str,
                          arch: str | None = None) -> torch.nn.Module:
    bb = backbones.backbone(arch or backbones.detect(state_dict))
    try:
        if is_qat_state_dict(state_dict):
            return int8_from_qat_state_dict(state_dict, bb.quantizable, "qnnpack", engine)
        return model.int8_from_state_dict(state_dict, engine=engine, make=bb.quantizable)
    except (RuntimeError, AttributeError, KeyError) as e:
        raise WeightsError(f"{path}: not a quantized {bb.spec.title} state dict: "
                           f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
