"""Frames from image files, folders, video files or camera URLs, as BGR uint8 arrays."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from monitor.capture import camera as _camera  # noqa: F401  FFmpeg's process-wide env (quiet log, RTSP over TCP)
from monitor.core.redact import redact_url

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".ts", ".mjpg", ".mjpeg"}


class FrameSourceError(Exception):
    """A file or source that yields no frame; the message names it."""


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode image bytes (JPEG, PNG, BMP, GIF, WebP) to BGR; raise FrameSourceError naming `name`."""
    buf = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if image is None and data[:6] in (b"GIF87a", b"GIF89a"):
        image = _first_video_frame_of_bytes(data)
    if image is None:
        raise FrameSourceError(f"{name}: not a readable image (JPEG, PNG, BMP, GIF or WebP)")
    return image


def _first_video_frame_of_bytes(data: bytes) -> np.ndarray | None:
    # Some OpenCV builds lack a GIF decoder in imdecode; FFmpeg reads GIFs as one-frame videos.
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".gif") as f:
        f.write(data)
        f.flush()
        cap = cv2.VideoCapture(f.name, cv2.CAP_FFMPEG)
        try:
            ok, frame = cap.read()
            return frame if ok else None
        finally:
            cap.release()


def read_image(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise FrameSourceError(f"{path}: is a directory") from None
    except OSError as e:
        raise FrameSourceError(f"{path}: cannot read: {e.strerror or e}") from None
    return decode_image(data, str(path))


def expand_paths(paths: Sequence[str | Path], suffixes: set[str]) -> list[Path]:
    """Files as given, folders expanded (recursively, sorted) to the files with one of `suffixes`."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes))
        else:
            out.append(p)
    return out


def is_stream_url(source: str) -> bool:
    return "://" in str(source)


def video_frames(source: str, limit: int) -> Iterator[np.ndarray]:
    """Up to `limit` frames spread evenly over a video file, or the first `limit` of a camera URL."""
    cap = cv2.VideoCapture(str(source), cv2.CAP_FFMPEG,
                           [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 10000])
    if not cap.isOpened():
        raise FrameSourceError(f"{redact_url(source)}: cannot open video source")
    try:
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not is_stream_url(source) else 0
        stride = max(1, count // limit) if count > 0 else 1
        taken = index = 0
        while taken < limit:
            ok = cap.grab()
            if not ok:
                break
            if index % stride == 0:
                ok, frame = cap.retrieve()
                if ok:
                    taken += 1
                    yield frame
            index += 1
        if taken == 0:
            raise FrameSourceError(f"{redact_url(source)}: no frame could be read")
    finally:
        cap.release()


def calibration_frames(sources: Sequence[str], limit: int) -> Iterator[tuple[str, np.ndarray]]:
    """(source name, frame) pairs from images, folders, videos and URLs, at most `limit` in all.

    Frames are spread over the sources so that every source contributes."""
    expanded: list[str] = []
    for s in sources:
        if is_stream_url(s):
            expanded.append(s)
        else:
            if not os.path.exists(s):
                raise FrameSourceError(f"{s}: no such file or folder")
            expanded.extend(str(p) for p in expand_paths([s], IMAGE_SUFFIXES | VIDEO_SUFFIXES))
    if not expanded:
        raise FrameSourceError(f"no image or video found in {', '.join(map(redact_url, sources))}")
    images = [s for s in expanded if Path(s).suffix.lower() in IMAGE_SUFFIXES and not is_stream_url(s)]
    videos = [s for s in expanded if s not in images]
    produced = 0
    for s in images[:limit]:
        yield s, read_image(s)
        produced += 1
    for i, v in enumerate(videos):
        share = (limit - produced) // (len(videos) - i)
        for frame in video_frames(v, share):
            yield redact_url(v), frame
            produced += 1
