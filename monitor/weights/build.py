"""Checkpoint -> runtime artifacts: calibration on real frames, the torch artifact and the OpenVINO one beside it."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from monitor.capture.frames import calibration_frames
from monitor.core.labels import imagenet_classes
from monitor.core.redact import redact_url
from monitor.inference import artifact
from monitor.inference.locate import WeightsError
from monitor.inference.preprocess import prepare_batch
from monitor.weights import backbones, model
from monitor.weights.checkpoints import (OFFICIAL_BY_ARCH, WeightsDescriptor, _int8_from_checkpoint, download,
                                         float_model_from_state_dict, is_qat_state_dict, load_checkpoint,
                                         sha256_file)


log = logging.getLogger(__name__)

PREPROCESS = {"resize": 256, "crop": 224, "mean": list(model.IMAGENET_MEAN), "std": list(model.IMAGENET_STD),
              "input": "uint8 NHWC BGR", "normalize": "in graph"}


def calibrated_int8(net: torch.nn.Module, batches: Iterable[np.ndarray], engine: str) -> torch.nn.Module:
    """Quantize `net` with observers fed by uint8 NHWC BGR batches (the runtime's own preprocessing)."""
    normalize = model.Normalize()

    def calibrate(prepared: torch.nn.Module) -> None:
        seen = 0
        for batch in batches:
            prepared(normalize(torch.from_numpy(batch)))
            seen += len(batch)
        if not seen:
            raise WeightsError("calibration saw no frame")

    return model.quantize(net, calibrate, engine=engine, quantize_fc=False)


def _frame_batches(sources: Sequence[str], frames: int, batch: int = 8,
                   desc: str = "calibrating") -> Iterable[np.ndarray]:
    pending: list[np.ndarray] = []
    with tqdm(desc=desc, total=frames, unit=" frames", disable=None) as bar:
        for _, frame in calibration_frames(sources, frames):
            pending.append(frame)
            bar.update()
            if len(pending) == batch:
                yield prepare_batch(pending)
                pending = []
    if pending:
        yield prepare_batch(pending)


def _meta(name: str, precision: str, engine: str, untrained: bool, source: dict[str, Any],
          calibration: dict[str, Any], arch: str = "resnet18") -> artifact.ArtifactMeta:
    return artifact.ArtifactMeta(arch=arch,
        name=name, precision=precision, engine=engine, labels=imagenet_classes(), untrained=untrained,
        preprocess=dict(PREPROCESS), source=source, calibration=calibration,
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        torch_version=torch.__version__)


def build(checkpoint: str | Path, out: str | Path, calibrate: Sequence[str] = (), frames: int = 200,
          engine: str | None = None, fp32: bool = False, demo: dict[str, Any] | None = None,
          arch: str | None = None) -> artifact.ArtifactMeta:
    """Build the runtime artifact from an FP32 checkpoint (calibrated on real frames) or an INT8 (or QAT) state
    dict. `arch`: the backbone (default: the one the checkpoint's key names belong to). `demo` (how a demo
    checkpoint was made) marks the artifact untrained."""
    checkpoint = Path(checkpoint)
    state_dict = load_checkpoint(checkpoint)
    detected = backbones.detect(state_dict)
    if arch and detected and arch != detected:
        raise WeightsError(f"{checkpoint}: holds a {backbones.backbone(detected).spec.title} state dict, "
                           f"not {backbones.backbone(arch).spec.title} (--arch {arch})")
    arch = backbones.backbone(arch or detected).name
    source = {"checkpoint": checkpoint.name, "sha256": sha256_file(checkpoint), **({"demo": demo} if demo else {})}
    engine = engine or model.default_engine()
    if model.is_int8_state_dict(state_dict) or is_qat_state_dict(state_dict):
        if fp32:
            raise WeightsError(f"{checkpoint}: an INT8 checkpoint cannot make an FP32 artifact")
        net = _int8_from_checkpoint(state_dict, checkpoint, engine, arch)
        meta = _meta(f"{arch}-int8", "int8", engine, False, source, {"needed": False}, arch)
    elif fp32:
        net = float_model_from_state_dict(state_dict, checkpoint, arch)
        meta = _meta(f"{arch}-fp32", "fp32", "", False, source, {"needed": False}, arch)
    else:
        if not calibrate:
            raise WeightsError(f"{checkpoint}: an FP32 checkpoint needs --calibrate PATH (images, a folder, "
                               f"a video file or a camera URL) to quantize")
        net = float_model_from_state_dict(state_dict, checkpoint, arch)
        if arch == "mobilenet_v3_large":
            # Post-training quantization loses much of MobileNetV3 (hardswish, squeeze-excitation, depthwise layers;
            # torchvision ships it quantization-aware trained for that reason): measured on the fitted demo network,
            # INT8 kept FP32's top-1 on 5-11 % of real frames (README, `monitor bench backbones`).
            log.warning("%s: post-training INT8 of MobileNetV3 loses accuracy; prefer the official QAT checkpoint "
                        "(`monitor weights fetch --arch mobilenet_v3_large`) and check with `monitor weights verify "
                        "--reference %s`", checkpoint, checkpoint)
        started = time.monotonic()
        net = calibrated_int8(net, _frame_batches(calibrate, frames), engine)
        meta = _meta(f"{arch}-demo-fitted" if demo else f"{arch}-int8", "int8", engine, bool(demo), source, {
            "needed": True, "frames": frames, "sources": [redact_url(s) for s in calibrate],
            "seconds": round(time.monotonic() - started, 1)}, arch)
    if fp32:
        save_torch(out, net, meta)
    else:
        save_both(out, net, meta)
    return meta


def save_torch(out: str | Path, net: torch.nn.Module, meta: artifact.ArtifactMeta) -> str:
    """The torch artifact: frozen TorchScript + the float classifier's weights (last layer; hidden layer if any)."""
    _check_arch(net, meta)
    buf = io.BytesIO()
    torch.jit.save(model.freeze(net), buf)
    return artifact.save(out, {"torchscript": buf.getvalue(), **backbones.classifier_parts(net)}, meta)


def _check_arch(net: torch.nn.Module, meta: artifact.ArtifactMeta) -> None:
    if backbones.arch_of(net) != meta.arch:
        raise RuntimeError(f"artifact metadata says {meta.arch}, the network is {backbones.arch_of(net)}")


def openvino_path(out: str | Path) -> Path:
    """Where the OpenVINO artifact goes: next to the torch one (weights/resnet18-int8.pt -> .ov)."""
    return Path(out).with_suffix(".ov")


def save_openvino(out: str | Path, net: torch.nn.Module, meta: artifact.ArtifactMeta) -> str:
    """The OpenVINO artifact of the same INT8 network: its IR (a QDQ graph) + the same last-layer weights."""
    from monitor.weights import openvino_ir

    _check_arch(net, meta)
    parts = {**openvino_ir.ir_parts(net), **backbones.classifier_parts(net)}
    ov_meta = dataclasses.replace(meta, runtime="openvino", engine="openvino", versions=openvino_ir.versions())
    return artifact.save(out, parts, ov_meta)


def save_both(out: str | Path, net: torch.nn.Module, meta: artifact.ArtifactMeta) -> Path:
    """The torch artifact at `out` and the OpenVINO one next to it; returns the OpenVINO artifact's path."""
    out = Path(out)
    if out.suffix == ".ov":
        raise WeightsError(f"{out}: name the torch artifact (e.g. {out.with_suffix('.pt')}); "
                           f"the OpenVINO one is written next to it as {out.name}")
    torch_sha256 = save_torch(out, net, meta)
    ov_out = openvino_path(out)
    save_openvino(ov_out, net, dataclasses.replace(meta, backbone=torch_sha256))
    return ov_out


def default_artifact(weights_dir: str | Path, arch: str = "resnet18") -> Path:
    """Where `weights fetch` puts the artifact: DIR/<arch>-int8.pt (weights/resnet18-int8.pt by default)."""
    return Path(weights_dir) / f"{backbones.backbone(arch).name}-int8.pt"


def fetch(variant: str, weights_dir: str | Path, out: str | Path | None = None, base_url: str | None = None,
          progress: bool | None = None, descriptors: dict[str, WeightsDescriptor] | None = None,
          arch: str = "resnet18") -> tuple[Path, Path | None]:
    """Download the official checkpoint of `arch`; for int8 also build the runtime artifact.
    (checkpoint, artifact)."""
    desc = (descriptors or OFFICIAL_BY_ARCH[backbones.backbone(arch).name])[variant]
    checkpoint = download(desc, weights_dir, base_url=base_url, progress=progress)
    if desc.precision != "int8":
        return checkpoint, None
    target = Path(out) if out else default_artifact(weights_dir, desc.arch)
    try:
        build(checkpoint, target, arch=desc.arch)
    except WeightsError:
        checkpoint.unlink(missing_ok=True)
        raise
    return checkpoint, target
