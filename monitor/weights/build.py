"""Checkpoint -> runtime artifacts: calibration on real frames, the torch artifact and the OpenVINO one beside it."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import io
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
from monitor.weights import model
from monitor.weights.checkpoints import (OFFICIAL, WeightsDescriptor, _int8_from_checkpoint, download,
                                         float_model_from_state_dict, load_checkpoint, sha256_file)


PREPROCESS = {"resize": 256, "crop": 224, "mean": list(model.IMAGENET_MEAN), "std": list(model.IMAGENET_STD),
              "input": "uint8 NHWC BGR", "normalize": "in graph"}


def calibrated_int8(net: model.QuantizableResNet, batches: Iterable[np.ndarray], engine: str) -> torch.nn.Module:
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
          calibration: dict[str, Any]) -> artifact.ArtifactMeta:
    return artifact.ArtifactMeta(
        name=name, precision=precision, engine=engine, labels=imagenet_classes(), untrained=untrained,
        preprocess=dict(PREPROCESS), source=source, calibration=calibration,
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        torch_version=torch.__version__)


def build(checkpoint: str | Path, out: str | Path, calibrate: Sequence[str] = (), frames: int = 200,
          engine: str | None = None, fp32: bool = False, demo: dict[str, Any] | None = None) -> artifact.ArtifactMeta:
    """Build the runtime artifact from an FP32 checkpoint (calibrated on real frames) or an INT8 state dict.
    `demo` (how a demo checkpoint was made) marks the artifact untrained."""
    checkpoint = Path(checkpoint)
    state_dict = load_checkpoint(checkpoint)
    source = {"checkpoint": checkpoint.name, "sha256": sha256_file(checkpoint), **({"demo": demo} if demo else {})}
    engine = engine or model.default_engine()
    if model.is_int8_state_dict(state_dict):
        if fp32:
            raise WeightsError(f"{checkpoint}: an INT8 checkpoint cannot make an FP32 artifact")
        net = _int8_from_checkpoint(state_dict, checkpoint, engine)
        meta = _meta("resnet18-int8", "int8", engine, False, source, {"needed": False})
    elif fp32:
        net = float_model_from_state_dict(state_dict, checkpoint)
        meta = _meta("resnet18-fp32", "fp32", "", False, source, {"needed": False})
    else:
        if not calibrate:
            raise WeightsError(f"{checkpoint}: an FP32 checkpoint needs --calibrate PATH (images, a folder, "
                               f"a video file or a camera URL) to quantize")
        net = float_model_from_state_dict(state_dict, checkpoint)
        started = time.monotonic()
        net = calibrated_int8(net, _frame_batches(calibrate, frames), engine)
        meta = _meta("resnet18-demo-fitted" if demo else "resnet18-int8", "int8", engine, bool(demo), source, {
            "needed": True, "frames": frames, "sources": [redact_url(s) for s in calibrate],
            "seconds": round(time.monotonic() - started, 1)})
    if fp32:
        save_torch(out, net, meta)
    else:
        save_both(out, net, meta)
    return meta


def save_torch(out: str | Path, net: torch.nn.Module, meta: artifact.ArtifactMeta) -> str:
    """The torch artifact: frozen TorchScript + the last layer's (dequantized) weights."""
    buf = io.BytesIO()
    torch.jit.save(model.freeze(net), buf)
    weight, bias = model.fc_params(net)
    return artifact.save(out, {"torchscript": buf.getvalue(), **artifact.fc_parts(weight.numpy(), bias.numpy())},
                         meta)


def openvino_path(out: str | Path) -> Path:
    """Where the OpenVINO artifact goes: next to the torch one (weights/resnet18-int8.pt -> .ov)."""
    return Path(out).with_suffix(".ov")


def save_openvino(out: str | Path, net: torch.nn.Module, meta: artifact.ArtifactMeta) -> str:
    """The OpenVINO artifact of the same INT8 network: its IR (a QDQ graph) + the same last-layer weights."""
    from monitor.weights import openvino_ir

    weight, bias = model.fc_params(net)
    parts = {**openvino_ir.ir_parts(net), **artifact.fc_parts(weight.numpy(), bias.numpy())}
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


def fetch(variant: str, weights_dir: str | Path, out: str | Path | None = None, base_url: str | None = None,
          progress: bool | None = None,
          descriptors: dict[str, WeightsDescriptor] | None = None) -> tuple[Path, Path | None]:
    """Download the official checkpoint; for int8 also build the runtime artifact. (checkpoint, artifact)."""
    desc = (descriptors or OFFICIAL)[variant]
    checkpoint = download(desc, weights_dir, base_url=base_url, progress=progress)
    if desc.precision != "int8":
        return checkpoint, None
    target = Path(out) if out else Path(weights_dir) / "resnet18-int8.pt"
    try:
        build(checkpoint, target)
    except WeightsError:
        checkpoint.unlink(missing_ok=True)
        raise
    return checkpoint, target
