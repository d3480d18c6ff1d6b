from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from monitor.capture.camera import Camera, Frame, parse_source
from monitor.config.types import CameraConfig, MotionConfig
from monitor.core.metrics import Metrics
from testkit.rtsp import RtspServer, free_port

CAR_FPS = 12.5          # car-detection.mp4: 768x432 at 12.5 fps, 30 s


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def sample(metrics: Metrics, name: str, camera: str) -> float:
    value = metrics.registry.get_sample_value(name, {"camera": camera})
    return 0.0 if value is None else value


def write_clip(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened(), f"cannot write {path}"
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def read_frames(video: Path, count: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    frames = [cap.read()[1] for _ in range(count)]
    cap.release()
    assert all(f is not None for f in frames)
    return frames


def take_until_down(cam: Camera, timeout: float) -> list[int]:
    """Seqs of every due frame handed out until the camera went down and nothing is left to take."""
    taken: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        down = cam.status()["state"] == "down"
        frame = cam.take_due()
        if frame is not None:
            taken.append(frame.seq)
        elif down:
            return taken
        else:
            time.sleep(0.005)
    raise AssertionError(f"camera did not finish within {timeout} s: {cam.status()}")


@pytest.fixture
def car_clip(tmp_path: Path, videos_dir: Path) -> Path:
    """The first 15 frames of car-detection (1.2 s at 12.5 fps) as a real MP4 file."""
    return write_clip(tmp_path / "car15.mp4", read_frames(videos_dir / "car-detection.mp4", 15), CAR_FPS)


def start(cameras: list[Camera], cfg: CameraConfig, metrics: Metrics, **kwargs) -> Camera:
    cam = Camera(cfg, metrics, **kwargs)
    cameras.append(cam)
    cam.start()
    return cam


# ---------------------------------------------------------------- sources


def test_parse_source() -> None:
    assert parse_source("0").kind == "device" and parse_source("0").target == 0
    assert parse_source("/dev/video3").target == 3 and parse_source("/dev/video3").shown == "/dev/video3"
    assert parse_source("/dev/v4l/by-id/usb-cam-video-index0").target == "/dev/v4l/by-id/usb-cam-video-index0"
    url = parse_source("rtsp://admin:hunter2@cam.local:554/stream1")
    assert (url.kind, url.shown, url.is_rtsp) == ("url", "rtsp://***@cam.local:554/stream1", True)
    assert parse_source("http://cam/mjpg").is_rtsp is False
    assert parse_source("videos/a.mp4").kind == "file"


# ---------------------------------------------------------------- real RTSP server


def test_rtsp_camera_reconnects_after_server_restart(rtsp_server: Callable[..., RtspServer], metrics: Metrics,
                                                     cameras: list[Camera], videos_dir: Path) -> None:
    server = rtsp_server(["car-detection"], minutes=1)
    live = start(cameras, CameraConfig(name="live", source=server.url("car-detection", "user:secret"), fps=0, open_timeout=5,
                                       read_timeout=3, stale_after=3, backoff_max=2), metrics)
    other = start(cameras, CameraConfig(name="file", source=str(videos_dir / "car-detection.mp4"), fps=0, loop=True), metrics)
    file_seqs: list[int] = []

    def file_still_running() -> None:
        frame = other.wait_newer(file_seqs[-1] if file_seqs else 0, timeout=1.0)
        assert frame is not None, f"file camera stalled: {other.status()}"
        file_seqs.append(frame.seq)

    assert wait_for(lambda: live.status()["state"] == "up" and live.latest() is not None, 10), live.status()
    first = live.latest()
    assert first is not None and first.image.shape == (432, 768, 3) and first.image.dtype == np.uint8
    assert live.wait_newer(first.seq, 2.0) is not None
    st = live.status()
    assert (st["width"], st["height"]) == (768, 432)
    assert sample(metrics, "monitor_camera_connected", "live") == 1
    file_still_running()

    before = live.latest().seq
    server.kill()
    assert wait_for(lambda: live.status()["state"] != "up", 5), live.status()
    assert wait_for(lambda: live.status()["state"] == "down", 5), live.status()
    down = live.status()
    assert down["reason"], down
    assert sample(metrics, "monitor_camera_connected", "live") == 0
    file_still_running()

    time.sleep(1.0)                                 # the camera stays away for a while
    file_still_running()
    server.start()                                  # same port
    assert wait_for(lambda: (live.latest() or first).seq > before and live.status()["state"] == "up", 12), \
        live.status()
    file_still_running()
    st = live.status()
    assert st["reconnects"] > 0 and sample(metrics, "monitor_camera_reconnects_total", "live") == st["reconnects"]
    assert sample(metrics, "monitor_camera_connected", "live") == 1
    assert "secret" not in repr(st) and st["source"].startswith("rtsp://***@127.0.0.1:")
    # the file camera never stopped
    assert other.status()["state"] == "up" and other.status()["reconnects"] == 0
    assert file_seqs == sorted(file_seqs) and len(set(file_seqs)) == len(file_seqs)
    assert sample(metrics, "monitor_frames_captured_total", "file") == other.status()["frames"]


@pytest.mark.parametrize("backend", ["opencv", "pyav"])
def test_silent_rtsp_stream_is_reopened_after_stale_after(rtsp_server: Callable[..., RtspServer], metrics: Metrics,
                                                          cameras: list[Camera], backend: str) -> None:
    """The server freezes (SIGSTOP): the TCP connection stays open, but no frame comes (read timeouts: OpenCV's
    CAP_PROP_READ_TIMEOUT_MSEC, FFmpeg's socket timeout for PyAV)."""
    server = rtsp_server(["car-detection"], minutes=1)
    cam = start(cameras, CameraConfig(name="frozen", source=server.url("car-detection"), fps=0, open_timeout=3, read_timeout=30,
                                      stale_after=2, backoff_max=1, backend=backend), metrics)
    assert wait_for(lambda: cam.status()["state"] == "up", 10), cam.status()
    server.pause()
    try:
        t0 = time.monotonic()
        assert wait_for(lambda: cam.status()["state"] != "up", 6), cam.status()
        # read_timeout is 30 s: it is stale_after that bounds the wait
        assert 1.5 < time.monotonic() - t0 < 4.0
        assert wait_for(lambda: cam.status()["reason"] != "", 2)
        assert cam.status()["reason"] == "no frame for 2 s", cam.status()
        beat = cam.heartbeat
        time.sleep(0.6)
        assert cam.heartbeat > beat                 # the thread is alive while the camera is not
    finally:
        server.resume()
    before = cam.latest().seq
    assert wait_for(lambda: cam.status()["state"] == "up" and cam.latest().seq > before, 12), cam.status()


# ---------------------------------------------------------------- files


def test_file_plays_at_native_rate_and_loops(car_clip: Path, metrics: Metrics, cameras: list[Camera]) -> None:
    cam = start(cameras, CameraConfig(name="clip", source=str(car_clip), fps=0, loop=True), metrics)
    assert cam.wait_newer(0, 5.0) is not None
    t0, n0 = time.monotonic(), cam.status()["frames"]
    time.sleep(3.0)
    st = cam.status()
    rate = (st["frames"] - n0) / (time.monotonic() - t0)
    assert 0.75 * CAR_FPS < rate < 1.25 * CAR_FPS, st
    assert 0.75 * CAR_FPS < st["fps_in"] < 1.25 * CAR_FPS, st
    assert st["frames"] > 2 * 15, "a 15-frame clip must have looped"
    assert st["state"] == "up" and st["reconnects"] == 0
    assert cam.latest().seq == st["frames"]         # seq keeps counting across loops


def test_file_without_loop_ends_down_and_idles(car_clip: Path, metrics: Metrics, cameras: list[Camera]) -> None:
    cam = start(cameras, CameraConfig(name="clip", source=str(car_clip), fps=0, loop=False), metrics)
    assert wait_for(lambda: cam.status()["state"] == "down", 5.0), cam.status()
    st = cam.status()
    assert st["reason"] == "end of file" and st["frames"] == 15
    assert sample(metrics, "monitor_camera_connected", "clip") == 0
    beat = cam.heartbeat
    time.sleep(1.0)
    later = cam.status()
    assert (later["frames"], later["reconnects"], later["state"]) == (15, 0, "down"), later
    assert cam.heartbeat > beat and cam.is_alive()  # the thread lives on (for the watchdog) without reopening


def test_unpaced_file_hands_every_frame_to_the_worker(car_clip: Path, metrics: Metrics,
                                                       cameras: list[Camera]) -> None:
    cam = start(cameras, CameraConfig(name="bench", source=str(car_clip), fps=0), metrics, pace=False)
    taken: list[Frame] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        frame = cam.take_due()
        if frame is not None:
            taken.append(frame)
            time.sleep(0.03)                         # a slow worker: the reader must wait, not drop
        elif cam.status()["state"] == "down":
            break
        else:
            time.sleep(0.005)
    assert [f.seq for f in taken] == list(range(1, 16))
    assert cam.status()["reason"] == "end of file"
    assert sample(metrics, "monitor_frames_dropped_total", "bench") == 0


def test_unpaced_file_samples_fps_on_the_file_timeline(tmp_path: Path, videos_dir: Path, metrics: Metrics,
                                                        cameras: list[Camera]) -> None:
    clip = write_clip(tmp_path / "car25.mp4", read_frames(videos_dir / "car-detection.mp4", 25), CAR_FPS)
    cam = start(cameras, CameraConfig(name="bench", source=str(clip), fps=2), metrics, pace=False)
    taken = take_until_down(cam, 10)
    # 25 frames = 2 s of video at 2 due frames per second of video, however fast it was read
    assert cam.status()["frames"] == 25
    assert 3 <= len(taken) <= 5, taken
    assert sample(metrics, "monitor_frames_dropped_total", "bench") == 0


# ---------------------------------------------------------------- fps sampling


def test_fps_sampling_and_dropped_due_frames(videos_dir: Path, metrics: Metrics, cameras: list[Camera]) -> None:
    woken = threading.Event()
    cam = start(cameras, CameraConfig(name="s", source=str(videos_dir / "car-detection.mp4"), fps=2), metrics,
                on_due=woken.set)
    assert cam.wait_newer(0, 5.0) is not None
    times: list[float] = []
    seqs: list[int] = []
    end = time.monotonic() + 3.5
    while time.monotonic() < end:
        woken.wait(0.2)
        woken.clear()
        frame = cam.take_due()
        if frame is not None:
            times.append(time.monotonic())
            seqs.append(frame.seq)
            assert cam.take_due() is None           # handed out once
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 1.6 < rate < 2.5, (rate, seqs)
    # about every 12.5 / 2 = 6th frame of the stream
    gaps = np.diff(seqs)
    assert 5 <= gaps.mean() <= 8, seqs
    assert sample(metrics, "monitor_frames_dropped_total", "s") == 0

    time.sleep(2.2)                                 # the worker is busy: due frames pile up, only one is kept
    dropped = sample(metrics, "monitor_frames_dropped_total", "s")
    assert 3 <= dropped <= 5, dropped
    newest = cam.take_due()
    assert newest is not None and newest.seq > seqs[-1] + 6 * 3
    assert cam.take_due() is None


# ---------------------------------------------------------------- failures


def test_missing_device_is_down_and_retries_with_growing_backoff(metrics: Metrics, cameras: list[Camera],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="monitor")
    assert not os.path.exists("/dev/video57")
    cam = start(cameras, CameraConfig(name="webcam", source="/dev/video57", backoff_max=8), metrics)
    backoffs: list[float] = []
    end = time.monotonic() + 4.0
    while time.monotonic() < end:
        st = cam.status()
        if st["state"] == "down" and (not backoffs or st["backoff"] != backoffs[-1]):
            backoffs.append(st["backoff"])
        time.sleep(0.02)
    st = cam.status()
    assert st["reason"] == "device /dev/video57 not found", st
    assert len(backoffs) >= 3 and backoffs == sorted(backoffs) and backoffs[-1] > 2 * backoffs[0], backoffs
    assert st["reconnects"] >= 2 and sample(metrics, "monitor_camera_reconnects_total", "webcam") == st["reconnects"]
    assert sample(metrics, "monitor_camera_connected", "webcam") == 0
    # logged once at warning level, retries only at debug
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "video57" in r.getMessage()]
    assert len(warnings) == 1


def test_unreachable_url_is_down_and_never_shows_the_password(metrics: Metrics, cameras: list[Camera],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="monitor")
    port = free_port()                              # nothing listens there
    cam = start(cameras, CameraConfig(name="door", source=f"rtsp://user:secret@127.0.0.1:{port}/x", open_timeout=3,
                                      backoff_max=4), metrics)
    assert wait_for(lambda: cam.status()["reconnects"] >= 2, 5.0), cam.status()
    st = cam.status()
    assert st["state"] in ("down", "connecting")
    assert wait_for(lambda: cam.status()["state"] == "down", 3.0)
    st = cam.status()
    assert st["reason"] in (f"cannot open rtsp://***@127.0.0.1:{port}/x",          # OpenCV says no more
                            f"cannot open rtsp://***@127.0.0.1:{port}/x: [Errno 111] Connection refused"), st
    assert st["source"] == f"rtsp://***@127.0.0.1:{port}/x" and st["backoff"] > 0
    cam.stop()
    assert caplog.records, "the failure must be logged"
    assert "secret" not in repr(cam.status()) and "secret" not in caplog.text
    assert "user:" not in caplog.text


def test_stop_returns_while_open_hangs(metrics: Metrics, cameras: list[Camera]) -> None:
    """A server that accepts the TCP connection and never answers the RTSP request."""
    accepted = threading.Event()
    held: list[socket.socket] = []
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)
            accepted.set()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        port = listener.getsockname()[1]
        cam = start(cameras, CameraConfig(name="hang", source=f"rtsp://127.0.0.1:{port}/x", open_timeout=3, read_timeout=3),
                    metrics)
        assert accepted.wait(3.0)
        time.sleep(0.2)
        assert cam.status()["state"] == "connecting"
        t0 = time.monotonic()
        cam.stop(timeout=0.5)
        assert time.monotonic() - t0 < 1.0
        assert cam.is_alive(), "the open should still be blocked: the test did not test anything"
        assert cam.status()["state"] == "down" and cam.status()["reason"] == "stopped"
        # once OpenCV's open timeout fires, the thread releases its capture and ends by itself
        assert wait_for(lambda: not cam.is_alive(), 5.0)
        assert cam.status()["reason"] == "stopped"
    finally:
        done.set()
        acceptor.join(2.0)
        listener.close()
        for conn in held:
            conn.close()


# ---------------------------------------------------------------- motion gate in the camera


def test_motion_gate_keeps_still_frames_from_the_worker(tmp_path: Path, videos_dir: Path, metrics: Metrics,
                                                        cameras: list[Camera]) -> None:
    still = read_frames(videos_dir / "car-detection.mp4", 1)[0]
    moved = still.copy()
    cv2.rectangle(moved, (300, 150), (460, 300), (255, 255, 255), -1)
    clip = write_clip(tmp_path / "still.mp4", [still] * 12 + [moved] * 13, CAR_FPS)
    cam = start(cameras, CameraConfig(name="gate", source=str(clip), fps=0,
                                      motion=MotionConfig(enabled=True, threshold=0.02, keepalive=30)),
                metrics, pace=False)
    taken = take_until_down(cam, 10)
    assert taken == [1, 13]                         # the first frame, then the frame where the scene changed
    assert sample(metrics, "monitor_frames_skipped_still_total", "gate") == 23
    assert sample(metrics, "monitor_frames_captured_total", "gate") == 25
