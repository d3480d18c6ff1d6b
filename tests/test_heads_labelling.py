"""Labelling and background retraining: examples filed under the state folder, a retrain swaps the head in."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from monitor.core.region import CENTER
from monitor.inference.classifier import Classifier
from monitor.inference.heads import Head, load_head, save_head
from monitor.inference.heads.headset import HeadEntry, HeadSet
from monitor.inference.heads.labelling import ExampleStore, LabelError
from monitor.inference.heads.service import CustomClasses
from testkit.footage import read_video_frames
from testkit.waiting import wait_until


def test_example_store_crops_names_and_bounds(tmp_path: Path) -> None:
    store = ExampleStore(tmp_path / "ex", max_per_class=3)
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[10:60, 20:120] = 255
    path = store.save("package", frame, (20, 10, 100, 50), camera="front door")
    assert path.parent == tmp_path / "ex" / "package" and path.name.endswith("-front_door.jpg")
    img = cv2.imread(str(path))
    assert img.shape == (50, 100, 3) and img.mean() > 250
    for _ in range(5):
        store.save("package", frame, "full")
    assert store.counts() == {"package": 3}
    for bad in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(LabelError):
            store.save(bad, frame, "full")


@pytest.fixture(scope="module")
def classifier(demo_weights: Path) -> Classifier:
    return Classifier(demo_weights)


def test_label_then_retrain_swaps_the_head(tmp_path: Path, classifier: Classifier) -> None:
    rng = np.random.default_rng(0)
    start = Head("scene", ("cars", "bottles"), rng.normal(size=(2, 512)).astype(np.float32),
                 np.zeros(2, np.float32), {"sha256": classifier.backbone_id, "name": classifier.meta.name})
    head_path = save_head(start, tmp_path / "scene.head")
    heads = HeadSet([HeadEntry("scene", start, head_path, ("front",), None)], classifier.backbone_id)
    custom = CustomClasses(classifier, heads, {"scene": tmp_path / "state" / "examples" / "scene"})
    custom.start()
    try:
        with pytest.raises(LabelError, match="has no class 'boats'"):
            custom.label_frame("scene", "boats", "front", np.zeros((10, 10, 3), np.uint8), "center")
        with pytest.raises(LabelError, match="does not run on camera 'back'"):
            custom.label_frame("scene", "cars", "back", np.zeros((10, 10, 3), np.uint8), "center")
        cars = read_video_frames("car-detection", 10, stride=30)
        bottles = read_video_frames("bottle-detection", 10, stride=100)
        for f in cars:
            custom.label_frame("scene", "cars", "front", f, "center")
        for f in bottles[:5]:
            custom.label_frame("scene", "bottles", "front", f, "center")
        for f in bottles[5:]:
            # right: filed under the class; the region the event was scored on (Event.box)
            custom.label_event("scene:bottles", "front", True, f, box=CENTER.clip_to(f.shape[1], f.shape[0]))
        custom.label_event("scene:cars", "front", False, cars[0], box=None, camera_crop="center")   # an older event
        with pytest.raises(LabelError, match="not a custom class"):
            custom.label_event("dog", "front", True, cars[0], box=(0, 0, 10, 10))
        assert custom.examples["scene"].counts() == {"bottles": 10, "cars": 10, "none": 1}
        state = custom.retrain("scene")
        assert state["state"] in ("queued", "training")
        assert custom.retrain("scene")["state"] in ("queued", "training", "done")   # no second job queued
        wait_until(lambda: custom.trainer.status("scene")["state"] in ("done", "failed"), timeout=120)
        status = custom.trainer.status("scene")
        assert status["state"] == "done", status
        swapped = heads.get("scene").head
        assert swapped is not start and swapped.classes == ("bottles", "cars", "none")
        assert load_head(head_path, classifier.backbone_id).classes == swapped.classes      # saved for the next start
        feats = classifier.infer([cars[3], bottles[3]]).feature_maps.mean(axis=(2, 3))
        assert swapped.probabilities(feats).argmax(1).tolist() == [1, 0]
        doc = custom.status_json()[0]
        assert doc["examples"] == {"bottles": 10, "cars": 10, "none": 1} and doc["retrain"]["state"] == "done"
    finally:
        custom.stop()
