"""The inference worker: one thread that classifies the due frames of all cameras in one batch."""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable, Protocol, Sequence

import numpy as np

from monitor.core.region import CENTER, Box, Region, RegionError
from monitor.core.threadclock import Stopwatch
from monitor.inference.classifier import top_k_predictions
from monitor.inference.heads.cam import pooled_features
from monitor.inference.results import CustomResult, Result, ResultBoard

if TYPE_CHECKING:
    from monitor.capture.camera import Camera, Frame
    from monitor.inference.classifier import Classifier, Inference, Prediction
    from monitor.inference.heads.headset import HeadEntry, HeadSet
    from monitor.core.metrics import Metrics

log = logging.getLogger(__name__)

FAILURE_LOG_EVERY = 60.0    # seconds: at most one log line per camera about frames that cannot be classified


class ResultObserver(Protocol):
    """What the worker feeds (the alert engine, a later stage): declared here so that imports flow one way."""

    def observe(self, result: Result) -> None: ...

    def tick(self) -> None: ...


class InferenceWorker:
    """Waits for due frames, classifies them together, publishes results and feeds the alert engine.

    Cameras hand out only their newest due frame (take_due), so the worker never classifies a stale frame
    while a newer one exists; a frame that went unclassified was replaced and counted by its camera.
    """

    def __init__(self, classifier: Classifier, board: ResultBoard, alerts: ResultObserver | None, metrics: Metrics,
                 top_k: int = 3, batch_max: int = 8, idle_wake: float = 0.5, heads: HeadSet | None = None) -> None:
        self.classifier = classifier
        self.heads = heads              # custom-class heads; replaced whole on a reload
        self.board = board
        self.alerts = alerts
        self.metrics = metrics
        self.top_k = top_k
        self.batch_max = batch_max
        self.idle_wake = idle_wake
        self.heartbeat = time.monotonic()
        self.classified = 0
        # Benchmarks set this to see each capture-to-result latency (seconds); the daemon keeps none.
        self.latency_observer: Callable[[float], None] | None = None
        self._cameras: tuple[Camera, ...] = ()
        self.paused: frozenset[str] = frozenset()    # cameras whose due frames are taken and discarded
        self._publish_lock = threading.Lock()   # publishing a batch vs. set_cameras()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure_logged: dict[str, tuple[float, int]] = {}   # camera -> (last log time, failures since)
        self._misplaced_logged: dict[tuple[str, str], float] = {}  # (camera, head) -> last log time
        self._clock = Stopwatch()               # worker thread only: where each batch's wall time went
        seconds = metrics.inference_thread_seconds
        self._on_cpu, self._runnable, self._blocked = (seconds.labels(state=s) for s in ("on_cpu", "runnable",
                                                                                          "blocked"))

    def set_cameras(self, cameras: Sequence[Camera]) -> None:
        """Replace the cameras; once this returns, no result of a camera left out is published any more (a
        reload then drops its board entry and metric series, and nothing may bring them back)."""
        with self._publish_lock:
            self._cameras = tuple(cameras)  # replaced whole: the loop reads one consistent tuple per round
        self._wake.set()

    def set_paused(self, names: Iterable[str]) -> None:
        """Stop (or resume) classifying these cameras. Their due frames are still taken, so a paused camera
        counts no dropped frames and its live view keeps running."""
        self.paused = frozenset(names)

    def wake(self) -> None:
        """Called from capture threads when a frame becomes due: cheap, never blocks."""
        self._wake.set()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="inference-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("inference worker still busy after %.1f s", timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            self._wake.wait(self.idle_wake)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.run_once()
                alerts = self.alerts  # read once: a reload may swap it between two reads
                if alerts is not None:
                    alerts.tick()
            except Exception:  # a bad frame or a sink bug must not kill the only worker
                log.exception("inference worker: round failed; continuing")

    def run_once(self) -> int:
        """Take every camera's due frame and classify them; returns how many frames were classified."""
        due: list[tuple[Camera, Frame]] = []
        paused = self.paused
        for cam in self._cameras:
            frame = cam.take_due()
            if frame is not None and cam.name not in paused:
                due.append((cam, frame))
        for start in range(0, len(due), self.batch_max):
            self._classify(due[start:start + self.batch_max])
        return len(due)

    def _classify(self, batch: list[tuple[Camera, Frame]]) -> None:
        clf = self.classifier
        self._clock.start()
        frames = [f.image for _, f in batch]
        try:
            boxes = [frame_box(f) for _, f in batch]
            crops: list[Box] = list(boxes)
            jobs = self._head_jobs(batch, boxes, frames, crops)   # may append extra crops of the same frames
            inference = clf.infer(frames, crops)
        except Exception as e:
            if len(batch) > 1:
                # One bad frame must not cost the other cameras their results: classify them one by one (only
                # after a failure, so the normal path stays one batch).
                for item in batch:
                    self._classify([item])
            else:
                self._failed(batch[0][0].name, batch[0][1], e)
            return
        n = len(batch)
        probs = inference.probabilities[:n]
        tops = top_k_predictions(probs, clf.labels, self.top_k)
        # Why the top class: exact class activation maps (one (D,) x (D, 7, 7) product per frame), or Grad-CAM where
        # the classifier has a hidden layer (MobileNetV3): monitor/inference/explain.py
        heatmaps = clf.class_maps(inference.feature_maps[:n], [p[0].index for p in tops])
        customs = self._run_heads(n, jobs, inference, crops)
        done = time.monotonic()
        split = self._clock.split()
        self._on_cpu.inc(split.on_cpu)
        self._runnable.inc(split.runnable)
        self._blocked.inc(split.blocked)
        self.metrics.inference_seconds.observe(split.wall)
        self.metrics.batch_size.observe(len(frames))
        with self._publish_lock:
            self._publish(batch, boxes, probs, tops, done, customs, heatmaps)
        self.classified += len(batch)

    def _head_jobs(self, batch: list[tuple[Camera, Frame]], boxes: list[Box], frames: list[np.ndarray],
                   crops: list[Box]) -> list[tuple[int, HeadEntry, int]]:
        """(frame k, head entry, feature row) for every head of every camera in the batch. A head on the
        frame's own region reuses that frame's features; a head with a region of its own adds that region of the
        same frame to the batch, so one inference call still serves everything. A head whose region does not
        fit a frame gives no answer for it (logged), and the frame is classified as usual."""
        heads = self.heads
        if heads is None or not len(heads):
            return []
        jobs = []
        extra_rows: dict[tuple[int, Box], int] = {}
        for k, (cam, frame) in enumerate(batch):
            height, width = frame.image.shape[:2]
            for entry in heads.for_camera(cam.name):
                try:
                    box = boxes[k] if entry.crop is None else Region.of(entry.crop).clip_to(width, height)
                except RegionError as e:
                    self._head_misplaced(cam.name, entry, e)
                    continue
                if box == boxes[k]:
                    jobs.append((k, entry, k))
                    continue
                row = extra_rows.get((k, box))
                if row is None:
                    row = extra_rows[(k, box)] = len(frames)
                    frames.append(frame.image)
                    crops.append(box)
                jobs.append((k, entry, row))
        return jobs

    def _head_misplaced(self, camera: str, entry: HeadEntry, error: RegionError) -> None:
        """A head's own crop does not fit a camera's frames: at most one log line per FAILURE_LOG_EVERY."""
        now = time.monotonic()
        key = (camera, entry.name)
        if now - self._misplaced_logged.get(key, -FAILURE_LOG_EVERY) < FAILURE_LOG_EVERY:
            return
        self._misplaced_logged[key] = now
        log.error("camera %s: custom class %r (%s.crop): %s: no answer from this head on this camera",
                  camera, entry.name, entry.key, error)

    @staticmethod
    def _run_heads(n: int, jobs: list[tuple[int, HeadEntry, int]], inference: Inference,
                   crops: list[Box]) -> list[dict]:
        customs: list[dict[str, CustomResult]] = [{} for _ in range(n)]
        if not jobs:
            return customs
        pooled = pooled_features(inference.feature_maps)
        for k, entry, row in jobs:
            p = entry.head.probabilities(pooled[row:row + 1])[0]
            customs[k][entry.name] = CustomResult(entry.name, entry.head.classes, p, box=crops[row])
        return customs

    def _publish(self, batch: list[tuple[Camera, Frame]], boxes: list[Box], probs: np.ndarray,
                 tops: list[list[Prediction]], done: float, customs: list[dict[str, CustomResult]],
                 heatmaps: np.ndarray) -> None:
        alerts = self.alerts  # read once: a reload may swap it mid-batch
        now = time.time()
        current = self._cameras
        for k, ((cam, frame), row, preds) in enumerate(zip(batch, probs, tops)):
            if cam not in current:
                continue         # removed or replaced by a reload while its frame was being classified
            latency = done - frame.captured_mono
            result = Result(camera=cam.name, frame=frame, predictions=preds, probabilities=row,
                            classified_at=now, latency=latency, custom=customs[k], heatmap=heatmaps[k],
                            box=boxes[k])
            self.board.publish(result)
            self.metrics.frames_classified.labels(camera=cam.name).inc()
            self.metrics.capture_to_result_seconds.observe(latency)
            for c in customs[k].values():
                for cls, value in zip(c.classes, c.probabilities):
                    self.metrics.custom_class_probability.labels(cam.name, c.head, cls).set(float(value))
            if self.latency_observer is not None:
                self.latency_observer(latency)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("classified camera=%s seq=%d top=%s latency_ms=%.1f", cam.name, frame.seq,
                          ", ".join(f"{p.label}:{p.probability:.3f}" for p in preds), latency * 1000,
                          extra={"camera": cam.name, "seq": frame.seq, "latency": latency,
                                 "predictions": [(p.label, round(p.probability, 4)) for p in preds],
                                 "custom": {c.head: (c.label, round(c.probability, 4))
                                            for c in customs[k].values()}})
            if alerts is not None:
                alerts.observe(result)

    def _failed(self, camera: str, frame: Frame, error: Exception) -> None:
        """Count a frame that cannot be classified; log it at most once per FAILURE_LOG_EVERY per camera."""
        self.metrics.frames_failed.labels(camera=camera).inc()
        now = time.monotonic()
        last, since = self._failure_logged.get(camera, (-FAILURE_LOG_EVERY, 0))
        if now - last < FAILURE_LOG_EVERY:
            self._failure_logged[camera] = (last, since + 1)
            return
        self._failure_logged[camera] = (now, 0)
        shape = getattr(frame.image, "shape", None)
        more = f" ({since} more since the last report)" if since else ""
        log.warning("camera %s: frame %d cannot be classified: %s: %s (frame shape %s)%s; counted in "
                    "monitor_frames_failed_total", camera, frame.seq, type(error).__name__, error, shape, more)


def frame_box(frame: Frame) -> Box:
    """The region a frame is classified on: the box its camera placed when it captured it (Frame.box); the
    centre square for a frame made elsewhere. RegionError for an empty picture."""
    if frame.box is not None:
        return frame.box
    height, width = frame.image.shape[:2]
    return CENTER.clip_to(width, height)
