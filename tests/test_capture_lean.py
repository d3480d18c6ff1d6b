"""Capture that converts only the frames someone uses, reuses its arrays, and reports what it cannot do:
retrieve() only for due or watched frames, the frame pool, a crop outside the frame, hardware decode fallback,
FFmpeg's process-wide options set once at import, and the worker isolating a bad frame."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from monitor.capture.camera import WATCH_HOLD, Camera, Frame
from monitor.config.loader import ConfigError, parse_config
from monitor.config.types import CameraConfig
from monitor.core.metrics import Metrics
from monitor.inference.classifier import Classifier
from monitor.inference.preprocess import crop_box
from monitor.inference.results import ResultBoard
from monitor.inference.worker import InferenceWorker
from testkit.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]


def start(cameras: list[Camera], cfg: CameraConfig, metrics: Metrics, **kwargs) -> Camera:
    cam = Camera(cfg, metrics, **kwargs)
    cameras.append(cam)
    cam.start()
    return cam


def take_for(cam: Camera, seconds: float, woken: threading.Event) -> list[Frame]:
    """What a worker does: take every due frame for `seconds`, keeping none of them."""
    seqs = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        woken.wait(0.1)
        woken.clear()
        frame = cam.take_due()
        if frame is not None:
            seqs.append(frame.seq)
    return seqs


# ---------------------------------------------------------------- retrieve only what is used


def test_unwatched_camera_converts_only_due_frames(videos_dir: Path, metrics: Metrics,
                                                   cameras: list[Camera]) -> None:
    woken = threading.Event()
    cam = start(cameras, CameraConfig(name="lot", source=str(videos_dir / "car-detection.mp4"), fps=2, loop=True), metrics,
                on_due=woken.set)
    assert wait_until(lambda: cam.status()["state"] == "up", 10), cam.status()
    time.sleep(0.5)
    before = cam.status()
    taken = take_for(cam, 3.0, woken)
    after = cam.status()
    grabbed = after["frames"] - before["frames"]
    converted = after["retrieved"] - before["retrieved"]
    assert grabbed >= 25, after                             # 12.5 fps for 3 s
    assert len(taken) >= 4                                  # 2 due frames per second
    # only the due frames were converted (the due frame in flight at either edge may add one)
    assert converted <= len(taken) + 1, (converted, len(taken), grabbed)
    assert converted * 3 < grabbed
    # seq numbers count every grabbed frame, so a due frame's seq still says where in the stream it was
    assert np.diff(taken).mean() >= 4, taken

    # a live view asking for frames gets every frame converted while it keeps asking ...
    seen: list[int] = []
    seq = cam.latest().seq
    end = time.monotonic() + 2.0
    start_status = cam.status()
    while time.monotonic() < end:
        frame = cam.wait_newer(seq, 1.0)
        assert frame is not None
        seq = frame.seq
        seen.append(seq)
        cam.take_due()
    watched = cam.status()
    assert watched["retrieved"] - start_status["retrieved"] >= 0.9 * (watched["frames"] - start_status["frames"])
    assert len(seen) >= 18 and np.diff(seen).max() <= 2, seen  # consecutive frames, none skipped
    # ... and not after it went away
    time.sleep(WATCH_HOLD + 1.0)
    quiet = cam.status()
    taken = take_for(cam, 2.0, woken)
    later = cam.status()
    assert later["retrieved"] - quiet["retrieved"] <= len(taken) + 1
    assert later["frames"] - quiet["frames"] >= 20


def test_frames_reuse_a_few_arrays_and_a_held_frame_is_never_overwritten(videos_dir: Path, metrics: Metrics,
                                                                         cameras: list[Camera]) -> None:
    woken = threading.Event()
    cam = start(cameras, CameraConfig(name="pool", source=str(videos_dir / "car-detection.mp4"), fps=0), metrics,
                on_due=woken.set, pace=False)
    held = None
    addresses: set[int] = set()
    taken = 0
    deadline = time.monotonic() + 20
    while taken < 60 and time.monotonic() < deadline:
        woken.wait(0.1)
        woken.clear()
        frame = cam.take_due()
        if frame is None:
            continue
        taken += 1
        addresses.add(frame.image.ctypes.data)
        if taken == 10:
            held = (frame, frame.image.copy())      # a sink or a viewer still holds this one
        del frame
    assert taken == 60, cam.status()
    assert cam.status()["retrieved"] >= 60
    # the held frame keeps its array (and its pixels); the rest cycle through the pool
    assert held is not None and np.array_equal(held[0].image, held[1])
    assert len(addresses) <= 4, len(addresses)


# ---------------------------------------------------------------- crop outside the frame


def test_crop_outside_the_frame_is_a_camera_error_not_a_one_pixel_crop(videos_dir: Path, metrics: Metrics,
                                                                       cameras: list[Camera],
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="monitor")
    woken = threading.Event()
    bad = start(cameras, CameraConfig(name="bad", source=str(videos_dir / "car-detection.mp4"), fps=5, loop=True,
                                      crop=(800, 100, 200, 200)), metrics, on_due=woken.set)
    edge = start(cameras, CameraConfig(name="edge", source=str(videos_dir / "car-detection.mp4"), fps=5, loop=True,
                                       crop=(700, 0, 100, 100)), metrics)
    good = start(cameras, CameraConfig(name="good", source=str(videos_dir / "car-detection.mp4"), fps=5, loop=True,
                                       crop=(668, 332, 100, 100)), metrics)
    assert wait_until(lambda: bad.status()["state"] == "error" and edge.status()["state"] == "error", 10), \
        (bad.status(), edge.status())
    st = bad.status()
    assert "crop [800, 100, 200, 200]" in st["reason"] and "768x432" in st["reason"], st
    assert "crop [700, 0, 100, 100]" in edge.status()["reason"]
    assert take_for(bad, 1.0, woken) == []                 # nothing is handed to the classifier ...
    assert bad.latest() is not None                        # ... but the live view still shows the camera
    assert wait_until(lambda: good.take_due() is not None, 5)
    assert good.status()["state"] == "up" and good.status()["reason"] == ""
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "bad" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in errors]


def test_crop_box_refuses_a_region_outside_the_frame() -> None:
    """Preprocessing places a crop with the one bounds check (Region.clip_to, tests/test_region.py): a box
    that is not wholly inside the frame is refused, never classified as a smaller box than the one written."""
    with pytest.raises(ValueError, match="does not fit the 768x432 frame"):
        crop_box(432, 768, (800, 100, 200, 200))
    with pytest.raises(ValueError, match="does not fit"):
        crop_box(432, 768, (0, 500, 10, 10))
    with pytest.raises(ValueError, match=r"crop \[700, 400, 100, 100\] does not fit"):
        crop_box(432, 768, (700, 400, 100, 100))                                # partly inside
    assert crop_box(432, 768, (668, 332, 100, 100)) == (668, 332, 100, 100)


# ---------------------------------------------------------------- hardware decode


def test_hwaccel_auto_falls_back_to_software_with_one_log_line(tmp_path: Path, videos_dir: Path, metrics: Metrics,
                                                               cameras: list[Camera],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="monitor")
    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(videos_dir / "car-detection.mp4"),
                    "-t", "0.4", "-c", "copy", str(clip)], check=True, timeout=30)
    # loop: a short clip played many times must not log the fallback again
    auto = start(cameras, CameraConfig(name="auto", source=str(clip), fps=0, hwaccel="auto", loop=True), metrics)
    plain = start(cameras, CameraConfig(name="plain", source=str(clip), fps=0), metrics)
    assert wait_until(lambda: auto.status()["state"] == "up" and plain.status()["decoder"], 10)
    assert auto.status()["decoder"] == "software" and auto.status()["hwaccel"] == "auto"
    assert plain.status()["decoder"] == "software" and plain.status()["hwaccel"] == "none"
    assert wait_until(lambda: auto.status()["frames"] > 30, 10), auto.status()
    fallback = [r.getMessage() for r in caplog.records if "hwaccel auto:" in r.getMessage()]
    assert len(fallback) == 1 and "camera auto" in fallback[0] and "software" in fallback[0], fallback


def test_hwaccel_config_values() -> None:
    cfg = parse_config({"cameras": [{"name": "a", "source": "0", "hwaccel": "auto"}, {"name": "b", "source": "1"}]})
    assert [c.hwaccel for c in cfg.cameras] == ["auto", "none"]
    with pytest.raises(ConfigError) as e:
        parse_config({"cameras": [{"name": "a", "source": "0", "hwaccel": "cuda"}]})
    assert any(m.startswith("cameras[0].hwaccel:") for m in e.value.errors), e.value.errors


# ---------------------------------------------------------------- decoder threads


def _ffmpeg_frame_threads() -> int:
    """FFmpeg names its frame-decoding threads "av:<codec>:df<N>" (libavcodec >= 6.1)."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
        except OSError:         # the thread ended meanwhile
            pass
    return sum(1 for n in names if n.startswith("av:") and ":df" in n)


