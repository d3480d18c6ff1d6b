"""Examples collected from the daemon ("save this frame as...", "this event was right/wrong"), on disk under the
state directory: <examples>/<class>/<time>-<camera>.jpg, the layout `monitor classes train` reads.

A stored example is the region the head sees (its own crop, or the camera's), so retraining crops nothing.
Per class at most MAX_PER_CLASS files are kept (the oldest go first): disk use stays bounded however long a
user keeps labelling.
"""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from monitor.core.region import RegionError
from monitor.inference.heads.storage import storage_error, write_files
from monitor.inference.preprocess import crop_box

MAX_PER_CLASS = 2000
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class LabelError(Exception):
    """A label request that cannot be honoured (unknown class, no frame); the message says why."""


class ExampleStore:
    def __init__(self, root: Path, max_per_class: int = MAX_PER_CLASS, key: str = "examples") -> None:
        self.root = Path(root)
        self.key = key              # the config key of `root` (custom_classes[i].examples): errors name it
        self.max_per_class = max_per_class
        self._lock = threading.Lock()
        self._seq = 0

    def save(self, class_name: str, frame: np.ndarray, crop: Any, camera: str = "") -> Path:
        """Write the `crop` region of the BGR frame as an example of `class_name`; returns its path. LabelError
        when the region does not fit the frame.

        StorageError when the disk refuses (full, read-only, ...): no file, not even a partial one, is left."""
        if not class_name or _SAFE.sub("", class_name) != class_name or class_name.startswith("."):
            raise LabelError(f"invalid class name {class_name!r}")
        h, w = frame.shape[:2]
        try:
            x, y, bw, bh = crop_box(h, w, crop)
        except RegionError as e:
            raise LabelError(f"cannot file the frame: {e}") from None
        ok, buf = cv2.imencode(".jpg", frame[y:y + bh, x:x + bw], [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise LabelError("cannot encode the frame as JPEG")
        folder = self.root / class_name
        with self._lock:
            self._seq += 1
            name = f"{time.strftime('%Y%m%d-%H%M%S')}-{self._seq:04d}-{_SAFE.sub('_', camera) or 'frame'}.jpg"
            path = folder / name
            try:
                write_files([(path, buf.tobytes())])
            except OSError as e:
                raise storage_error(e, f"save an example of {class_name!r}", self.key) from None
            self._trim(folder)
        return path

    def counts(self) -> dict[str, int]:
        """Examples per class; {} when the folder is missing or unreadable (the page keeps working)."""
        try:
            if not self.root.is_dir():
                return {}
            return {d.name: sum(1 for f in d.iterdir() if f.suffix == ".jpg")
                    for d in sorted(self.root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
        except OSError:
            return {}

    def _trim(self, folder: Path) -> None:
        try:
            files = sorted(f for f in folder.iterdir() if f.suffix == ".jpg")
            for old in files[:max(0, len(files) - self.max_per_class)]:
                old.unlink(missing_ok=True)
        except OSError:     # the example is saved; an old one left over is retried on the next save
            pass
