"""Clips of cameras read by OpenCV (clips.encode, issue 19): the frames encoded to H.264 by the camera's
FrameEncoder into its PacketRing, and recorded by the real clip stage (ClipManager, recorders, writer) unchanged.

The camera is a real RTSP stream (testkit/rtsp, GStreamer, car-detection: H.264 768x432 at 12.5 fps, a 4.8 s GOP)
read through cv2.VideoCapture (`backend: opencv`), the path a webcam takes; this machine has no /dev/video device.
The clip must be the encoder's, not the source's: h264 yuv420p at the native size, a keyframe every second (so the
clip starts within ~1 s of `now - pre`, not within the source's 4.8 s GOP), ffmpeg decodes it to its end,
and real headless Chromium plays it and seeks into its pre-roll.
"""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from monitor.alerts.event import Event
from monitor.alerts.events import EventStore
from monitor.capture.camera import Camera
from monitor.capture.frame_encoder import KEYFRAME_EVERY
from monitor.clips.manager import ClipManager, recording
from monitor.config.loader import ConfigError, load_config, parse_config
from monitor.core.metrics import Metrics
from testkit.clips import playable
from testkit.rtsp import RtspServer, free_port

PRE, EVENT, POST = 2.0, 2.0, 1.0
ENCODE_FPS = 8.0


class Stage:
    def __init__(self, camera: Camera, manager: ClipManager, store: EventStore, metrics: Metrics) -> None:
        self.camera, self.manager, self.store, self.metrics = camera, manager, store, metrics


@pytest.fixture(scope="module")
def stage(videos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    tmp = tmp_path_factory.mktemp("encode")
    with RtspServer(free_port(), ["car-detection"]) as server:
        config = parse_config({
            "model": {"weights": str(tmp / "none.pt")},
            "cameras": [{"name": "cam", "source": server.url("car-detection"), "backend": "opencv", "fps": 1,
                         "clips": {"enabled": True, "encode": True}}],
            "clips": {"pre": PRE, "post": POST, "encode_fps": ENCODE_FPS, "min_free_bytes": 1},
            "events": {"database": str(tmp / "events.db")},
        }, tmp)
        assert recording(config) == ["cam"]
        metrics = Metrics()
        store = EventStore(config.events.database, metrics)
        camera = Camera(config.cameras[0], metrics)
        assert camera.encoder is not None and camera.packets is not None
        manager = ClipManager(config, store, metrics, lambda: {"cam": camera})
        manager.start()
        camera.start()
        try:
            deadline = time.monotonic() + 20
            while camera.packets.held_seconds() < PRE + KEYFRAME_EVERY and time.monotonic() < deadline:
                time.sleep(0.1)
            assert camera.packets.held_seconds() >= PRE, camera.status()
            yield Stage(camera, manager, store, metrics)
        finally:
            camera.stop()
            manager.stop()
            store.close()


def record(stage: Stage, seconds: float, timeout: float = 15.0) -> Event:
    done: list[Event] = []
    stage.manager.add_listener(done.append)
    ev = stage.store.insert(Event(camera="cam", rule="r", label="car", score=0.9, peak_score=0.9,
                                  started_at=time.time()))
    stage.manager.on_event("start", ev)
    time.sleep(seconds)
    ev = replace(ev, ended_at=time.time())
    stage.store.end_event(ev.id, ev.ended_at, 0.9)
    stage.manager.on_event("end", ev)
    deadline = time.monotonic() + timeout
    while not any(e.id == ev.id for e in done) and time.monotonic() < deadline:
        time.sleep(0.05)
    got = stage.store.get(ev.id)
    assert got is not None and any(e.id == ev.id for e in done), "the clip never completed"
    return got


def probe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=codec_name,pix_fmt,width,height,nb_read_frames:format=duration", "-of", "json",
                          str(path)], capture_output=True, text=True, timeout=30, check=True).stdout
    return json.loads(out)


@pytest.fixture(scope="module")
def clip(stage: Stage) -> Path:
    """One event's clip, recorded once for the tests below."""
    ev = record(stage, EVENT)
    assert ev.clip_state == "complete" and ev.clip, ev
    return stage.manager.root / ev.clip


def test_an_opencv_camera_records_an_h264_clip_of_pre_event_post(stage: Stage, clip: Path) -> None:
    path = clip
    assert playable(path) == ""                 # demuxed to its end
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True,
                             text=True, timeout=60)
    assert decoded.returncode == 0 and decoded.stderr == "", decoded.stderr     # and decoded to its end
    info = probe(path)
    stream = info["streams"][0]
    # encoded here, at the camera's native size; browsers play h264 yuv420p (the source's codec is h264 too:
    # the 1 s keyframes below are what shows it is our encoder's stream, not a copy)
    assert (stream["codec_name"], stream["pix_fmt"], stream["width"], stream["height"]) == \
        ("h264", "yuv420p", 768, 432), stream
    duration = float(info["format"]["duration"])
    least = PRE + EVENT + POST
    assert least - 0.5 <= duration <= least + KEYFRAME_EVERY + 0.5, duration
    # at most encode_fps frames a second (the source sends 12.5), and not far fewer
    assert 0.6 * ENCODE_FPS * duration <= int(stream["nb_read_frames"]) <= ENCODE_FPS * duration + 2, stream
    keys = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-skip_frame", "nokey",
                           "-show_entries", "frame=pts_time", "-of", "csv=p=0", str(path)],
                          capture_output=True, text=True, timeout=30, check=True).stdout.split()
    times = [float(k.strip(",")) for k in keys]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert times[0] == 0 and len(gaps) >= 3 and max(gaps) <= KEYFRAME_EVERY + 2 / ENCODE_FPS, times
    m = stage.metrics.registry.get_sample_value
    assert m("monitor_clip_frames_encoded_total", {"camera": "cam"}) >= ENCODE_FPS * least * 0.6
    assert m("monitor_clips_written_total", {"camera": "cam"}) >= 1
    # the pre-roll is about pre + one keyframe interval, not pre + the source's 4.8 s GOP
    assert stage.camera.packets.held_seconds() <= PRE + KEYFRAME_EVERY + 0.5
    assert m("monitor_clip_encode_dropped_total", {"camera": "cam"}) == stage.camera.encoder.dropped