def test_decode_threads_reach_ffmpeg(videos_dir: Path, metrics: Metrics, cameras: list[Camera]) -> None:
    before = _ffmpeg_frame_threads()
    source = str(videos_dir / "car-detection.mp4")
    three = start(cameras, CameraConfig(name="three", source=source, fps=1, loop=True, decode_threads=3), metrics)
    assert wait_until(lambda: three.status()["state"] == "up", 10), three.status()
    assert _ffmpeg_frame_threads() - before == 3
    three.stop()
    assert wait_until(lambda: _ffmpeg_frame_threads() == before, 10)
    # decode_threads 1 decodes on the capture thread itself: no frame threads, no pictures of their own.
    one = start(cameras, CameraConfig(name="one", source=source, fps=1, loop=True, decode_threads=1), metrics)
    assert wait_until(lambda: one.status()["frames"] > 5, 10), one.status()
    assert _ffmpeg_frame_threads() == before
    one.stop()
    # The default (unset): the same, PyAV and OpenCV.
    for backend in ("pyav", "opencv"):
        default = start(cameras, CameraConfig(name=f"default-{backend}", source=source, fps=1, loop=True,
                                              backend=backend), metrics)
        assert default.cfg.decode_threads is None
        assert wait_until(lambda: default.status()["frames"] > 5, 10), default.status()
        assert _ffmpeg_frame_threads() == before
        default.stop()


