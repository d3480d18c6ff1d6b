"""One pass gives probabilities, logits, pooled features and feature maps; old artifacts are refused."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monitor.inference import artifact
from monitor.inference.classifier import Classifier, Inference


def _check_inference(clf: Classifier, frames: list[np.ndarray]) -> Inference:
    r = clf.infer(frames)
    n = len(frames)
    assert r.probabilities.shape == (n, 1000) and r.logits.shape == (n, 1000)
    assert r.features.shape == (n, 512) and r.feature_maps.shape == (n, 512, 7, 7)
    for a in (r.probabilities, r.logits, r.features, r.feature_maps):
        assert a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_allclose(r.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # softmax of the returned logits, and probabilities() / classify() on top of the same pass
    e = np.exp(r.logits - r.logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(r.probabilities, e / e.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(clf.probabilities(frames), r.probabilities)
    assert [p[0].index for p in clf.classify(frames, top_k=1)] == list(r.probabilities.argmax(axis=1))
    # features are the fc layer's input: the last layer applied to them gives the logits (INT8: within the
    # output quantization step), and they are the spatial mean of the feature maps (ReLU output: >= 0).
    assert clf.fc_weight.shape == (1000, 512) and clf.fc_bias.shape == (1000,)
    assert clf.fc_weight.dtype == np.float32 and clf.fc_bias.dtype == np.float32
    rebuilt = r.features @ clf.fc_weight.T + clf.fc_bias
    spread = float(r.logits.std())
    # INT8 logits saturate at the calibrated output range: compare inside it.
    inside = (rebuilt > r.logits.min() + 0.05 * spread) & (rebuilt < r.logits.max() - 0.05 * spread)
    assert inside.mean() > 0.95
    error = np.abs(rebuilt - r.logits)[inside]
    assert error.max() < 0.1 * spread + 0.05 and error.mean() < 0.03 * spread, (error.max(), error.mean(), spread)
    assert (r.feature_maps >= 0).all()
    mean_maps = r.feature_maps.mean(axis=(2, 3))
    assert np.abs(mean_maps - r.features).max() < 0.05 * float(r.features.max()) + 1e-6
    # the feature maps differ from frame to frame (they carry content)
    assert np.abs(r.feature_maps[0] - r.feature_maps[-1]).mean() > 1e-3
    return r


def test_torch_artifact_outputs_features_and_maps(demo_weights: Path, real_frames: list[np.ndarray]) -> None:
    clf = Classifier(demo_weights, runtime="torch")
    assert clf.runtime == "torch"
    _check_inference(clf, real_frames[::4])
    empty = clf.infer([])
    assert empty.probabilities.shape == (0, 1000) and empty.feature_maps.shape == (0, 512, 7, 7)


def test_batch_rows_equal_single_frames(demo_weights: Path, real_frames: list[np.ndarray]) -> None:
    clf = Classifier(demo_weights, runtime="torch")
    both = clf.infer(real_frames[:2])
    one = clf.infer(real_frames[1:2])
    np.testing.assert_allclose(both.features[1], one.features[0], rtol=1e-4, atol=1e-4)


def test_old_format_artifact_refused_with_rebuild_hint(tmp_path: Path) -> None:
    old = tmp_path / "old.pt"
    old.write_bytes(b"MONITOR-ARTIFACT 1\n" + b"0" * 64 + b"\n2\n{}PK")
    with pytest.raises(artifact.ArtifactError) as err:
        Classifier(old)
    message = str(err.value)
    assert str(old) in message and "format 1" in message and "rebuild with `monitor weights" in message


def test_artifact_parts_round_trip_and_missing_fc(tmp_path: Path) -> None:
    meta = artifact.ArtifactMeta(name="x", precision="int8", engine="", labels=("a", "b"), untrained=True,
                                 preprocess={})
    path = tmp_path / "x.pt"
    digest = artifact.save(path, {"one": b"abc", **artifact.fc_parts(np.ones((2, 3)), np.zeros(2))}, meta)
    got, parts, sha = artifact.read(path)
    assert sha == digest and got == meta and parts["one"] == b"abc"
    weight, bias = artifact.fc_arrays(parts, 2, path)
    assert weight.shape == (2, 3) and bias.shape == (2,)
    artifact.save(path, {"one": b"abc"}, meta)
    with pytest.raises(artifact.ArtifactError, match="last-layer weights missing"):
        artifact.fc_arrays(artifact.read(path)[1], 2, path)
