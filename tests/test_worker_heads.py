"""The inference worker runs custom heads on the features of the same pass (an own crop is one more row of the
same inference call) and attaches the top class's activation map to every result."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from monitor.core.region import Box, Region
from monitor.inference.classifier import Classifier
from monitor.inference.heads import Head
from monitor.inference.heads.cam import activation_map, pooled_features
from monitor.inference.heads.headset import HeadEntry, HeadSet
from monitor.inference.results import ResultBoard
from monitor.inference.worker import InferenceWorker


@dataclass(frozen=True)
class _Frame:
    image: np.ndarray
    seq: int
    captured_at: float
    captured_mono: float
    box: Box | None


class _Camera:                       # the part of capture.Camera the worker uses
    def __init__(self, name: str, crop, image: np.ndarray) -> None:
        self.name = name
        self.cfg = SimpleNamespace(crop=crop)
        # a camera places its crop in each frame when it captures it; the worker classifies that region
        self.box = Region.of(crop).clip_to(image.shape[1], image.shape[0])
        self._frame: _Frame | None = _Frame(image, 1, 0.0, 0.0, self.box)

    def take_due(self):
        frame, self._frame = self._frame, None
        return frame


class _Recorder:
    def __init__(self) -> None:
        self.results = []

    def observe(self, result) -> None:
        self.results.append(result)

    def tick(self) -> None:
        pass


def random_head(name: str, classes: tuple[str, ...], sha: str, seed: int) -> Head:
    rng = np.random.default_rng(seed)
    return Head(name, classes, (rng.normal(size=(len(classes), 512)) * 0.5).astype(np.float32),
                rng.normal(size=len(classes)).astype(np.float32), {"sha256": sha, "name": "demo"})


def test_heads_share_the_pass_and_own_crops_join_the_batch(demo_weights: Path, real_frames, metrics) -> None:
    clf = Classifier(demo_weights)
    region = (100, 50, 300, 200)
    porch = random_head("porch", ("none", "package"), clf.backbone_id, 1)
    door = random_head("door", ("closed", "open", "ajar"), clf.backbone_id, 2)
    heads = HeadSet([HeadEntry("porch", porch, Path("porch.head"), ("front",), region),
                     HeadEntry("door", door, Path("door.head"), (), None)], clf.backbone_id)
    calls = []
    infer = clf.infer

    def counting_infer(frames, crops=None):
        calls.append(list(crops))
        return infer(frames, crops)

    clf.infer = counting_infer  # type: ignore[method-assign]
    front, back = real_frames[0], real_frames[9]
    recorder = _Recorder()
    worker = InferenceWorker(clf, ResultBoard(), recorder, metrics, heads=heads)
    worker.set_cameras([_Camera("front", "center", front), _Camera("back", "full", back)])
    assert worker.run_once() == 2
    front_box = Region.of("center").clip_to(front.shape[1], front.shape[0])
    back_box = (0, 0, back.shape[1], back.shape[0])
    assert calls == [[front_box, back_box, region]]       # one inference call, the porch region appended
    by_cam = {r.camera: r for r in recorder.results}
    assert set(by_cam["front"].custom) == {"porch", "door"} and set(by_cam["back"].custom) == {"door"}
    ref = clf.infer([front, back, front], ["center", "full", region])
    pooled = pooled_features(ref.feature_maps)
    np.testing.assert_allclose(by_cam["front"].custom["porch"].probabilities, porch.probabilities(pooled[2:3])[0],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(by_cam["front"].custom["door"].probabilities, door.probabilities(pooled[0:1])[0],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(by_cam["back"].custom["door"].probabilities, door.probabilities(pooled[1:2])[0],
                               rtol=1e-4, atol=1e-5)
    # the top ImageNet class's activation map and the region it covers travel with the result
    r = by_cam["back"]
    np.testing.assert_allclose(r.heatmap, activation_map(ref.feature_maps[1], clf.fc_weight[r.predictions[0].index]),
                               rtol=1e-4, atol=1e-4)
    assert r.box == back_box
    assert by_cam["front"].custom["porch"].box == region and by_cam["front"].custom["door"].box == front_box
    assert by_cam["front"].box_for("porch:package") == region and by_cam["front"].box_for("dog") == front_box
    assert metrics.registry.get_sample_value("monitor_custom_class_probability",
                                             {"camera": "front", "head": "porch", "class": "package"}) == \
        pytest.approx(float(by_cam["front"].custom["porch"].probabilities[1]))
    # a retrained head swaps in for the next batch; a head of another backbone is refused
    heads.swap("door", random_head("door", ("closed", "open"), clf.backbone_id, 3))
    worker.set_cameras([_Camera("back", "full", back)])
    worker.run_once()
    assert recorder.results[-1].custom["door"].classes == ("closed", "open")
    from monitor.inference.heads import HeadError
    with pytest.raises(HeadError, match="trained on backbone"):
        heads.swap("door", random_head("door", ("a", "b"), "f" * 64, 4))


def test_a_head_whose_own_crop_does_not_fit_gives_no_answer_and_the_frame_is_still_classified(
        demo_weights: Path, real_frames, metrics, caplog: pytest.LogCaptureFixture) -> None:
    """The one bounds check (Region.clip_to) refuses a head's crop that crosses the frame's edge: before, it was
    cut down to what lay inside (or, wholly outside, failed the camera's whole frame). The camera's own result
    and its other heads go on; the misfit is logged once, naming the head's config key."""
    caplog.set_level(logging.ERROR, logger="monitor")
    clf = Classifier(demo_weights)
    image = real_frames[0]
    height, width = image.shape[:2]
    porch = random_head("porch", ("none", "package"), clf.backbone_id, 1)
    door = random_head("door", ("closed", "open"), clf.backbone_id, 2)
    heads = HeadSet([HeadEntry("porch", porch, Path("porch.head"), (), (width - 100, 0, 200, 100)),
                     HeadEntry("door", door, Path("door.head"), (), None)], clf.backbone_id)
    recorder = _Recorder()
    worker = InferenceWorker(clf, ResultBoard(), recorder, metrics, heads=heads)
    cameras = [_Camera("front", "center", image)]
    worker.set_cameras(cameras)
    assert worker.run_once() == 1
    cameras[0]._frame = _Frame(image, 2, 0.0, 0.0, cameras[0].box)
    assert worker.run_once() == 1
    assert [set(r.custom) for r in recorder.results] == [{"door"}, {"door"}]
    assert metrics.registry.get_sample_value("monitor_frames_failed_total", {"camera": "front"}) is None
    lines = [r.getMessage() for r in caplog.records if "porch" in r.getMessage()]
    assert lines == [f"camera front: custom class 'porch' (custom_classes[0].crop): crop [{width - 100}, 0, 200, 100] "
                     f"does not fit the {width}x{height} frame (needs x+w <= {width}, y+h <= {height}): no answer "
                     f"from this head on this camera"], lines
