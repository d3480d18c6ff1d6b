"""Custom classes through the whole daemon: a head trained on real footage, two RTSP cameras (GStreamer server,
testkit/rtsp.py), a smoothed rule on "scene:cars" that fires on the right stream and never on the other, the
custom results in the board and metrics, a labelled event filed from its clean snapshot.

Footage: Intel IoT DevKit sample videos (CC BY 4.0) in ../shared/data/videos.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import pytest

from monitor.config.loader import parse_config
from monitor.core.region import CENTER
from monitor.daemon import Daemon
from monitor.inference.classifier import Classifier
from monitor.inference.heads import save_head
from monitor.alerts.snapshot_files import clean_snapshot_path
from monitor.inference.heads.training import train_head
from monitor.weights import synthetic_batches
from testkit.footage import read_video_frames
from testkit.rtsp import RtspServer
from testkit.waiting import wait_until

CARS, BOTTLES = "car-detection", "bottle-detection"


@pytest.fixture(scope="module")
def scene_head(tmp_path_factory: pytest.TempPathFactory, demo_weights: Path) -> Path:
    """A head (cars / bottles / none) trained on frames spread over both videos, as the RTSP cameras show them."""
    root = tmp_path_factory.mktemp("scene")
    for cls, frames in (("cars", read_video_frames(CARS, 16, stride=23)),
                        ("bottles", read_video_frames(BOTTLES, 16, stride=70)),
                        ("none", list(next(iter(synthetic_batches(16, batch=16, seed=5)))))):
        (root / "examples" / cls).mkdir(parents=True)
        for i, f in enumerate(frames):
            cv2.imwrite(str(root / "examples" / cls / f"{i:02d}.jpg"), f)
    head, report = train_head(Classifier(demo_weights), "scene", root / "examples", progress=False)
    assert report.accuracy is not None and report.accuracy >= 0.9, report.lines()
    return save_head(head, root / "scene.head")


def test_rule_on_a_custom_class_fires_on_the_right_stream_only(
        tmp_path: Path, demo_weights: Path, scene_head: Path, daemons: list[Daemon],
        rtsp_server: Callable[..., RtspServer]) -> None:
    server = rtsp_server([CARS, BOTTLES], minutes=1)
    config = parse_config({
        "server": {"port": 0},
        "model": {"weights": str(demo_weights), "threads": 2},
        "cameras": [{"name": "street", "source": server.url(CARS), "fps": 4},
                    {"name": "shelf", "source": server.url(BOTTLES), "fps": 4}],
        "custom_classes": [{"name": "scene", "head": str(scene_head)}],
        "watchlist": [{"name": "cars-seen", "classes": ["scene:cars"], "min_score": 0.8, "min_frames": 3,
                       "end_after": "30s", "smoothing": {"window": 3, "method": "median"}}],
        "alerts": {"snapshots": str(tmp_path / "snapshots")},
        "events": {"database": str(tmp_path / "events.db")},
    }, tmp_path)
    d = Daemon(config)
    daemons.append(d)
    d.start(web=False)
    rows = wait_until(lambda: d.events.query(), 60)
    assert rows, "no event on the car stream within 60 s"
    assert [(r.camera, r.rule, r.label) for r in rows] == [("street", "cars-seen", "scene:cars")]
    # the bottle stream was classified all along, and its scene head said bottles, never cars
    shelf = d.results.get("shelf")
    assert shelf is not None and shelf.custom["scene"].label == "bottles"
    street = d.results.get("street")
    assert street.custom["scene"].label == "cars" and street.heatmap is not None and street.heatmap.shape == (7, 7)
    assert d.metrics.registry.get_sample_value("monitor_custom_class_probability",
                                               {"camera": "shelf", "head": "scene", "class": "cars"}) < 0.5
    classified = d.metrics.registry.get_sample_value("monitor_frames_classified_total", {"camera": "shelf"})
    assert classified >= 8
    # the event's frame without overlay is kept for labelling; marking it right files it under "cars"
    ev = wait_until(lambda: getattr(d.events.get(rows[0].id), "snapshot", None) and d.events.get(rows[0].id), 10)
    clean = clean_snapshot_path(ev.snapshot)
    assert clean.is_file()
    image = cv2.imread(str(clean))
    assert ev.box == CENTER.clip_to(image.shape[1], image.shape[0])     # the region its frame was scored on
    path = d.custom.label_event(ev.label, ev.camera, True, image, box=ev.box)
    assert path.parent == tmp_path / "examples" / "scene" / "cars"
    assert d.events.query(camera="shelf") == []
