"""`backend: pyav`: PyAV decoding with frames converted straight to `frame_size`, on a real RTSP camera (GStreamer
server on 127.0.0.1) and against a camera that hangs; its config checks."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from monitor.capture.camera import WATCH_HOLD, Camera
from monitor.config.loader import ConfigError, load_config
from monitor.config.types import CameraConfig
from monitor.core.metrics import Metrics
from testkit.faults import HangServer
from testkit.rtsp import RtspServer
from testkit.waiting import wait_until


def start(cameras: list[Camera], cfg: CameraConfig, metrics: Metrics) -> Camera:
    cam = Camera(cfg, metrics)
    cameras.append(cam)
    cam.start()
    return cam


def test_pyav_rtsp_camera_scales_converts_only_due_frames_and_reconnects(
        rtsp_server: Callable[..., RtspServer], metrics: Metrics, cameras: list[Camera]) -> None:
    server = rtsp_server(["car-detection"], minutes=1)
    cam = start(cameras, CameraConfig(name="lot", source=server.url("car-detection", "user:secret"), fps=2,
                                      backend="pyav", frame_size=(384, 216), open_timeout=5, read_timeout=3,
                                      stale_after=3, backoff_max=2), metrics)
    assert wait_until(lambda: cam.status()["state"] == "up", 15), cam.status()
    frame = cam.latest()
    assert frame is not None and frame.image.shape == (216, 384, 3) and frame.image.dtype == np.uint8
    assert frame.image.std() > 5                  # a picture, not a blank buffer
    st = cam.status()
    assert (st["width"], st["height"]) == (384, 216) and st["decoder"] == "software" and st["backend"] == "pyav"
    time.sleep(WATCH_HOLD + 0.5)                  # latest() above made it watched (every frame converted)
    first = cam.status()
    time.sleep(2.0)
    st = cam.status()
    # every frame decoded (12.5 fps), only the due ones (2 fps) converted
    frames, retrieved = st["frames"] - first["frames"], st["retrieved"] - first["retrieved"]
    assert frames >= 15 and retrieved <= frames // 3, (frames, retrieved)

    before = cam.latest().seq
    server.kill()
    assert wait_until(lambda: cam.status()["state"] == "down", 10), cam.status()
    down = cam.status()
    assert down["reason"] and "secret" not in repr(down), down
    server.start()
    assert wait_until(lambda: cam.status()["state"] == "up" and cam.latest().seq > before, 15), cam.status()
    assert cam.status()["reconnects"] >= 1


def test_pyav_camera_that_hangs_gives_up_within_its_open_timeout(metrics: Metrics, cameras: list[Camera]) -> None:
    with HangServer() as hang:
        started = time.monotonic()
        cam = start(cameras, CameraConfig(name="hung", source=hang.url(), backend="pyav", open_timeout=1.5,
                                          read_timeout=1.5, backoff_max=1), metrics)
        assert wait_until(lambda: cam.status()["state"] == "down", 8), cam.status()
        assert time.monotonic() - started < 6
        assert "cannot open" in cam.status()["reason"]
        t = time.monotonic()
        cam.stop(timeout=5)
        assert not cam.is_alive() and time.monotonic() - t < 4


@pytest.mark.parametrize("camera, message", [
    ("{name: a, source: clip.mp4, backend: opencv, frame_size: [640, 360]}", "cameras[0].frame_size: needs backend: pyav"),
    ("{name: a, source: /dev/video0, backend: pyav}", "cameras[0].backend: pyav reads files and URLs"),
    ("{name: a, source: clip.mp4, backend: pyav, crop: [600, 0, 100, 100], frame_size: [640, 360]}",
     "cameras[0].frame_size: crop [600, 0, 100, 100] does not fit the 640x360 frame_size"),
    ("{name: a, source: clip.mp4, backend: ffmpeg}", "cameras[0].backend"),
])
def test_pyav_config_errors_name_the_key(tmp_path: Path, camera: str, message: str) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"")
    config = tmp_path / "config.yaml"
    config.write_text(f"cameras:\n  - {camera}\n")
    with pytest.raises(ConfigError) as e:
        load_config(config)
    assert message in str(e.value) and "line 2" in str(e.value), str(e.value)
