"""Train a head: backbone features of every example (augmented), k-fold accuracy per class, final fit."""
from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from monitor.inference.heads import examples as ex
from monitor.inference.heads.cam import pooled_features
from monitor.inference.heads.head import Head
from monitor.inference.heads.softmax import fit_softmax

if TYPE_CHECKING:
    from monitor.inference.classifier import Classifier

BATCH = 8


@dataclass
class TrainingReport:
    classes: tuple[str, ...]
    examples: list[int]                       # per class (before augmentation)
    correct: list[int] = field(default_factory=list)    # held-out, per class
    tested: list[int] = field(default_factory=list)
    folds: int = 0
    feature_seconds: float = 0.0
    fit_seconds: float = 0.0

    @property
    def accuracy(self) -> float | None:
        return sum(self.correct) / sum(self.tested) if sum(self.tested) else None

    def class_accuracy(self, i: int) -> float | None:
        return self.correct[i] / self.tested[i] if self.tested and self.tested[i] else None

    def lines(self) -> list[str]:
        out = [f"{'class':<20} {'examples':>8} {'held-out accuracy':>18}"]
        for i, name in enumerate(self.classes):
            acc = self.class_accuracy(i)
            shown = f"{acc * 100:6.1f} % ({self.correct[i]}/{self.tested[i]})" if acc is not None else "n/a"
            out.append(f"{name:<20} {self.examples[i]:>8} {shown:>18}")
        total = self.accuracy
        out.append(f"{'all':<20} {sum(self.examples):>8} "
                   f"{(f'{total * 100:6.1f} %' if total is not None else 'n/a'):>18}   ({self.folds}-fold, "
                   f"features {self.feature_seconds:.1f} s, fits {self.fit_seconds:.2f} s)")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "examples": self.examples, "held_out_correct": self.correct,
                "held_out_tested": self.tested, "folds": self.folds,
                "held_out_accuracy": self.accuracy, "feature_seconds": round(self.feature_seconds, 2),
                "fit_seconds": round(self.fit_seconds, 3), "augmentations": list(ex.AUGMENTATIONS)}


@dataclass(frozen=True)
class FeatureSet:
    features: np.ndarray      # (N, A, D): every example x its augmentations (index 0 = as the daemon sees it)
    labels: np.ndarray        # (N,)
    folds: np.ndarray         # (N,)
    classes: tuple[str, ...]


def extract(classifier: Classifier, examples_dir: str | Path, crop: str = "center", frames_per_video: int = 40,
            folds: int = 5, progress: bool | None = None, batch: int = BATCH,
            frames_per_call: int | None = None) -> FeatureSet:
    """Backbone features of every example and its augmentations, `batch` examples per inference call (or
    `frames_per_call` frames: the daemon's retraining keeps its calls short, so the live worker, which shares
    the classifier's lock, never waits long for one)."""
    sources = ex.scan(examples_dir)
    total = ex.expected_count(sources, frames_per_video)
    feats: list[np.ndarray] = []
    labels: list[int] = []
    fold_of: list[int] = []
    pending_frames: list[np.ndarray] = []
    pending_crops: list[Any] = []
    n_aug = len(ex.AUGMENTATIONS)

    per_call = frames_per_call or batch * n_aug

    def flush() -> None:
        while pending_frames:
            out = pooled_features(classifier.infer(pending_frames[:per_call], pending_crops[:per_call]).feature_maps)
            feats.append(np.asarray(out, dtype=np.float32))
            del pending_frames[:per_call], pending_crops[:per_call]

    with tqdm(total=total, unit="example", desc="features", disable=None if progress is None else not progress,
              leave=False) as bar:
        for i, example in enumerate(ex.iterate(sources, frames_per_video, folds)):
            for frame, c in ex.augment(example.frame, crop, seed=i):
                pending_frames.append(frame)
                pending_crops.append(c)
            labels.append(example.label)
            fold_of.append(example.fold)
            if len(pending_frames) >= per_call:
                flush()
            bar.update(1)
        flush()
    dim = feats[0].shape[-1] if feats else 0
    features = np.concatenate(feats).reshape(-1, n_aug, dim) if feats else np.zeros((0, n_aug, dim), np.float32)
    return FeatureSet(features,
                      np.asarray(labels, dtype=np.intp), np.asarray(fold_of, dtype=np.intp),
                      tuple(s.name for s in sources))


def cross_validate(data: FeatureSet, folds: int, l2: float) -> TrainingReport:
    n_cls = len(data.classes)
    report = TrainingReport(data.classes, [int(c) for c in np.bincount(data.labels, minlength=n_cls)],
                            [0] * n_cls, [0] * n_cls, folds)
    started = time.monotonic()
    n_aug = data.features.shape[1]
    for f in range(folds):
        test = data.folds == f
        train = ~test
        if not test.any() or len(np.unique(data.labels[train])) < 2:
            continue
        x = data.features[train].reshape(-1, data.features.shape[-1])
        y = np.repeat(data.labels[train], n_aug)
        model = fit_softmax(x, y, n_cls, l2=l2)
        pred = (data.features[test, 0] @ model.weight.T + model.bias).argmax(axis=1)
        for label, p in zip(data.labels[test], pred):
            report.tested[label] += 1
            report.correct[label] += int(p == label)
    report.fit_seconds = time.monotonic() - started
    return report


def fit_head(data: FeatureSet, name: str, backbone: dict[str, Any], crop: str, l2: float,
             summary: dict[str, Any]) -> Head:
    x = data.features.reshape(-1, data.features.shape[-1])
    y = np.repeat(data.labels, data.features.shape[1])
    model = fit_softmax(x, y, len(data.classes), l2=l2)
    return Head(name=name, classes=data.classes, weight=model.weight, bias=model.bias, backbone=backbone,
                crop=crop, summary={**summary, "iterations": model.iterations, "loss": round(model.loss, 5)})


def train_head(classifier: Classifier, name: str, examples_dir: str | Path, crop: str = "center",
               frames_per_video: int = 40, folds: int = 5, l2: float = 1e-2,
               progress: bool | None = None, batch: int = BATCH,
               frames_per_call: int | None = None) -> tuple[Head, TrainingReport]:
    """Features of the examples, `folds`-fold held-out accuracy per class, then one fit on everything."""
    started = time.monotonic()
    data = extract(classifier, examples_dir, crop, frames_per_video, folds, progress, batch, frames_per_call)
    report = cross_validate(data, folds, l2)
    report.feature_seconds = time.monotonic() - started - report.fit_seconds
    summary = {**report.to_json(), "examples_dir": str(examples_dir), "frames_per_video": frames_per_video,
               "l2": l2, "trained_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    backbone = {"sha256": classifier.backbone_id, "name": classifier.meta.name}
    return fit_head(data, name, backbone, crop, l2, summary), report
