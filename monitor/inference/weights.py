"""Official checkpoints, their download, and building the runtime artifact (INT8 or demo)."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import os
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from monitor.inference import artifact, model
from monitor.inference.locate import (DEFAULT_ARTIFACT, DEFAULT_CONFIG, WeightsError,  # noqa: F401 (re-exported)
                                      resolve_weights)
from monitor.capture.frames import calibration_frames
from monitor.core.labels import imagenet_classes
from monitor.inference.preprocess import prepare_batch
from tqdm import tqdm
from monitor.core.redact import redact_url

BASE_URL_ENV = "MONITOR_WEIGHTS_BASE_URL"
PREPROCESS = {"resize": 256, "crop": 224, "mean": list(model.IMAGENET_MEAN), "std": list(model.IMAGENET_STD),
              "input": "uint8 NHWC BGR", "normalize": "in graph"}


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

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def url_from(self, base_url: str | None) -> str:
        return f"{base_url.rstrip('/')}/{self.filename}" if base_url else self.url


OFFICIAL: dict[str, WeightsDescriptor] = {
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
}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- download -------------------------------------------------------------------------------------------------

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


# -- checkpoints -> artifacts -----------------------------------------------------------------------------------

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


def float_model_from_state_dict(state_dict: dict[str, Any], path: str | Path) -> model.QuantizableResNet:
    """The FP32 checkpoint (torchvision key layout, strict) in the quantizable form."""
    net = model.quantizable_resnet18()
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        missing = [k for k in net.state_dict() if k not in state_dict]
        unexpected = [k for k in state_dict if k not in net.state_dict()]
        detail = "; ".join(filter(None, [
            f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})" if missing else "",
            f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
        ])) or str(e).splitlines()[0]
        raise WeightsError(f"{path}: not a torchvision ResNet-18 ImageNet checkpoint: {detail}") from None
    return net.eval()


def _int8_from_checkpoint(state_dict: dict[str, Any], path: str | Path, engine: str) -> torch.nn.Module:
    try:
        return model.int8_from_state_dict(state_dict, engine=engine)
    except RuntimeError as e:
        raise WeightsError(f"{path}: not a quantized ResNet-18 state dict: {str(e).splitlines()[0]}") from None


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
    from monitor.inference import openvino_build

    weight, bias = model.fc_params(net)
    parts = {**openvino_build.ir_parts(net), **artifact.fc_parts(weight.numpy(), bias.numpy())}
    ov_meta = dataclasses.replace(meta, runtime="openvino", engine="openvino", versions=openvino_build.versions())
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
         clusters: int = 6) -> artifact.ArtifactMeta:
    """A deterministic random-init ResNet-18 in the artifact format, marked untrained. With `fit` (videos,
    images): its last layer fitted to `clusters` groups of those frames (monitor/inference/fitted.py), its FP32
    checkpoint saved next to `out` as the reference, and calibrated on the same footage."""
    if fit:
        from monitor.inference import fitted
        net = demo_float(seed)
        summary = fitted.fit_last_layer(net, _frame_batches(fit, frames, desc="fitting"), clusters, seed)
        checkpoint = fp32_checkpoint_path(out)
        torch.save(net.state_dict(), checkpoint)
        return build(checkpoint, out, calibrate=fit, frames=200, engine=engine,
                     demo={"seed": seed, "fitted_to": [redact_url(s) for s in fit], **summary})
    engine = engine or model.default_engine()
    net = calibrated_int8(demo_float(seed), synthetic_batches(32, seed=seed + 1), engine)
    meta = _meta("resnet18-demo-untrained", "int8", engine, True, {"checkpoint": f"{DEMO_SOURCE}{seed}"},
                 {"needed": True, "frames": 32, "sources": ["synthetic"]})
    save_both(out, net, meta)
    return meta


DEMO_SOURCE = "random-init seed "


def fp32_checkpoint_path(out: str | Path) -> Path:
    """Where a fitted demo's FP32 checkpoint goes: next to the artifact (weights/x.pt -> weights/x.fp32.pth),
    where `weights verify` finds its FP32 reference."""
    return Path(out).with_suffix(".fp32.pth")


def demo_float(seed: int = 0) -> model.QuantizableResNet:
    """The demo's float network (deterministic for a seed): the FP32 reference of the demo artifacts."""
    torch.manual_seed(seed)
    net = model.quantizable_resnet18()
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


