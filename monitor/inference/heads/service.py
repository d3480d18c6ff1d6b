"""Custom classes in the running daemon: the heads, their example folders, labelling and background retraining.

The web layer calls label_frame / label_event / retrain / status_json; the worker reads `heads`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from monitor.inference.heads.labelling import ExampleStore, LabelError
from monitor.inference.heads.retrain import HeadTrainer

if TYPE_CHECKING:
    from monitor.inference.classifier import Classifier
    from monitor.inference.heads.headset import HeadEntry, HeadSet

NONE_CLASS = "none"


def clean_snapshot_path(snapshot: str | Path) -> Path:
    """Where the snapshot sink keeps the frame of a custom-class event without the overlay (for labelling)."""
    p = Path(snapshot)
    return p.with_name(p.stem + ".clean.jpg")


class CustomClasses:
    def __init__(self, classifier: Classifier, heads: HeadSet, examples: Mapping[str, Path]) -> None:
        self.heads = heads
        self.examples = {name: ExampleStore(path) for name, path in examples.items()}
        self.trainer = HeadTrainer(classifier, heads, dict(examples))

    def start(self) -> None:
        self.trainer.start()

    def stop(self, timeout: float = 2.0) -> None:
        self.trainer.stop(timeout)

    def replace_heads(self, heads: HeadSet, examples: Mapping[str, Path]) -> None:
        """After a config reload: the new heads and folders (the trainer keeps running)."""
        self.heads = heads
        self.examples = {name: ExampleStore(path) for name, path in examples.items()}
        self.trainer.heads = heads
        self.trainer.examples = dict(examples)

    def _entry(self, head: str) -> HeadEntry:
        entry = self.heads.get(head)
        if entry is None:
            raise LabelError(f"no custom class {head!r} (configured: {', '.join(self.heads.names()) or 'none'})")
        return entry

    def label_frame(self, head: str, class_name: str, camera: str, frame: np.ndarray, camera_crop: Any) -> Path:
        """File the region of `frame` the head sees as an example of `class_name` ("save this frame as...")."""
        entry = self._entry(head)
        if not entry.applies_to(camera):
            raise LabelError(f"custom class {head!r} does not run on camera {camera!r}")
        if class_name not in entry.head.classes and class_name != NONE_CLASS:
            raise LabelError(f"head {head!r} has no class {class_name!r} (it has: {', '.join(entry.head.classes)})")
        crop = entry.crop if entry.crop is not None else camera_crop
        return self.examples[head].save(class_name, frame, crop, camera)

    def label_event(self, event: Mapping[str, Any], right: bool, frame: np.ndarray, camera_crop: Any) -> Path:
        """An event of rule entry "head:class" was right (file its frame under the class) or wrong (under none)."""
        head, sep, cls = str(event.get("label", "")).partition(":")
        if not sep:
            raise LabelError(f"event {event.get('id')} is about ImageNet class {event.get('label')!r}, not a "
                             f"custom class: nothing to learn from it")
        return self.label_frame(head, cls if right else NONE_CLASS, str(event.get("camera", "")), frame,
                                camera_crop)

    def retrain(self, head: str) -> dict[str, Any]:
        self._entry(head)
        return self.trainer.request(head)

    def status_json(self, cameras: Sequence[str] = ()) -> list[dict[str, Any]]:
        out = []
        for e in self.heads.entries():
            store = self.examples.get(e.name)
            out.append({"name": e.name, "classes": list(e.head.classes), "cameras": list(e.cameras) or list(cameras),
                        "crop": list(e.crop) if isinstance(e.crop, tuple) else e.crop, "head": str(e.path),
                        "held_out_accuracy": e.head.summary.get("held_out_accuracy"),
                        "examples": store.counts() if store is not None else {},
                        "retrain": self.trainer.status(e.name)})
        return out
