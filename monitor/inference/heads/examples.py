"""Training examples: EXAMPLES_DIR/<class>/ holds images or video files; light augmentation on top.

Every example gets a fold number from its position in its source (contiguous blocks of a video, or of the
sorted images of a folder), so neighbouring video frames, which look alike, land in the same fold and the
cross-validated accuracy measures frames the head has not seen the like of.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitor.capture.frames import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    FrameSourceError,
    read_image,
    video_frames,
)
from monitor.inference.preprocess import Crop, crop_box

MAX_IMAGES_PER_CLASS = 2000          # bounds time and memory of one training run


class ExamplesError(Exception):
    """The examples folder cannot train a head; the message names the folder and what is missing."""


@dataclass(frozen=True)
class ClassSource:
    name: str
    images: tuple[Path, ...]
    videos: tuple[Path, ...]


@dataclass(frozen=True)
class Example:
    label: int
    fold: int
    source: str
    frame: np.ndarray


def scan(examples_dir: str | Path) -> list[ClassSource]:
    """One ClassSource per sub-folder holding at least one image or video, sorted by name."""
    root = Path(examples_dir)
    if not root.is_dir():
        raise ExamplesError(f"{root}: no such examples folder (expected one sub-folder per class, "
                            f"e.g. {root}/package/ and {root}/none/)")
    out = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in sub.rglob("*") if f.is_file())
        images = tuple(f for f in files if f.suffix.lower() in IMAGE_SUFFIXES)
        videos = tuple(f for f in files if f.suffix.lower() in VIDEO_SUFFIXES)
        if images or videos:
            out.append(ClassSource(sub.name, images[:MAX_IMAGES_PER_CLASS], videos))
    if len(out) < 2:
        found = ", ".join(c.name for c in out) or "none"
        raise ExamplesError(f"{root}: a head needs at least two class folders with images or videos "
                            f"(found: {found}); add a 'none' folder with frames showing nothing of interest")
    return out


def expected_count(classes: Sequence[ClassSource], frames_per_video: int) -> int:
    return sum(len(c.images) + len(c.videos) * frames_per_video for c in classes)


def iterate(classes: Sequence[ClassSource], frames_per_video: int, folds: int) -> Iterator[Example]:
    """Examples in class order, each with its fold; unreadable files raise ExamplesError naming them."""
    for label, cls in enumerate(classes):
        n = len(cls.images)
        for i, path in enumerate(cls.images):
            try:
                frame = read_image(path)
            except FrameSourceError as e:
                raise ExamplesError(str(e)) from None
            yield Example(label, i * folds // max(n, 1), str(path), frame)
        for path in cls.videos:
            try:
                frames = list(video_frames(str(path), frames_per_video)) if frames_per_video else []
            except FrameSourceError as e:
                raise ExamplesError(str(e)) from None
            for i, frame in enumerate(frames):
                yield Example(label, i * folds // len(frames), str(path), frame)


AUGMENTATIONS = ("original", "flip", "crop", "flip+crop")


def augment(frame: np.ndarray, crop: Crop, seed: int, scale: float = 0.88) -> list[tuple[np.ndarray, Crop]]:
    """(frame, crop) pairs for the classifier: the example, mirrored, and two small crops (one mirrored).

    The crops keep `scale` of the region's side at a random offset, so the head tolerates a camera that
    moved a little; the first pair is always the example as the daemon will see it."""
    rng = np.random.default_rng(seed)
    h, w = frame.shape[:2]
    x, y, bw, bh = crop_box(h, w, crop)
    flipped = np.ascontiguousarray(frame[:, ::-1])
    fx = w - x - bw                         # the same region in the mirrored frame

    def small(x0: int, y0: int) -> tuple[int, int, int, int]:
        cw, ch = max(1, round(bw * scale)), max(1, round(bh * scale))
        return (x0 + int(rng.integers(0, bw - cw + 1)), y0 + int(rng.integers(0, bh - ch + 1)), cw, ch)

    return [(frame, (x, y, bw, bh)), (flipped, (fx, y, bw, bh)), (frame, small(x, y)), (flipped, small(fx, y))]