def write(tmp: Path, text: str) -> Path:
    path = tmp / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_webcam_records_only_with_clips_encode(tmp_path: Path) -> None:
    head = f"model: {{weights: {tmp_path / 'w.pt'}}}\n"
    # per camera, or from the global key
    for text in ("cameras:\n  - name: w\n    source: /dev/video0\n    clips: {enabled: true, encode: true}\n",
                 "clips: {encode: true}\ncameras:\n  - name: w\n    source: 0\n    clips: {enabled: true}\n"):
        config = load_config(write(tmp_path, head + text))
        cam = config.cameras[0]
        assert cam.backend == "opencv" and cam.clips.encode and cam.clips.encode_fps == 10.0
        assert recording(config) == ["w"]
    # without it: the error says how to fix it, at the key's line
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, head + "cameras:\n  - name: w\n    source: /dev/video0\n"
                          "    clips:\n      enabled: true\n"))
    assert info.value.errors == ["cameras[0].clips.enabled: a webcam gives no packets to copy: set clips.encode: "
                                 "true (its frames encoded to H.264, costs CPU) (line 6)"]
    # clips.enabled globally records the cameras that can, and leaves a webcam without encode alone
    config = load_config(write(tmp_path, head + "clips: {enabled: true}\ncameras:\n  - {name: w, source: 0}\n"
                               "  - {name: f, source: " + str(tmp_path / "a.mp4") + "}\n"))
    assert recording(config) == ["f"]


def test_the_encoder_queue_is_bounded_drops_are_counted_and_stop_is_prompt() -> None:
    import numpy as np
    from monitor.capture.frame_encoder import QUEUE, FrameEncoder
    from monitor.capture.packet_ring import PacketRing

    metrics = Metrics()
    ring = PacketRing("cam", pre=2.0, max_bytes=1 << 20)
    encoder = FrameEncoder("cam", ring, 10.0, "normal",
                           on_dropped=metrics.clip_encode_dropped.labels(camera="cam").inc)
    picture = np.zeros((120, 161, 3), np.uint8)     # an odd width: cropped to even for 4:2:0
    for i in range(QUEUE + 3):                      # not started yet: nothing takes frames off the queue
        encoder.offer(picture, 100.0 + i * 0.1)
    assert encoder.dropped == 3
    assert metrics.registry.get_sample_value("monitor_clip_encode_dropped_total", {"camera": "cam"}) == 3
    encoder.start()
    deadline = time.monotonic() + 10
    while encoder.encoded < QUEUE and time.monotonic() < deadline:
        time.sleep(0.02)
    assert encoder.encoded == QUEUE and ring.spec is not None and ring.held_seconds() > 0
    assert ring.spec.key[0][1:4] == ("libx264", 160, 120)
    started = time.monotonic()
    encoder.stop()
    assert time.monotonic() - started < 1.0 and not encoder._thread.is_alive()


def test_chromium_plays_the_encoded_clip_and_seeks_into_the_preroll(clip: Path, tmp_path: Path) -> None:
    import functools
    import http.server
    import re
    import shutil
    import threading

    from testkit.chromium import Browser

    shutil.copy(clip, tmp_path / "clip.mp4")
    (tmp_path / "index.html").write_text('<video src="clip.mp4" muted playsinline></video>', encoding="utf-8")

    class Ranges(http.server.SimpleHTTPRequestHandler):
        """Range requests, as the daemon's clip route answers them: Chromium seeks only in a seekable resource."""

        def do_GET(self) -> None:
            asked = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if not self.path.endswith(".mp4") or not asked:
                return super().do_GET()
            body = (tmp_path / "clip.mp4").read_bytes()
            first = int(asked.group(1))
            last = min(int(asked.group(2) or len(body) - 1), len(body) - 1)
            self.send_response(206)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(body)}")
            self.send_header("Content-Length", str(last - first + 1))
            self.end_headers()
            self.wfile.write(body[first:last + 1])

        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Ranges, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with Browser(tmp_path / "profile", flags=("--autoplay-policy=no-user-gesture-required",)) as browser:
            page = browser.page(f"http://127.0.0.1:{server.server_address[1]}/index.html")
            result = page.play_and_seek("video", PRE / 2, watch_ms=1200)
    finally:
        server.shutdown()
        server.server_close()
    assert result["error"] is None, result
    assert result["ready"] >= 2 and result["width"] == 768, result
    assert result["t1"] - result["t0"] >= 0.5, result              # it plays
    assert abs(result["seekedTo"] - PRE / 2) < 0.3 and result["readyAfterSeek"] >= 2, result
    assert result["duration"] >= PRE + EVENT + POST - 0.5, result
