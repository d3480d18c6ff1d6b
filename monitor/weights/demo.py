"""The demo network: a deterministic random-init ResNet-18 in the artifact format, marked untrained (optionally
with its last layer fitted to real footage, monitor/weights/fit.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from monitor.core.redact import redact_url
from monitor.inference import artifact
from monitor.weights import backbones, model
from monitor.weights.build import _frame_batches, _meta, build, calibrated_int8, save_both


def synthetic_batches(count: int, batch: int = 8, seed: int = 0) -> Iterable[np.ndarray]:
    """Deterministic smooth random images (blurred noise upsampled), for the untrained demo network."""
    import cv2
    rng = np.random.default_rng(seed)
    for start in range(0, count, batch):
        n = min(batch, count - start)
        out = np.empty((n, 224, 224, 3), dtype=np.uint8)
        for i in range(n):
            small = rng.integers(0, 256, size=(int(rng.integers(4, 32)),) * 2 + (3,), dtype=np.uint8)
            out[i] = cv2.resize(small, (224, 224), interpolation=cv2.INTER_CUBIC)
        yield out


def demo(out: str | Path, seed: int = 0, engine: str | None = None, fit: Sequence[str] = (), frames: int = 300,
         clusters: int = 6, arch: str = "resnet18", calibration_frames: int | None = None) -> artifact.ArtifactMeta:
    """A deterministic random-init network (`arch`, default ResNet-18) in the artifact format, marked untrained.
    With `fit` (videos, images): its last layer fitted to `clusters` groups of those frames
    (monitor/weights/fit.py), its FP32 checkpoint saved next to `out` as the reference, and calibrated on the same
    footage (`calibration_frames`, default 200; synthetic: 32)."""
    arch = backbones.backbone(arch).name
    if fit:
        from monitor.weights import fit as fitted
        net = demo_float(seed, arch)
        summary = fitted.fit_last_layer(net, _frame_batches(fit, frames, desc="fitting"), clusters, seed)
        checkpoint = fp32_checkpoint_path(out)
        torch.save(net.state_dict(), checkpoint)
        return build(checkpoint, out, calibrate=fit, frames=calibration_frames or 200, engine=engine, arch=arch,
                     demo={"seed": seed, "fitted_to": [redact_url(s) for s in fit], **summary})
    engine = engine or model.default_engine()
    count = calibration_frames or 32
    net = calibrated_int8(demo_float(seed, arch), synthetic_batches(count, seed=seed + 1), engine)
    meta = _meta(f"{arch}-demo-untrained", "int8", engine, True, {"checkpoint": f"{DEMO_SOURCE}{seed}"},
                 {"needed": True, "frames": count, "sources": ["synthetic"]}, arch)
    save_both(out, net, meta)
    return meta


DEMO_SOURCE = "random-init seed "


def fp32_checkpoint_path(out: str | Path) -> Path:
    """Where a fitted demo's FP32 checkpoint goes: next to the artifact (weights/x.pt -> weights/x.fp32.pth),
    where `weights verify` finds its FP32 reference."""
    return Path(out).with_suffix(".fp32.pth")


def demo_float(seed: int = 0, arch: str = "resnet18") -> torch.nn.Module:
    """The demo's float network (deterministic for a seed and backbone): the FP32 reference of the demo
    artifacts."""
    torch.manual_seed(seed)
    net = backbones.backbone(arch).quantizable()
    reestimate_batchnorm(net, synthetic_batches(64, seed=seed))
    sharpen_logits(net, next(iter(synthetic_batches(16, batch=16, seed=seed + 2))))
    return net.eval()


def reestimate_batchnorm(net: torch.nn.Module, batches: Iterable[np.ndarray]) -> None:
    # Random init with identity BN statistics lets activations grow layer by layer, which makes INT8 error
    # large; real statistics give the untrained network a well-scaled, quantization-friendly range.
    normalize = model.Normalize()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all batches
    net.train()
    with torch.no_grad():
        for batch in batches:
            net(normalize(torch.from_numpy(batch)))
    net.eval()


def sharpen_logits(net: torch.nn.Module, batch: np.ndarray, spread: float = 4.0) -> None:
    # A random head gives near-uniform softmax (~0.1 % per class); scaling it gives confident (meaningless)
    # top classes, so overlays, bars and alert thresholds behave in demos and tests as with real weights.
    with torch.no_grad():
        logits = net(model.Normalize()(torch.from_numpy(batch)))
        net.fc.weight.mul_(spread / float(logits.std(dim=1).mean()))
        net.fc.bias.zero_()
