"""Custom classes over HTTP on the real daemon: status shows head results, labelling from a camera and from an
event files examples under the state folder, "retrain" swaps the head in while the daemon runs, the upload
explains its top class with an exact activation map, the live view's heatmap toggles per camera.

Footage: Intel IoT DevKit sample videos (CC BY 4.0) in ../shared/data/videos.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from monitor.config.loader import parse_config
from monitor.inference.classifier import Classifier
from monitor.inference.heads import Head, save_head
from monitor.inference.heads.training import train_head
from monitor.weights import synthetic_batches
from testkit.footage import read_video_frames
from testkit.waiting import wait_until
from tests.webapp import Served, file_camera, request


@pytest.fixture(scope="module")
def scene_head(tmp_path_factory: pytest.TempPathFactory, demo_weights: Path) -> Path:
    root = tmp_path_factory.mktemp("webscene")
    for cls, frames in (("cars", read_video_frames("car-detection", 8, stride=45)),
                        ("bottles", read_video_frames("bottle-detection", 8, stride=140)),
                        ("none", list(next(iter(synthetic_batches(8, batch=8, seed=3)))))):
        (root / "ex" / cls).mkdir(parents=True)
        for i, f in enumerate(frames):
            cv2.imwrite(str(root / "ex" / cls / f"{i}.jpg"), f)
    head, _ = train_head(Classifier(demo_weights), "scene", root / "ex", progress=False)
    return save_head(head, root / "scene.head")


def post(port: int, path: str):
    return request(port, "POST", path, body=b"", headers={"Content-Length": "0"})


def test_label_retrain_explain_and_heatmap_over_http(tmp_path: Path, demo_weights: Path, scene_head: Path,
                                                     videos_dir: Path) -> None:
    config = parse_config({
        "server": {"host": "127.0.0.1", "port": 0},
        "model": {"weights": str(demo_weights), "threads": 2},
        "cameras": [file_camera(videos_dir, "street", "car-detection"),
                    file_camera(videos_dir, "shelf", "bottle-detection")],
        "custom_classes": [{"name": "scene", "head": str(scene_head)}],
        "watchlist": [{"name": "cars-seen", "classes": ["scene:cars"], "min_score": 0.6, "min_frames": 2,
                       "cameras": ["street"]}],
        "alerts": {"snapshots": str(tmp_path / "snapshots")},
        "events": {"database": str(tmp_path / "state" / "events.db")},
    }, tmp_path)
    with Served(config) as s:
        port = s.port
        status = request(port, "GET", "/api/status").json()
        street = next(c for c in status["cameras"] if c["name"] == "street")
        assert street["custom"][0]["head"] == "scene" and set(street["custom"][0]["classes"]) == {
            "bottles", "cars", "none"}
        assert status["custom_classes"][0]["name"] == "scene" and status["custom_classes"][0]["retrain"] == {
            "state": "idle"}

        # -- errors name what was wrong
        assert post(port, "/api/cameras/street/label?head=scene&class=boats").status == 400
        assert "has no class 'boats'" in post(port, "/api/cameras/street/label?head=scene&class=boats").json()["error"]
        assert post(port, "/api/cameras/nowhere/label?head=scene&class=cars").status == 404
        assert post(port, "/api/cameras/street/label?head=scene").status == 400
        assert post(port, "/api/heads/nohead/retrain").status == 404
        assert post(port, "/api/events/999/label?right=true").status == 404

        # -- "save this frame as": examples go under the state folder (next to the event database)
        for _ in range(6):
            assert post(port, "/api/cameras/street/label?head=scene&class=cars").status == 200
            assert post(port, "/api/cameras/shelf/label?head=scene&class=bottles").status == 200
            time.sleep(0.2)
        examples = tmp_path / "state" / "examples" / "scene"
        assert len(list((examples / "cars").glob("*.jpg"))) == 6

        # -- an event of the custom rule, marked right from the page: its clean frame is filed under cars
        ev = wait_until(lambda: next((e for e in request(port, "GET", "/api/events").json()["events"]
                                      if e["snapshot_url"]), None), 30)
        assert ev and ev["label"] == "scene:cars"
        answer = post(port, f"/api/events/{ev['id']}/label?right=true")
        assert answer.status == 200, answer.json()
        assert answer.json()["examples"]["cars"] == 7

        # -- retrain from the page: the head is swapped while the daemon keeps classifying
        before = s.sample("monitor_frames_classified_total", {"camera": "street"})
        old_head = s.app.heads.get("scene").head
        assert post(port, "/api/heads/scene/retrain").status == 202
        done = wait_until(lambda: request(port, "GET", "/api/heads").json()["heads"][0]["retrain"]["state"]
                          in ("done", "failed"), 120)
        state = request(port, "GET", "/api/heads").json()["heads"][0]["retrain"]
        assert done and state["state"] == "done", state
        assert state["classes"] == ["bottles", "cars"]              # learnt from the labelled examples only
        assert s.app.heads.get("scene").head is not old_head
        wait_until(lambda: set(next(c for c in request(port, "GET", "/api/status").json()["cameras"]
                                    if c["name"] == "shelf")["custom"][0]["classes"]) == {"bottles", "cars"}, 10)
        shelf = next(c for c in request(port, "GET", "/api/status").json()["cameras"] if c["name"] == "shelf")
        assert shelf["custom"][0]["label"] == "bottles"
        assert s.sample("monitor_frames_classified_total", {"camera": "street"}) > before

        # -- upload with ?explain=true: the top class's map over the region the network saw
        frame = read_video_frames("car-detection", 1)[0]
        ok, jpeg = cv2.imencode(".jpg", frame)
        resp = request(port, "POST", "/api/classify?explain=true", body=jpeg.tobytes(),
                       headers={"Content-Type": "image/jpeg"})
        assert resp.status == 200, resp.body[:200]
        doc = resp.json()
        ex = doc["explanation"]
        assert ex["label"] == doc["predictions"][0]["label"]
        grid = np.array(ex["grid"])
        assert grid.shape == (7, 7) and grid.min() == 0.0 and grid.max() == 1.0
        x, y, w, h = ex["box"]
        # the ImageNet centre crop of a 768x432 frame: a 378 px square at (195, 27)
        assert np.allclose([x * 768, y * 432, w * 768, h * 432], [195, 27, 378, 378], atol=1)
        plain = request(port, "POST", "/api/classify", body=jpeg.tobytes(),
                        headers={"Content-Type": "image/jpeg"}).json()
        assert plain.get("explanation") is None

        # -- the live view's heatmap, per camera
        assert post(port, "/api/cameras/street/heatmap?on=true").status == 200
        cams = {c["name"]: c for c in request(port, "GET", "/api/status").json()["cameras"]}
        assert cams["street"]["heatmap"] is True and cams["shelf"]["heatmap"] is False
        assert "street" in s.app.heatmaps
        assert request(port, "GET", "/snapshot/street.jpg").status == 200
        assert post(port, "/api/cameras/street/heatmap?on=false").status == 200
        assert post(port, "/api/cameras/street/heatmap?on=maybe").status == 400


def test_an_event_from_before_a_reload_is_labelled_on_the_region_it_was_classified_on(
        tmp_path: Path, demo_weights: Path, videos_dir: Path) -> None:
    """The crop travels with the frame: a reload moves the camera's crop, and marking an event from before it
    files the region that event's frame was classified on (the old crop), not the camera's crop of now; a live
    frame labelled after the reload is cut with the new one."""
    rng = np.random.default_rng(7)
    head = Head("scene", ("none", "cars"), rng.normal(size=(2, 512)).astype(np.float32),
                np.zeros(2, np.float32), {"sha256": Classifier(demo_weights).backbone_id, "name": "demo"})
    head_path = save_head(head, tmp_path / "scene.head")
    old_crop, new_crop = [0, 0, 320, 240], [400, 150, 300, 200]         # of the 768x432 frames

    def config(crop: list[int]):
        return parse_config({
            "server": {"host": "127.0.0.1", "port": 0},
            "model": {"weights": str(demo_weights), "threads": 2},
            "cameras": [file_camera(videos_dir, "street", "car-detection", crop=crop)],
            "custom_classes": [{"name": "scene", "head": str(head_path)}],
            # min_score 0: every classified frame hits, so the first one starts an event
            "watchlist": [{"name": "any", "classes": ["scene:cars"], "min_score": 0.0, "min_frames": 1}],
            "alerts": {"snapshots": str(tmp_path / "snapshots")},
            "events": {"database": str(tmp_path / "state" / "events.db")},
        }, tmp_path)

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with Served(config(old_crop)) as s:
            port = s.port
            ev = wait_until(lambda: next((e for e in request(port, "GET", "/api/events").json()["events"]
                                          if e["snapshot_url"]), None), 30)
            assert ev and ev["label"] == "scene:cars" and ev["box"] == old_crop, ev
            old_camera = s.app.cameras["street"]
            s.app.reload(config(new_crop))
            assert s.app.cameras["street"] is not old_camera
            assert wait_until(lambda: getattr(s.app.results.get("street"), "box", None) == tuple(new_crop), 20)

            answer = post(port, f"/api/events/{ev['id']}/label?right=true")
            assert answer.status == 200, answer.json()
            (filed,) = (tmp_path / "state" / "examples" / "scene" / "cars").glob("*.jpg")
            clean = cv2.imread(str(s.app.events.get(ev["id"]).snapshot).replace(".jpg", ".clean.jpg"))
            x, y, w, h = old_crop
            example = cv2.imread(str(filed))
            assert example.shape == (h, w, 3), example.shape
            assert np.abs(example.astype(int) - clean[y:y + h, x:x + w]).mean() < 4, "not the old region's pixels"

            assert post(port, "/api/cameras/street/label?head=scene&class=none").status == 200
            (live,) = (tmp_path / "state" / "examples" / "scene" / "none").glob("*.jpg")
            assert cv2.imread(str(live)).shape == (new_crop[3], new_crop[2], 3)
    finally:
        root.handlers[:] = handlers     # Daemon.reload() sets up the CLI's logging: undo it
        root.setLevel(level)