def test_decode_threads_config_values() -> None:
    cfg = parse_config({"cameras": [{"name": "a", "source": "0", "decode_threads": 0}, {"name": "b", "source": "1"}]})
    assert [c.decode_threads for c in cfg.cameras] == [0, None]
    with pytest.raises(ConfigError) as e:
        parse_config({"cameras": [{"name": "a", "source": "0", "decode_threads": -1}]})
    assert any(m.startswith("cameras[0].decode_threads:") for m in e.value.errors), e.value.errors


def test_capture_thread_runs_below_the_rest_of_the_process(videos_dir: Path, metrics: Metrics,
                                                           cameras: list[Camera]) -> None:
    """Only the camera's own thread is lowered (Linux schedules threads): the worker and web threads keep their
    priority, so when the cores are busy classification runs before decoding."""
    me = threading.get_native_id()
    base_nice, base_policy = os.getpriority(os.PRIO_PROCESS, me), os.sched_getscheduler(me)
    source = str(videos_dir / "car-detection.mp4")
    cams = {p: start(cameras, CameraConfig(name=p, source=source, fps=1, loop=True, capture_priority=p), metrics)
            for p in ("low", "idle", "normal")}
    default = start(cameras, CameraConfig(name="default", source=source, fps=1, loop=True), metrics)
    for cam in (*cams.values(), default):
        assert wait_until(lambda: cam.status()["state"] == "up", 10), cam.status()
    nice = {p: os.getpriority(os.PRIO_PROCESS, c._thread.native_id) for p, c in cams.items()}
    policy = {p: os.sched_getscheduler(c._thread.native_id) for p, c in cams.items()}
    assert nice == {"low": 19, "idle": 19, "normal": base_nice}
    assert policy == {"low": base_policy, "idle": os.SCHED_IDLE, "normal": base_policy}
    assert default.cfg.capture_priority == "idle" and os.sched_getscheduler(default._thread.native_id) == os.SCHED_IDLE
    assert (os.getpriority(os.PRIO_PROCESS, me), os.sched_getscheduler(me)) == (base_nice, base_policy)


def test_capture_priority_config_values() -> None:
    cfg = parse_config({"cameras": [{"name": "a", "source": "0", "capture_priority": "low"},
                                    {"name": "b", "source": "1"}]})
    assert [c.capture_priority for c in cfg.cameras] == ["low", "idle"]
    with pytest.raises(ConfigError) as e:
        parse_config({"cameras": [{"name": "a", "source": "0", "capture_priority": "high"}]})
    assert any(m.startswith("cameras[0].capture_priority:") for m in e.value.errors), e.value.errors


