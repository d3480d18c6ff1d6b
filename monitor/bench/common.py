"""Shared pieces of the benchmarks: footage, the seeds' baseline, resource figures."""
from __future__ import annotations

import resource
import statistics
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from monitor.core.sample import sample_clip
from monitor.weights import model



def footage(paths: Sequence[str] | None) -> list[Path]:
    """The videos given, else the sample clip shipped in the package (an installed wheel has no other footage)."""
    videos = [Path(p) for p in paths] if paths else [sample_clip()]
    missing = [str(v) for v in videos if not v.is_file()]
    if missing:
        raise SystemExit(f"monitor bench: no such video: {', '.join(missing)}")
    return videos


def read_frames(videos: Sequence[Path], count: int) -> list[np.ndarray]:
    """`count` frames spread over the videos, decoded up front so decoding is not part of the figures."""
    per = max(1, count // len(videos))
    frames: list[np.ndarray] = []
    for v in videos:
        cap = cv2.VideoCapture(str(v), cv2.CAP_FFMPEG)
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or per
        stride = max(1, total // per)
        i = 0
        while len(frames) < count and i < total:
            ok = cap.grab()
            if not ok:
                break
            if i % stride == 0:
                ok, f = cap.retrieve()
                if ok:
                    frames.append(f)
            i += 1
        cap.release()
    if not frames:
        raise SystemExit(f"monitor bench: no frame could be read from {', '.join(map(str, videos))}")
    return frames[:count]


class SeedsBaseline:
    """The seeds' per-frame path: PIL Resize(256) / CenterCrop(224) / ToTensor / Normalize, FP32 eager."""

    def __init__(self) -> None:
        try:
            from PIL import Image
        except ImportError:  # pillow is a test/bench extra, not a runtime dependency
            raise SystemExit("monitor bench: the baseline needs pillow: pip install -e '.[test]'") from None
        self._image = Image
        self.net = model.resnet18().eval()
        self.mean = torch.tensor(model.IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(model.IMAGENET_STD).view(3, 1, 1)

    def preprocess(self, frame_bgr: np.ndarray) -> torch.Tensor:
        img = self._image.fromarray(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
        w, h = img.size
        scale = 256 / min(w, h)
        img = img.resize((round(w * scale), round(h * scale)), self._image.BILINEAR)
        w, h = img.size
        left, top = (w - 224) // 2, (h - 224) // 2
        img = img.crop((left, top, left + 224, top + 224))
        t = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (t - self.mean) / self.std

    def __call__(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        with torch.inference_mode():
            return self.net(torch.stack([self.preprocess(f) for f in frames]))


def median_ms_per_frame(times: Sequence[float], batch: int) -> float:
    return statistics.median(times) * 1000.0 / batch


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB.

    VmHWM belongs to the address space, so it starts afresh at exec; ru_maxrss would carry the RSS of the
    parent that forked us (a child started from a big benchmark process would report the parent's size)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / (1024.0 * 1024.0)
