"""Classify BGR frames with the runtime artifact."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch

from monitor.inference import artifact
from monitor.inference.preprocess import Crop, prepare_batch

log = logging.getLogger(__name__)

_threads_lock = threading.Lock()
_threads_set: int | None = None


class Prediction(NamedTuple):
    label: str
    index: int
    probability: float


def configure_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count once per process; later calls keep the first value."""
    global _threads_set
    with _threads_lock:
        if _threads_set is None:
            if threads:
                torch.set_num_threads(threads)
            try:
                # One inference at a time (the classifier holds a lock): inter-op threads only cost memory.
                torch.set_num_interop_threads(1)
            except RuntimeError:
                pass  # already fixed by earlier parallel work in this process
            _threads_set = torch.get_num_threads()
        elif threads and threads != _threads_set:
            log.warning("torch threads already set to %d; ignoring %d", _threads_set, threads)
        return _threads_set


def top_k_predictions(probabilities: np.ndarray, labels: Sequence[str], k: int) -> list[list[Prediction]]:
    k = max(1, min(k, probabilities.shape[1]))
    out = []
    for row in probabilities:
        idx = np.argpartition(row, -k)[-k:]
        idx = idx[np.argsort(row[idx])[::-1]]
        out.append([Prediction(labels[i], int(i), float(row[i])) for i in idx])
    return out


class Classifier:
    """A loaded artifact. Thread-safe: one inference at a time, so callers never oversubscribe the cores."""

    def __init__(self, weights: str | Path, threads: int | None = None) -> None:
        self.threads = configure_threads(threads)
        self.path = Path(weights)
        self.meta, self._module, self.sha256 = artifact.load(self.path)
        self.labels = self.meta.labels
        self._size = int(self.meta.preprocess.get("crop", 224))
        self._resize = int(self.meta.preprocess.get("resize", 256))
        self._lock = threading.Lock()

    @property
    def untrained(self) -> bool:
        return bool(self.meta.untrained)

    def prepare(self, frames: Sequence[np.ndarray], crops: Sequence[Crop] | None = None) -> np.ndarray:
        return prepare_batch(frames, crops, self._size, self._resize)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, size, size, 3) uint8 batch -> (N, 1000) float32 probabilities."""
        with self._lock, torch.inference_mode():
            logits = self._module(torch.from_numpy(batch))
            return torch.softmax(logits, dim=1).numpy()

    def probabilities(self, frames: Sequence[np.ndarray], crops: Sequence[Crop] | None = None) -> np.ndarray:
        if not len(frames):
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.infer(self.prepare(frames, crops))

    def classify(self, frames: Sequence[np.ndarray], top_k: int = 3,
                 crops: Sequence[Crop] | None = None) -> list[list[Prediction]]:
        return top_k_predictions(self.probabilities(frames, crops), self.labels, top_k)
