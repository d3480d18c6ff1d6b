from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from monitor.config.types import MotionConfig
from monitor.capture.motion import MotionGate


def scene(seed: int = 0) -> np.ndarray:
    """A textured 768x432 BGR scene (smooth gradients plus blobs), the size of the sample videos."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:432, 0:768]
    base = (x / 768 * 120 + y / 432 * 60).astype(np.uint8)
    image = np.dstack([base, base // 2 + 40, 200 - base]).astype(np.uint8)
    for _ in range(12):
        cx, cy, r = rng.integers(0, 768), rng.integers(0, 432), rng.integers(10, 40)
        cv2.circle(image, (int(cx), int(cy)), int(r), tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
    return image


def with_object(image: np.ndarray, x: int, y: int, w: int = 160, h: int = 120) -> np.ndarray:
    out = image.copy()
    cv2.rectangle(out, (x, y), (x + w, y + h), (255, 255, 255), -1)
    return out


def noisy(image: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def test_first_frame_passes_still_frames_do_not() -> None:
    gate = MotionGate(MotionConfig(enabled=True, threshold=0.02, keepalive=30))
    img = scene()
    assert gate.should_classify(img, 0.0) is True
    assert gate.should_classify(img, 0.2) is False
    assert gate.last_fraction == 0.0
    # sensor noise is not motion
    assert gate.should_classify(noisy(img, 4.0), 0.4) is False
    assert gate.last_fraction < 0.02


def test_changed_frame_passes_and_becomes_the_reference() -> None:
    gate = MotionGate(MotionConfig(enabled=True, threshold=0.02, keepalive=30))
    img = scene()
    gate.should_classify(img, 0.0)
    moved = with_object(img, 300, 150)               # ~6 % of the picture
    assert gate.should_classify(moved, 0.2) is True
    assert gate.last_fraction >= 0.02
    assert gate.should_classify(moved, 0.4) is False  # compared with the frame that passed
    assert gate.should_classify(with_object(img, 500, 150), 0.6) is True   # the object moved on


def test_threshold_is_a_fraction_of_the_picture() -> None:
    img = scene()
    small_change = with_object(img, 100, 100, 40, 40)   # 1600 px of 331776: ~0.5 %
    strict = MotionGate(MotionConfig(enabled=True, threshold=0.02, keepalive=30))
    strict.should_classify(img, 0.0)
    assert strict.should_classify(small_change, 0.1) is False
    sensitive = MotionGate(MotionConfig(enabled=True, threshold=0.002, keepalive=30))
    sensitive.should_classify(img, 0.0)
    assert sensitive.should_classify(small_change, 0.1) is True


def test_keepalive_passes_a_still_scene_periodically() -> None:
    gate = MotionGate(MotionConfig(enabled=True, threshold=0.02, keepalive=30))
    img = scene()
    assert gate.should_classify(img, 100.0)
    assert [gate.should_classify(img, 100.0 + t) for t in (1, 10, 29.9)] == [False, False, False]
    assert gate.should_classify(img, 130.0) is True
    assert gate.should_classify(img, 131.0) is False
    assert gate.should_classify(img, 160.0) is True


def test_slow_change_accumulates_against_the_last_passed_frame() -> None:
    gate = MotionGate(MotionConfig(enabled=True, threshold=0.02, keepalive=1000))
    img = scene()
    gate.should_classify(img, 0.0)
    # each step brightens by 12 grey levels, below the per-pixel delta; the third step is 36 above the reference
    steps = [cv2.add(img, np.full_like(img, 12 * k)) for k in (1, 2, 3)]
    assert [gate.should_classify(s, float(k)) for k, s in enumerate(steps, 1)] == [False, False, True]


def test_resolution_and_format_changes() -> None:
    gate = MotionGate(MotionConfig(enabled=True))
    gate.should_classify(scene(), 0.0)
    # the same scene at another resolution of the same aspect is not motion
    assert gate.should_classify(cv2.resize(scene(), (640, 360)), 0.1) is False
    grey = cv2.cvtColor(scene(), cv2.COLOR_BGR2GRAY)
    assert gate.should_classify(grey, 0.2) is False
    # another aspect ratio cannot be compared: it passes and becomes the reference
    assert gate.should_classify(cv2.resize(scene(), (640, 480)), 0.3) is True
    assert gate.should_classify(cv2.resize(scene(), (640, 480)), 0.4) is False
    gate.reset()
    assert gate.should_classify(grey, 0.5) is True


def test_real_footage(videos_dir: Path) -> None:
    cap = cv2.VideoCapture(str(videos_dir / "car-detection.mp4"), cv2.CAP_FFMPEG)
    frames = [cap.read()[1] for _ in range(80)]
    cap.release()
    assert all(f is not None for f in frames)
    gate = MotionGate(MotionConfig(enabled=True, threshold=0.02, keepalive=30))
    # the clip opens on an empty road for ~4 s, then a car drives through
    assert gate.should_classify(frames[0], 0.0) is True
    assert [gate.should_classify(frames[i], i / 12.5) for i in (5, 10, 20, 30)] == [False] * 4
    assert gate.should_classify(frames[75], 6.0) is True
