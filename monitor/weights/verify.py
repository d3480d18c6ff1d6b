"""`monitor weights verify`: re-hash, load, one inference, and the runtimes' top-1 agreement on real frames."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from monitor.capture.frames import calibration_frames
from monitor.core.redact import redact_url
from monitor.core.sample import sample_clip
from monitor.inference import artifact
from monitor.weights import model
from monitor.weights.build import openvino_path
from monitor.weights.checkpoints import float_model_from_state_dict, load_checkpoint
from monitor.weights.demo import DEMO_SOURCE, demo_float, synthetic_batches


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
        # the package knows no footage but its own sample clip: other footage is named with --frames-from
        sources = list(frames_from) or [str(p) for p in (sample_clip(),) if p.is_file()]
        if sources:
            summary["agreement"] = agreement(torch_path, sources, frames, reference)
        else:
            summary["agreement"] = "no footage found: pass --frames-from VIDEO_OR_IMAGES"
    return summary


def float_reference(meta: artifact.ArtifactMeta, folder: Path,
                    reference: str | Path | None = None) -> tuple[torch.nn.Module, str] | None:
    """The FP32 network an INT8 artifact was made from: --reference, the demo's seed, or the FP32 checkpoint
    named in its metadata when it sits next to the artifact. None when there is none (official INT8 file)."""
    if reference:
        path = Path(reference)
        return float_model_from_state_dict(load_checkpoint(path), path, meta.arch), str(path)
    checkpoint = str(meta.source.get("checkpoint", ""))
    if checkpoint.startswith(DEMO_SOURCE):
        return demo_float(int(checkpoint[len(DEMO_SOURCE):]), meta.arch), checkpoint
    candidate = folder / checkpoint
    if checkpoint and candidate.is_file() and meta.calibration.get("needed"):
        state_dict = load_checkpoint(candidate)
        if not model.is_int8_state_dict(state_dict):
            return float_model_from_state_dict(state_dict, candidate, meta.arch), str(candidate)
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
