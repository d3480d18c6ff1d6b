"""Classify BGR frames with a runtime artifact (OpenVINO or torch): probabilities, features and feature maps
from one inference.

Importing this module imports neither torch nor OpenVINO; the artifact's runtime is imported when it loads,
so a daemon that runs the OpenVINO artifact never maps libtorch.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol, Sequence

import numpy as np

from monitor.inference import artifact
from monitor.inference.archs import ARCHS, ArchSpec, arch_spec
from monitor.inference.explain import Explainer
from monitor.inference.preprocess import Crop, prepare_batch

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "openvino", "torch")
OPENVINO_SUFFIX = ".ov"
TORCH_SUFFIX = ".pt"


class Prediction(NamedTuple):
    label: str
    index: int
    probability: float


@dataclass(frozen=True)
class Inference:
    """Everything one pass of the network gives for a batch of N frames."""
    probabilities: np.ndarray   # (N, 1000) float32, softmax of the logits
    logits: np.ndarray          # (N, 1000) float32
    features: np.ndarray        # (N, D) float32: the pooled last feature maps (ResNet-18 512, ResNet-50 2048,
                                # MobileNetV3-Large 960: the input of its hidden 1280 layer)
    feature_maps: np.ndarray    # (N, D, 7, 7) float32: the last feature maps (dequantized)


class Backend(Protocol):
    name: str
    threads: int

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def configure_threads(threads: int | None) -> int:
    """torch's intra-op threads (for the torch runtime and the benchmarks' torch baseline)."""
    from monitor.inference.torch_runtime import configure_threads as torch_threads
    return torch_threads(threads)


def openvino_artifact(weights: str | Path) -> Path:
    """The OpenVINO artifact that sits next to a torch artifact (weights/resnet18-int8.pt -> .ov)."""
    return Path(weights).with_suffix(OPENVINO_SUFFIX)


def select_artifact(weights: str | Path, runtime: str = "auto") -> Path:
    """The file to load for `model.weights` + `model.runtime`.

    auto: the OpenVINO artifact when it is there (given directly, or next to the torch one), else the file given.
    """
    path = Path(weights)
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "torch":
        return path.with_suffix(TORCH_SUFFIX) if path.suffix == OPENVINO_SUFFIX else path
    if path.suffix == OPENVINO_SUFFIX:
        return path
    sibling = openvino_artifact(path)
    if runtime == "openvino" or sibling.is_file():
        return sibling
    return path


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

    def __init__(self, weights: str | Path, threads: int | None = None, runtime: str = "auto",
                 cache_dir: str | Path | None = None, streams: int = 1) -> None:
        self.path = select_artifact(weights, runtime)
        meta, parts, self.sha256 = artifact.read(self.path)
        if runtime != "auto" and meta.runtime != runtime:
            raise artifact.ArtifactError(f"{self.path}: built for the {meta.runtime} runtime, but runtime "
                                         f"{runtime!r} was asked for")
        self.meta = meta
        # what custom heads are tied to: the same for the torch artifact and the OpenVINO one converted from it
        self.backbone_id = meta.backbone or self.sha256
        self.labels = meta.labels
        self.arch = _check_arch(self.path, meta)
        self.feature_dim = self.arch.features
        self.fc_weight, self.fc_bias = artifact.fc_arrays(parts, len(meta.labels), self.path)
        if self.fc_weight.shape[1] != self.arch.classifier_in:
            raise artifact.ArtifactError(
                f"{self.path}: last layer has {self.fc_weight.shape[1]} inputs, but a {self.arch.title} classifier "
                f"has {self.arch.classifier_in}; {artifact.REBUILD_HINT}")
        hidden = (artifact.hidden_arrays(parts, self.arch.hidden, self.arch.features, self.path)
                  if self.arch.hidden else (None, None))
        # why a class: exact CAM (ResNets) or analytic Grad-CAM through the hidden layer (MobileNetV3)
        self.explainer = Explainer(self.arch, self.fc_weight, self.fc_bias, *hidden)
        if meta.runtime == "openvino":
            from monitor.inference.openvino_runtime import OpenVinoBackend
            self._backend: Backend = OpenVinoBackend(self.path, meta, parts, threads, cache_dir, streams=streams)
        elif meta.runtime == "torch":
            from monitor.inference.torch_runtime import TorchBackend
            self._backend = TorchBackend(self.path, meta, parts, threads)
        else:
            raise artifact.ArtifactError(f"{self.path}: unknown runtime {meta.runtime!r}; {artifact.REBUILD_HINT}")
        del parts
        self.runtime = self._backend.name
        self.threads = self._backend.threads
        # inferences at once for start()/finish() (OpenVINO THROUGHPUT streams); 1: the torch runtime, or the
        # daemon's one-stream LATENCY compile
        self.streams = int(getattr(self._backend, "streams", 1))
        self._size = int(meta.preprocess.get("crop", 224))
        self._resize = int(meta.preprocess.get("resize", 256))
        self._lock = threading.Lock()
        self._cache_dir = cache_dir
        self._pipelined: dict[int, Classifier] = {}
        self._pipelined_used: dict[int, float] = {}     # streams -> time.monotonic() it was last asked for

    def pipelined(self, streams: int) -> Classifier:
        """A Classifier of the same artifact with `streams` inferences at once for start()/finish() (OpenVINO
        THROUGHPUT), made on first use and kept until drop_idle_pipelined(): what a batch of images runs on in a
        daemon whose own classifier keeps one stream for the cameras' latency. Itself for the torch runtime or
        streams <= 1."""
        if streams <= 1 or self.runtime != "openvino" or self.streams == streams:
            return self
        with self._lock:
            sibling = self._pipelined.get(streams)
            if sibling is None:
                sibling = Classifier(self.path, self.threads, self.runtime, self._cache_dir, streams=streams)
                self._pipelined[streams] = sibling
            self._pipelined_used[streams] = time.monotonic()
            return sibling

    def drop_idle_pipelined(self, idle_for: float) -> int:
        """Forget the pipelined copies not asked for in `idle_for` seconds: a compiled copy holds ~36 MB, and a
        daemon that classified one batch should not keep it for months (the next batch compiles it again, ~0.2 s
        from OpenVINO's cache). A batch still running holds its own reference. Returns how many were dropped."""
        now = time.monotonic()
        with self._lock:
            idle = [n for n, used in self._pipelined_used.items() if now - used >= idle_for]
            for n in idle:
                del self._pipelined[n], self._pipelined_used[n]
        if idle:
            log.info("batch classifier: released after %.0f s unused (compiled again on the next batch)", idle_for)
        return len(idle)

    @property
    def untrained(self) -> bool:
        return bool(self.meta.untrained)

    def prepare(self, frames: Sequence[np.ndarray], crops: Sequence[Crop] | None = None) -> np.ndarray:
        """(N, size, size, 3) uint8 BGR: the artifact's input."""
        return prepare_batch(frames, crops, self._size, self._resize)

    def run(self, batch: np.ndarray) -> Inference:
        """One inference on a prepared batch."""
        with self._lock:
            logits, features, maps = self._backend.run(batch)
        return Inference(probabilities=softmax(logits.copy()), logits=logits, features=features, feature_maps=maps)

    def start(self, batch: np.ndarray) -> "Pending":
        """Start one inference on a prepared batch: with several streams it runs while the caller goes on, at
        most self.streams at once (finish() the oldest first); with one stream it runs here, under the lock, as
        run() does. Meant for one caller that pipelines batches (monitor classify DIR); the lock's one inference
        at a time holds for run() only."""
        if self.streams > 1:
            return Pending(self, self._backend.start(batch))          # type: ignore[attr-defined]
        return Pending(self, None, self.run(batch))

    def finish(self, pending: "Pending") -> Inference:
        """The Inference of a started batch (waits for it)."""
        if pending.inference is not None:
            return pending.inference
        logits, features, maps = self._backend.finish(pending.handle)  # type: ignore[attr-defined]
        return Inference(probabilities=softmax(logits.copy()), logits=logits, features=features, feature_maps=maps)

    def infer(self, frames: Sequence[np.ndarray], crops: Sequence[Crop] | None = None) -> Inference:
        if not len(frames):
            n = len(self.labels)
            return Inference(np.zeros((0, n), np.float32), np.zeros((0, n), np.float32),
                             np.zeros((0, self.feature_dim), np.float32),
                             np.zeros((0, self.feature_dim, self._size // 32, self._size // 32), np.float32))
        return self.run(self.prepare(frames, crops))

    def class_maps(self, feature_maps: np.ndarray, classes: Sequence[int] | np.ndarray) -> np.ndarray:
        """(N, D, H, W) feature maps of one inference, (N,) class per frame -> (N, H, W) float32 maps of where
        each frame's class comes from (`explainer.method`: exact CAM or Grad-CAM)."""
        return self.explainer.maps(feature_maps, np.asarray(classes, dtype=np.intp))

    def probabilities(self, frames: Sequence[np.ndarray], crops: Sequence[Crop] | None = None) -> np.ndarray:
        return self.infer(frames, crops).probabilities

    def classify(self, frames: Sequence[np.ndarray], top_k: int = 3,
                 crops: Sequence[Crop] | None = None) -> list[list[Prediction]]:
        return top_k_predictions(self.probabilities(frames, crops), self.labels, top_k)


@dataclass
class Pending:
    """A batch given to Classifier.start(): its runtime request while it runs, or its Inference already."""
    classifier: Classifier
    handle: object
    inference: Inference | None = None


def _check_arch(path: Path, meta: artifact.ArtifactMeta) -> ArchSpec:
    spec = arch_spec(meta.arch)
    if spec is None:
        raise artifact.ArtifactError(f"{path}: holds backbone {meta.arch!r}, which this monitor does not know "
                                     f"(it runs {', '.join(ARCHS)}); {artifact.REBUILD_HINT}")
    return spec
