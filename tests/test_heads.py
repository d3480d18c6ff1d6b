"""Heads without a backbone: the softmax fit, the head file format, the backbone check, exact CAM algebra."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from monitor.inference.heads import Head, HeadError, cam, load_head, save_head
from monitor.inference.heads.examples import ExamplesError, augment, scan
from monitor.inference.heads.softmax import fit_softmax

SHA = "a" * 64


def clusters(n: int, classes: int = 3, dim: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative, unevenly scaled features like pooled ReLU outputs, one cluster per class."""
    rng = np.random.default_rng(seed)
    centers = rng.gamma(1.0, 1.0, size=(classes, dim))
    y = rng.integers(0, classes, n)
    scale = rng.uniform(0.1, 20.0, size=dim)
    x = np.maximum(centers[y] + rng.normal(0, 0.9, size=(n, dim)), 0) * scale
    return x.astype(np.float32), y


def make_head(classes=("none", "package", "person"), dim: int = 512, seed: int = 0) -> Head:
    rng = np.random.default_rng(seed)
    return Head(name="porch", classes=tuple(classes), weight=rng.normal(size=(len(classes), dim)).astype(np.float32),
                bias=rng.normal(size=len(classes)).astype(np.float32), backbone={"sha256": SHA, "name": "demo"},
                summary={"held_out_accuracy": 0.97})


def test_fit_separates_held_out_and_weights_apply_to_raw_features() -> None:
    x, y = clusters(900)
    model = fit_softmax(x[:600], y[:600], 3)
    pred = (x[600:] @ model.weight.T + model.bias).argmax(1)
    assert (pred == y[600:]).mean() >= 0.97
    assert model.weight.dtype == np.float32 and model.weight.shape == (3, 512)


def test_fit_balances_a_majority_none_class() -> None:
    x, y = clusters(2000, classes=2, seed=3)
    keep = (y == 0) | (np.arange(len(y)) % 20 == 0)          # class 1 is 1/20 as frequent
    model = fit_softmax(x[keep][:800], y[keep][:800], 2)
    test_x, test_y = x[~keep], y[~keep]                       # held out: all class 1
    assert (test_x @ model.weight.T + model.bias).argmax(1).tolist().count(1) / len(test_y) >= 0.9


def test_fit_needs_two_classes() -> None:
    with pytest.raises(ValueError):
        fit_softmax(np.ones((4, 8)), np.zeros(4, dtype=int), 1)


def test_save_load_roundtrip(tmp_path: Path) -> None:
    head = make_head()
    path = save_head(head, tmp_path / "heads" / "porch.head")
    back = load_head(path, backbone_sha256=SHA)
    assert back.classes == head.classes and back.name == "porch" and back.summary == {"held_out_accuracy": 0.97}
    np.testing.assert_array_equal(back.weight, head.weight)
    feats = np.random.default_rng(1).random((5, 512)).astype(np.float32)
    np.testing.assert_allclose(back.probabilities(feats).sum(1), 1.0, rtol=1e-5)
    assert back.index("package") == 1
    with pytest.raises(KeyError, match="has no class 'parcel'.*none, package, person"):
        back.index("parcel")


def test_head_of_another_backbone_is_refused(tmp_path: Path) -> None:
    path = save_head(make_head(), tmp_path / "porch.head")
    with pytest.raises(HeadError, match=rf"{path}: trained on backbone aaaaaaaaaaaa \(demo\).*bbbbbbbbbbbb.*retrain"):
        load_head(path, backbone_sha256="b" * 64)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b""), "not a head file"),
    (lambda p: p.write_bytes(p.read_bytes()[:300]), "not a head file"),
    (lambda p: p.write_bytes(b"MONITOR-ARTIFACT 1\n" + bytes(100)), "not a head file"),
    (lambda p: np.savez(p, weight=np.zeros((2, 4)), bias=np.zeros(2)), r"missing meta"),
])
def test_damaged_head_files_name_the_file(tmp_path: Path, damage, message: str) -> None:
    path = save_head(make_head(), tmp_path / "porch.head")
    damage(path)
    if Path(str(path) + ".npz").exists():    # np.savez appends .npz to a name without it
        Path(str(path) + ".npz").replace(path)
    with pytest.raises(HeadError, match=message) as info:
        load_head(path)
    assert str(path) in str(info.value)


