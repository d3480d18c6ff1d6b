"""Heads on the real (demo) backbone: training from example folders of real footage, held-out accuracy, exact
class activation maps for ImageNet and a custom head, the backbone check, the `monitor classes` commands.

Footage: Intel IoT DevKit sample videos (CC BY 4.0) in ../shared/data/videos.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from monitor.cli import main
from monitor.inference.classifier import Classifier
from monitor.inference.heads import HeadError, load_head, save_head
from monitor.inference.heads.cam import activation_maps, pooled_features
from monitor.inference.heads.training import train_head
from monitor.weights import synthetic_batches
from testkit.footage import read_video_frames

# (video, frames used): training frames from the first 60 %, held-out test frames from the rest
VIDEOS = {"people": ("one-by-one-person-detection", 700), "cars": ("car-detection", 377),
          "bottles": ("bottle-detection", 700)}
TRAIN, TEST = 16, 16


def split_frames(video: str, total: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    cut = int(total * 0.6)
    train = read_video_frames(video, TRAIN, stride=cut // TRAIN)
    test = read_video_frames(video, TEST, stride=(total - cut - 1) // TEST, start=cut)
    return train, test


@pytest.fixture(scope="module")
def footage_examples(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path):
    """EXAMPLES_DIR with people/ and bottles/ as JPEG frames, cars/ as a video clip, none/ as synthetic scenes;
    plus held-out frames of every video taken from a later part than any example."""
    root = tmp_path_factory.mktemp("examples")
    held_out = {}
    for cls, (video, total) in VIDEOS.items():
        train, held_out[cls] = split_frames(video, total)
        (root / cls).mkdir()
        if cls == "cars":
            h, w = train[0].shape[:2]
            out = cv2.VideoWriter(str(root / cls / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
            for f in train:
                out.write(f)
            out.release()
        else:
            for i, f in enumerate(train):
                cv2.imwrite(str(root / cls / f"{i:03d}.jpg"), f)
    (root / "none").mkdir()
    for i, img in enumerate(next(iter(synthetic_batches(TRAIN, batch=TRAIN, seed=7)))):
        cv2.imwrite(str(root / "none" / f"{i:03d}.png"), cv2.resize(img, (640, 360)))
    return root, held_out


def other_backbone(weights: Path, out: Path) -> Path:
    """The same network re-saved under another name: another artifact, so another backbone hash."""
    from dataclasses import replace
    from monitor.inference import artifact
    meta, parts, _ = artifact.read(weights)
    artifact.save(out, parts, replace(meta, name=meta.name + "-copy", backbone=""))
    return out


@pytest.fixture(scope="module")
def classifier(demo_weights: Path) -> Classifier:
    return Classifier(demo_weights)


@pytest.fixture(scope="module")
def trained(classifier: Classifier, footage_examples):
    root, _ = footage_examples
    return train_head(classifier, "scene", root, frames_per_video=TRAIN, progress=False)


def test_head_classifies_held_out_frames_of_each_video(classifier: Classifier, trained, footage_examples) -> None:
    head, report = trained
    _, held_out = footage_examples
    assert head.classes == ("bottles", "cars", "none", "people")
    assert report.examples == [TRAIN] * 4 and sum(report.tested) == 4 * TRAIN
    correct = total = 0
    for cls, frames in held_out.items():
        feats = pooled_features(classifier.infer(frames, ["center"] * len(frames)).feature_maps)
        pred = head.probabilities(feats).argmax(1)
        correct += int((pred == head.classes.index(cls)).sum())
        total += len(frames)
    assert correct / total >= 0.95, (correct, total)
    noise = list(synthetic_batches(8, batch=8, seed=99))[0]
    assert (head.probabilities(pooled_features(classifier.infer(list(noise)).feature_maps)).argmax(1)
            == head.classes.index("none")).mean() >= 0.75
    assert report.accuracy is not None and report.accuracy >= 0.9
    assert head.backbone["sha256"] == classifier.backbone_id


def test_one_backbone_for_the_torch_and_openvino_artifacts(classifier: Classifier, demo_weights: Path, trained,
                                                           footage_examples, tmp_path: Path) -> None:
    """The OpenVINO artifact is the torch INT8 network converted: a head trained on one runtime's features is
    accepted by, and classifies the same with, the other; only another network is refused."""
    head, _ = trained
    _, held_out = footage_examples
    torch_clf = Classifier(demo_weights, runtime="torch")
    assert classifier.runtime == "openvino" and torch_clf.sha256 != classifier.sha256
    assert classifier.backbone_id == torch_clf.backbone_id == torch_clf.sha256
    path = tmp_path / "scene.head"
    save_head(head, path)
    reloaded = load_head(path, torch_clf.backbone_id)
    frames = [f for frames in held_out.values() for f in frames]
    on_torch = reloaded.probabilities(pooled_features(torch_clf.infer(frames).feature_maps)).argmax(1)
    on_openvino = head.probabilities(pooled_features(classifier.infer(frames).feature_maps)).argmax(1)
    assert (on_torch == on_openvino).mean() >= 0.95
    with pytest.raises(HeadError, match="trained on backbone"):
        load_head(path, Classifier(other_backbone(demo_weights, tmp_path / "other.pt")).backbone_id)


def test_cam_mean_plus_bias_is_the_logit_imagenet_and_custom(classifier: Classifier, trained, real_frames) -> None:
    head, _ = trained
    inf = classifier.infer(real_frames[:6])
    rows = np.arange(6)
    # ImageNet: the map of the top class, from the network's own layer4 output and fc layer. Its mean plus
    # the bias is the logit computed by that fc layer on the pooled maps, exactly ...
    top = inf.logits.argmax(1)
    maps = activation_maps(inf.feature_maps, classifier.fc_weight[top])
    pooled = pooled_features(inf.feature_maps)
    exact = (pooled @ classifier.fc_weight.T + classifier.fc_bias)[rows, top]
    np.testing.assert_allclose(maps.mean(axis=(1, 2)) + classifier.fc_bias[top], exact, rtol=1e-4, atol=1e-4)
    # ... and the network's logit within its INT8 rounding (pooling and fc run quantized in the network)
    spread = float(inf.logits.std())
    assert np.abs(maps.mean(axis=(1, 2)) + classifier.fc_bias[top] - inf.logits[rows, top]).max() < 0.25 * spread
    # custom head: heads read the pooled maps, so the identity is exact against the head's own logit
    custom = head.logits(pooled)
    ctop = custom.argmax(1)
    cmaps = activation_maps(inf.feature_maps, head.weight[ctop])
    np.testing.assert_allclose(cmaps.mean(axis=(1, 2)) + head.bias[ctop], custom[rows, ctop], rtol=1e-4, atol=1e-4)


def test_cli_train_writes_a_head_and_refuses_it_on_another_backbone(tmp_path: Path, demo_weights: Path,
                                                                    footage_examples, capsys) -> None:
    root, _ = footage_examples
    small = tmp_path / "examples"
    for cls in ("bottles", "none"):
        (small / cls).mkdir(parents=True)
        for f in sorted((root / cls).iterdir())[:6]:
            shutil.copy(f, small / cls / f.name)
    out = tmp_path / "small.head"
    assert main(["classes", "train", "small", str(small), "--weights", str(demo_weights), "--out", str(out),
                 "--folds", "3"]) == 0
    text = capsys.readouterr().out
    for cls in ("bottles", "none", "all"):
        assert any(line.startswith(cls) and "%" in line for line in text.splitlines()), text
    head = load_head(out)
    assert head.summary["examples"] == [6, 6] and head.summary["folds"] == 3
    assert main(["classes", "show", str(out), "--weights", str(demo_weights)]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == ["bottles", "none"]
    other = other_backbone(demo_weights, tmp_path / "other.pt")
    assert main(["classes", "show", str(out), "--weights", str(other)]) == 1
    err = capsys.readouterr().err
    assert f"{out}: trained on backbone" in err and "retrain it" in err
    with pytest.raises(HeadError, match="trained on backbone"):
        load_head(out, Classifier(other).sha256)


def test_cli_train_reports_a_bad_examples_folder(tmp_path: Path, demo_weights: Path, capsys) -> None:
    (tmp_path / "only").mkdir()
    cv2.imwrite(str(tmp_path / "only" / "a.png"), np.zeros((32, 32, 3), np.uint8))
    assert main(["classes", "train", "x", str(tmp_path), "--weights", str(demo_weights)]) == 1
    assert "at least two class folders" in capsys.readouterr().err