# ---------------------------------------------------------------- FFmpeg options: once, at import


def _env_after_import(env: dict[str, str]) -> str:
    code = ("import os, threading; import monitor.capture.camera; "
            "print(os.environ.get('OPENCV_FFMPEG_CAPTURE_OPTIONS'), threading.active_count())")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.strip()


def test_ffmpeg_capture_options_are_set_at_import_before_any_camera_thread() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_CAPTURE_OPTIONS"}
    env["PYTHONPATH"] = str(REPO)
    assert _env_after_import(env) == "rtsp_transport;tcp 1"
    env["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;udp"     # the operator's choice is kept
    assert _env_after_import(env) == "rtsp_transport;udp 1"


# ---------------------------------------------------------------- a bad frame in a batch


class _Source:
    """A camera as the worker sees it (name, cfg, take_due): hands out one given frame per round."""

    def __init__(self, name: str, image: np.ndarray) -> None:
        self.name = name
        self.cfg = CameraConfig(name=name, source="0")
        self.image = image
        self.seq = 0

    def take_due(self) -> Frame:
        self.seq += 1
        return Frame(self.image, self.seq, time.time(), time.monotonic())


def test_one_bad_frame_fails_only_its_camera(demo_weights: Path, real_frames: list[np.ndarray],
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="monitor")
    metrics = Metrics()
    board = ResultBoard()
    worker = InferenceWorker(Classifier(demo_weights, threads=1), board, None, metrics, batch_max=8)
    broken = np.zeros((0, 0, 3), np.uint8)                  # a decoder handed out an empty picture
    sources = [_Source("a", real_frames[0]), _Source("broken", broken), _Source("b", real_frames[1])]
    worker.set_cameras(sources)
    for _ in range(5):
        worker.run_once()
    for name in ("a", "b"):
        assert metrics.registry.get_sample_value("monitor_frames_classified_total", {"camera": name}) == 5
        assert board.get(name) is not None and board.get(name).frame.seq == 5
    assert metrics.registry.get_sample_value("monitor_frames_failed_total", {"camera": "broken"}) == 5
    assert metrics.registry.get_sample_value("monitor_frames_failed_total", {"camera": "a"}) is None
    assert board.get("broken") is None
    lines = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
    assert len(lines) == 1 and "cannot be classified" in lines[0] and "(0, 0, 3)" in lines[0], lines


# ---------------------------------------------------------------- the capacity benchmark


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "monitor", "bench", "capacity", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


def test_capacity_bench_says_when_the_rtsp_server_script_is_missing(tmp_path: Path, videos_dir: Path,
                                                                    demo_weights: Path) -> None:
    done = _bench(str(videos_dir / "car-detection.mp4"), "--weights", str(demo_weights), cwd=tmp_path)
    assert done.returncode != 0 and "--rtsp-serve" in done.stderr     # the package ships no RTSP test server
    missing = tmp_path / "rtsp_serve.py"
    done = _bench(str(videos_dir / "car-detection.mp4"), "--weights", str(demo_weights), "--rtsp-serve",
                  str(missing), cwd=tmp_path)
    assert done.returncode != 0
    assert f"{missing} is missing" in done.stderr and "--rtsp-serve" in done.stderr


def test_capacity_bench_measures_real_rtsp_cameras(tmp_path: Path, shared_dir: Path, videos_dir: Path,
                                                   demo_weights: Path) -> None:
    import json
    done = _bench(str(videos_dir / "car-detection.mp4"), "--weights", str(demo_weights), "--cameras", "0,2",
                  "--seconds", "3", "--warmup", "0.5", "--rtsp-serve", str(shared_dir / "tools" / "rtsp_serve.py"),
                  "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    base, two = report["steps"]
    assert base["cameras"] == 0 and "error" not in base and base["rss_mb"] > 50
    assert two["cameras"] == 2 and "error" not in two, two
    assert two["resolution"] == ["768x432"] and two["decoders"] == ["software"]
    assert two["classified"] > 0 and two["p99_ms"] is not None and two["rss_mb"] > base["rss_mb"]
    assert two["grabbed_fps_per_camera"] > 2 * two["retrieved_per_camera_per_s"] > 0   # 12.5 fps in, 5 due
    assert two["rss_per_camera_mb"] > 0 and report["max_cameras"] in (0, 2)
    assert two["model_threads"] == 1 and two["capture_priority"] == "idle"      # the daemon's defaults
