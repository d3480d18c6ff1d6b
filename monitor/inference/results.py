"""Classification results: the Result record and the board holding the newest one per camera."""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from monitor.core.region import Box

if TYPE_CHECKING:  # runtime imports would create cycles (capture/classifier import heavier modules)
    from monitor.capture.camera import Frame
    from monitor.inference.classifier import Prediction


@dataclass(frozen=True)
class CustomResult:
    """One custom-class head's answer for one frame (a head on the pooled features of the same pass)."""
    head: str                         # the custom_classes entry's name, e.g. "porch"
    classes: tuple[str, ...]          # e.g. ("none", "package")
    probabilities: np.ndarray         # (C,) float32, softmax
    box: Box | None = None            # the frame region (x, y, w, h) the head saw: its own crop, or the frame's

    @property
    def label(self) -> str:
        return self.classes[int(np.argmax(self.probabilities))]

    @property
    def probability(self) -> float:
        return float(np.max(self.probabilities))

    def score(self, class_name: str) -> float:
        try:
            return float(self.probabilities[self.classes.index(class_name)])
        except ValueError:
            return 0.0                # a retrained head without that class: the rule cannot hit


@dataclass(frozen=True)
class Result:
    camera: str
    frame: Frame
    predictions: list[Prediction]     # top-k, best first
    probabilities: np.ndarray         # (1000,) float32, softmax
    classified_at: float              # time.time()
    latency: float                    # seconds, capture to result
    custom: Mapping[str, CustomResult] = field(default_factory=dict)   # head name -> its answer
    heatmap: np.ndarray | None = None  # (7, 7) float32 class activation map of the top ImageNet class
    box: Box | None = None            # the frame region (x, y, w, h) the network saw: frame.box, placed at capture

    def box_for(self, entry: str) -> Box | None:
        """The region a rule entry was scored on: a custom head's region for "head:class", else the frame's."""
        head, sep, _ = entry.partition(":")
        custom = self.custom.get(head) if sep else None
        return custom.box if custom is not None and custom.box is not None else self.box


class _CameraTrack:
    __slots__ = ("latest", "times")

    def __init__(self, maxlen: int) -> None:
        self.latest: Result | None = None
        self.times: deque[float] = deque(maxlen=maxlen)


class ResultBoard:
    """Newest Result per camera plus its output rate, shared by the worker (writer) and web/alerts (readers).

    fps_out is measured over a sliding window of publish times on the monotonic clock, so wall-clock jumps do
    not distort it, and it falls to 0 once a camera has published nothing for a whole window.
    """

    def __init__(self, window: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 max_samples: int = 1024) -> None:
        if window <= 0:
            raise ValueError(f"ResultBoard window must be > 0 seconds (got {window})")
        self._window = window
        self._clock = clock
        self._max_samples = max_samples       # bounds memory at very high rates; the rate stays exact
        self._lock = threading.Lock()
        self._tracks: dict[str, _CameraTrack] = {}

    def publish(self, result: Result) -> None:
        now = self._clock()
        with self._lock:
            track = self._tracks.get(result.camera)
            if track is None:
                track = self._tracks[result.camera] = _CameraTrack(self._max_samples)
            track.latest = result
            track.times.append(now)
            self._trim(track, now)

    def get(self, camera: str) -> Result | None:
        with self._lock:
            track = self._tracks.get(camera)
            return track.latest if track is not None else None

    def fps_out(self, camera: str) -> float:
        """Results per second over the last `window` seconds (0.0 with fewer than two results in it)."""
        now = self._clock()
        with self._lock:
            track = self._tracks.get(camera)
            if track is None:
                return 0.0
            self._trim(track, now)
            times = track.times
            if len(times) < 2:
                return 0.0
            span = times[-1] - times[0]
            return (len(times) - 1) / span if span > 0 else 0.0

    def latency(self, camera: str) -> float | None:
        """Capture-to-result latency of the newest result, or None before the first one."""
        with self._lock:
            track = self._tracks.get(camera)
            return track.latest.latency if track is not None and track.latest is not None else None

    def drop(self, camera: str) -> None:
        """Forget `camera` (removed by a reload): its last frame must not stay in memory or on a page."""
        with self._lock:
            self._tracks.pop(camera, None)

    def cameras(self) -> list[str]:
        with self._lock:
            return list(self._tracks)

    def _trim(self, track: _CameraTrack, now: float) -> None:
        cutoff = now - self._window
        times = track.times
        while times and times[0] < cutoff:
            times.popleft()
