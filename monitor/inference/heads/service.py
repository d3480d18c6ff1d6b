"""Custom classes in the running daemon: the heads, their example folders, labelling and background retraining.

The web layer calls label_frame / label_event / retrain / restore / status_json; the worker reads `heads`.
Heads, example stores and rules form one immutable CustomState swapped under one reference on a reload: every
call reads it once, so a request running during a reload sees the old set or the new one, never half of each.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from monitor.core.region import Box, Region
from monitor.inference.heads.labelling import ExampleStore, LabelError
from monitor.inference.heads.retrain import HeadTrainer
from monitor.inference.heads.state import CustomState, build_state
from monitor.inference.heads.storage import prev_path

if TYPE_CHECKING:
    from monitor.inference.classifier import Classifier
    from monitor.inference.heads.headset import HeadEntry, HeadSet
    from monitor.inference.preprocess import Crop

NONE_CLASS = "none"


class CustomClasses:
    def __init__(self, classifier: Classifier, heads: HeadSet, examples: Mapping[str, Path],
                 rules: Sequence[Any] = ()) -> None:
        self.state = build_state(heads, examples, rules)
        self.trainer = HeadTrainer(classifier, lambda: self.state)

    @property
    def heads(self) -> HeadSet:
        return self.state.heads

    @property
    def examples(self) -> Mapping[str, ExampleStore]:
        return self.state.stores

    def start(self) -> None:
        self.trainer.start()

    def stop(self, timeout: float = 2.0) -> None:
        self.trainer.stop(timeout)

    def replace_heads(self, heads: HeadSet, examples: Mapping[str, Path], rules: Sequence[Any] = ()) -> None:
        """After a config reload: the new heads, folders and rules, in one assignment (the trainer keeps running
        and reads the new set at its next step)."""
        self.state = build_state(heads, examples, rules)

    @staticmethod
    def _entry(state: CustomState, head: str) -> HeadEntry:
        entry = state.heads.get(head)
        if entry is None:
            raise LabelError(f"no custom class {head!r} (configured: {', '.join(state.heads.names()) or 'none'})")
        return entry

    def label_frame(self, head: str, class_name: str, camera: str, frame: np.ndarray, frame_region: Crop) -> Path:
        """File the region of `frame` the head sees as an example of `class_name` ("save this frame as..."):
        the head's own crop, else `frame_region`, the region the frame was classified on (Frame.box, placed by
        its camera when it captured the frame). LabelError for a request that cannot be honoured, StorageError
        when the disk refuses."""
        state = self.state
        entry = self._labelled(state, head, class_name, camera)
        crop = entry.crop if entry.crop is not None else frame_region
        return state.stores[head].save(class_name, frame, crop, camera)

    def counts(self, head: str) -> dict[str, int]:
        """Examples per class of `head` ({} for a head a reload removed meanwhile)."""
        store = self.state.stores.get(head)
        return store.counts() if store is not None else {}

    def label_event(self, label: str, camera: str, right: bool, frame: np.ndarray, *, box: Box | None,
                    camera_crop: Crop = "center") -> Path:
        """An event of `camera` whose rule entry `label` is "head:class" was right (file its frame under the
        class) or wrong (under none). `box` is the region that entry was scored on (Event.box): it is filed as it
        is, whatever a reload has changed since. An event stored before events kept their box (None) files what
        label_frame would with `camera_crop`."""
        head, sep, cls = label.partition(":")
        if not sep:
            raise LabelError(f"the event is about ImageNet class {label!r}, not a custom class: nothing to learn "
                             f"from it")
        class_name = cls if right else NONE_CLASS
        if box is None:
            return self.label_frame(head, class_name, camera, frame, camera_crop)
        state = self.state
        self._labelled(state, head, class_name, camera)
        return state.stores[head].save(class_name, frame, Region.of(box), camera)

    def _labelled(self, state: CustomState, head: str, class_name: str, camera: str) -> HeadEntry:
        """The entry of `head`, when `class_name` of it may be filed from `camera` (else LabelError)."""
        entry = self._entry(state, head)
        if not entry.applies_to(camera):
            raise LabelError(f"custom class {head!r} does not run on camera {camera!r}")
        if class_name not in entry.head.classes and class_name != NONE_CLASS:
            raise LabelError(f"head {head!r} has no class {class_name!r} (it has: {', '.join(entry.head.classes)})")
        return entry

    def retrain(self, head: str) -> dict[str, Any]:
        """Queue a retrain (KeyError: no such head; RetrainRefused "too_soon": within its retrain_interval)."""
        return self.trainer.request(head)

    def restore(self, head: str) -> dict[str, Any]:
        """Swap the head's `.prev` back in (KeyError: no such head; RetrainRefused: no .prev, busy, rules)."""
        return self.trainer.restore(head)

    def status_json(self, cameras: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The heads for /api/status and /api/heads. Files are named by their config key, never by path."""
        state = self.state
        out = []
        for e in state.heads.entries():
            store = state.stores.get(e.name)
            out.append({"name": e.name, "classes": list(e.head.classes), "cameras": list(e.cameras) or list(cameras),
                        "crop": Region.of(e.crop).to_json() if e.crop is not None else None, "head": f"{e.key}.head",
                        "held_out_accuracy": e.head.summary.get("held_out_accuracy"),
                        "examples": store.counts() if store is not None else {},
                        "examples_folder": store.key if store is not None else None,
                        "retrain_interval": e.retrain_interval,
                        "restorable": _is_file(prev_path(e.path)),
                        "retrain": self.trainer.status(e.name)})
        return out


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False