def test_inconsistent_or_hostile_contents_are_refused(tmp_path: Path) -> None:
    head = make_head()
    bad = Head(name="x", classes=("a", "b"), weight=np.full((2, 8), np.nan, np.float32),
               bias=np.zeros(2, np.float32), backbone={"sha256": SHA})
    with pytest.raises(HeadError, match="NaN"):
        load_head(save_head(bad, tmp_path / "nan.head"))
    with pytest.raises(HeadError, match="no such head file"):
        load_head(tmp_path / "missing.head")
    big = tmp_path / "big.head"
    with open(big, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    with pytest.raises(HeadError, match="too large"):
        load_head(big)
    # a pickled object array must never be unpickled
    path = tmp_path / "pickle.head"
    with zipfile.ZipFile(path, "w") as z:
        import io
        for key, arr in (("weight", head.weight), ("bias", head.bias)):
            buf = io.BytesIO()
            np.save(buf, arr)
            z.writestr(f"{key}.npy", buf.getvalue())
        buf = io.BytesIO()
        np.save(buf, np.array([{"format": "monitor-head 1"}], dtype=object), allow_pickle=True)
        z.writestr("meta.npy", buf.getvalue())
    with pytest.raises(HeadError, match="not a head file"):
        load_head(path)


def test_cam_mean_plus_bias_is_the_logit_for_a_head() -> None:
    rng = np.random.default_rng(2)
    maps = np.maximum(rng.normal(size=(4, 512, 7, 7)), 0).astype(np.float32)
    feats = maps.mean(axis=(2, 3))
    head = make_head()
    logits = head.logits(feats)
    top = logits.argmax(1)
    maps_c = cam.activation_maps(maps, head.weight[top])
    np.testing.assert_allclose(maps_c.mean(axis=(1, 2)) + head.bias[top], logits[np.arange(4), top],
                               rtol=1e-4, atol=1e-4)
    one = cam.activation_map(maps[0], head.weight[top[0]])
    np.testing.assert_allclose(one, maps_c[0], rtol=1e-5, atol=1e-5)


def test_cam_overlay_marks_the_evidence() -> None:
    frame = np.full((100, 200, 3), 128, np.uint8)
    heat = np.zeros((7, 7), np.float32)
    heat[0, 6] = 1.0                                           # evidence top right of the box
    out = cam.overlay(frame, heat, (50, 0, 100, 100))
    assert out.shape == frame.shape and (out[:, :50] == 128).all() and (out[:, 150:] == 128).all()
    top_right, bottom_left = out[5, 145].astype(int), out[95, 55].astype(int)
    assert top_right[2] > top_right[0] and bottom_left[0] > bottom_left[2]   # red vs blue in BGR
    assert cam.normalise(np.ones((7, 7))).max() == 0.0


def test_examples_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ExamplesError, match="no such examples folder"):
        scan(tmp_path / "nope")
    (tmp_path / "package").mkdir()
    (tmp_path / "package" / "a.jpg").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExamplesError, match=r"at least two class folders.*found: package.*'none'"):
        scan(tmp_path)


def test_augment_keeps_the_example_first_and_crops_inside() -> None:
    frame = np.random.default_rng(0).integers(0, 255, (432, 768, 3), dtype=np.uint8)
    pairs = augment(frame, "center", seed=1)
    assert len(pairs) == 4 and pairs[0][0] is frame
    assert pairs[0][1] == (195, 27, 378, 378)
    np.testing.assert_array_equal(pairs[1][0], frame[:, ::-1])
    for img, (x, y, w, h) in pairs:
        assert 0 <= x and x + w <= 768 and 0 <= y and y + h <= 432 and w == h
