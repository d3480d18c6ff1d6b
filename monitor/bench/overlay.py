"""`monitor bench overlay`: the live view's overlay per frame, English labels against Chinese ones (FreeType).

Both languages draw the same frames with the same predictions, in alternating rounds of the same run so that
the load of a shared machine falls on both alike. The predictions move through a set of classes as a camera's
labels do, so the Chinese figure includes the strip cache's hits and its misses; the cost of a miss (one label
rasterised) is shown apart. Target: Chinese within 1.5x of English.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from monitor.core.labels import imagenet_classes
from monitor.core.sample import sample_clip
from monitor.inference.classifier import Prediction
from monitor.render.overlay import draw_overlay
from monitor.render.text import cjk_text

TARGET_RATIO = 1.5
ROUNDS = 10
# A camera's top-3 over a while: a few classes, changing order (cars, a dog, a cat, a crane, ...)
CLASSES = (817, 511, 436, 468, 656, 717, 751, 479, 581, 207, 283, 517, 134, 1, 2, 639, 638, 409, 920, 919)


def _frames(video: Path, count: int, width: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    frames: list[np.ndarray] = []
    while len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            if not frames:
                raise SystemExit(f"monitor bench overlay: no frame could be read from {video}")
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        if width and frame.shape[1] != width:
            frame = cv2.resize(frame, (width, int(round(frame.shape[0] * width / frame.shape[1]))))
        frames.append(frame)
    cap.release()
    return frames


def _predictions(i: int) -> list[Prediction]:
    names = imagenet_classes()
    picks = [CLASSES[(i // 5 + k * 7) % len(CLASSES)] for k in range(3)]   # the top-3 changes every 5 frames
    return [Prediction(names[c], c, p) for c, p in zip(picks, (0.61, 0.22, 0.08))]


def _round(frames: list[np.ndarray], language: str, banner: bool) -> list[float]:
    times = []
    for i, frame in enumerate(frames):
        active = ["car"] if banner and (i // 20) % 2 else []
        t0 = time.perf_counter()
        draw_overlay(frame, "cam1", _predictions(i), 12.5, active, False, when=1.7e9 + i, language=language)
        times.append(time.perf_counter() - t0)
    return times


def bench_overlay(args: argparse.Namespace) -> int:
    video = Path(args.video) if args.video else sample_clip()
    frames = _frames(video, args.frames, args.width)
    cjk = cjk_text(None)
    if cjk is None:
        raise SystemExit("monitor bench overlay: no CJK font on this system (install fonts-noto-cjk)")
    # a miss: one label rasterised and cached (what a class never shown before costs once)
    t0 = time.perf_counter()
    for c in range(50):
        cjk.strip(f"未见过的类别{c}", 17)
    miss_ms = (time.perf_counter() - t0) * 1000.0 / 50
    _round(frames[:20], "en", True), _round(frames[:20], "zh", True)      # warm both paths
    times: dict[str, list[float]] = {"en": [], "zh": []}
    for r in range(args.rounds):
        for language in (("en", "zh") if r % 2 == 0 else ("zh", "en")):
            times[language] += _round(frames, language, True)
    en = statistics.median(times["en"]) * 1000.0
    zh = statistics.median(times["zh"]) * 1000.0
    mean_en = statistics.fmean(times["en"]) * 1000.0
    mean_zh = statistics.fmean(times["zh"]) * 1000.0
    result = {
        "frames": len(frames) * args.rounds, "size": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
        "font": str(cjk.path), "en_ms_median": round(en, 3), "zh_ms_median": round(zh, 3),
        "ratio_median": round(zh / en, 3), "en_ms_mean": round(mean_en, 3), "zh_ms_mean": round(mean_zh, 3),
        "ratio_mean": round(mean_zh / mean_en, 3), "rasterise_ms_per_label": round(miss_ms, 3),
        "target_ratio": TARGET_RATIO,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"overlay per frame, {result['size']}, {result['frames']} frames per language, same run "
              f"(alternating rounds)")
        print(f"  English (cv2.putText):           median {en:.3f} ms   mean {mean_en:.3f} ms")
        print(f"  Chinese (FreeType, cached strips): median {zh:.3f} ms   mean {mean_zh:.3f} ms   ({cjk.path.name})")
        print(f"  ratio zh/en: median {zh / en:.2f}x, mean {mean_zh / mean_en:.2f}x (target <= {TARGET_RATIO}x)")
        print(f"  a label seen for the first time: +{miss_ms:.3f} ms once (rasterised, then cached)")
    return 0 if zh / en <= TARGET_RATIO else 1
