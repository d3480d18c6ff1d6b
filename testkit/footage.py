"""Real frames from ../shared/data/videos (Intel IoT DevKit sample videos, CC BY 4.0) for tests."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"


def read_video_frames(name: str, count: int, stride: int = 1, start: int = 0) -> list[np.ndarray]:
    """`count` frames of ../shared/data/videos/<name>.mp4 (Intel IoT DevKit sample videos, CC BY 4.0)."""
    path = VIDEOS / f"{name}.mp4"
    if not path.is_file():
        pytest.fail(f"sample video missing: {path}", pytrace=False)
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames: list[np.ndarray] = []
    index = 0
    while len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            break
        if index >= start and (index - start) % stride == 0:
            frames.append(frame)
        index += 1
    cap.release()
    assert len(frames) == count, f"{path}: only {len(frames)} frames"
    return frames