def verify(path: str | Path, frames_from: Sequence[str] = (), frames: int = 150,
           reference: str | Path | None = None) -> dict[str, Any]:
    """Re-hash, load and run one inference; with both runtimes' artifacts present, their top-1 agreement
    (and the FP32 reference's) on real frames. A summary dict for printing."""
    from monitor.inference.classifier import Classifier

    started = time.monotonic()
    clf = Classifier(path)
    loaded = time.monotonic() - started
    frame = next(iter(synthetic_batches(1, seed=123)))[0]
    t = time.monotonic()
    pred = clf.classify([frame], top_k=1)[0][0]
    summary = {"file": str(clf.path), "sha256": clf.sha256, "name": clf.meta.name, "runtime": clf.runtime,
               "precision": clf.meta.precision, "engine": clf.meta.engine, "untrained": clf.meta.untrained,
               "source": clf.meta.source, "calibration": clf.meta.calibration, "load_seconds": round(loaded, 3),
               "inference_seconds": round(time.monotonic() - t, 4), "top1_on_test_image": pred.label}
    torch_path, ov_path = Path(clf.path).with_suffix(".pt"), openvino_path(clf.path)
    if clf.meta.precision == "int8" and torch_path.is_file() and ov_path.is_file():
        from monitor.core.sample import sample_clip
        # the sample videos of a development checkout, else the clip shipped in the package
        sources = (list(frames_from) or [str(p) for p in DEFAULT_FOOTAGE if p.is_file()]
                   or [str(p) for p in (sample_clip(),) if p.is_file()])
        if sources:
            summary["agreement"] = agreement(torch_path, sources, frames, reference)
        else:
            summary["agreement"] = "no footage found: pass --frames-from VIDEO_OR_IMAGES"
    return summary


# Real frames `monitor weights verify` measures agreement on when none are given (a development checkout).
DEFAULT_FOOTAGE = tuple(Path("../shared/data/videos") / f"{name}.mp4"
                        for name in ("car-detection", "one-by-one-person-detection", "bottle-detection"))


def float_reference(meta: artifact.ArtifactMeta, folder: Path,
                    reference: str | Path | None = None) -> tuple[torch.nn.Module, str] | None:
    """The FP32 network an INT8 artifact was made from: --reference, the demo's seed, or the FP32 checkpoint
    named in its metadata when it sits next to the artifact. None when there is none (official INT8 file)."""
    if reference:
        path = Path(reference)
        return float_model_from_state_dict(load_checkpoint(path), path), str(path)
    checkpoint = str(meta.source.get("checkpoint", ""))
    if checkpoint.startswith(DEMO_SOURCE):
        return demo_float(int(checkpoint[len(DEMO_SOURCE):])), checkpoint
    candidate = folder / checkpoint
    if checkpoint and candidate.is_file() and meta.calibration.get("needed"):
        state_dict = load_checkpoint(candidate)
        if not model.is_int8_state_dict(state_dict):
            return float_model_from_state_dict(state_dict, candidate), str(candidate)
    return None


def agreement(torch_path: Path, sources: Sequence[str], frames: int = 150,
              reference: str | Path | None = None) -> dict[str, Any]:
    """Top-1 agreement on real frames: OpenVINO INT8 vs torch INT8, and each vs the FP32 reference."""
    from monitor.inference.classifier import Classifier

    ov = Classifier(openvino_path(torch_path), runtime="openvino")
    pt = Classifier(torch_path, runtime="torch")
    images = [f for _, f in calibration_frames(sources, frames)]
    top_ov, top_pt, top_fp, top_p = [], [], [], []
    ref = float_reference(pt.meta, torch_path.parent, reference)
    normalize = model.Normalize()
    for start in range(0, len(images), 8):
        batch = ov.prepare(images[start:start + 8])
        a, b = ov.run(batch), pt.run(batch)
        top_ov += a.logits.argmax(1).tolist()
        top_pt += b.logits.argmax(1).tolist()
        top_p += a.probabilities.max(1).tolist()
        if ref is not None:
            with torch.inference_mode():
                top_fp += ref[0](normalize(torch.from_numpy(batch))).argmax(1).tolist()
    o, p = np.array(top_ov), np.array(top_pt)
    result: dict[str, Any] = {
        "frames": len(images), "sources": [redact_url(s) for s in sources],
        "openvino_vs_torch_int8": round(float((o == p).mean()), 4),
        "distinct_top1": len(set(top_ov)), "mean_top1_probability": round(float(np.mean(top_p)), 3)}
    if ref is not None:
        f = np.array(top_fp)
        result.update({"fp32_reference": ref[1], "openvino_vs_fp32": round(float((o == f).mean()), 4),
                       "torch_int8_vs_fp32": round(float((p == f).mean()), 4)})
    else:
        result["fp32_reference"] = "none (pass --reference FP32_CHECKPOINT)"
    return result
