"""The stream-fault scenarios of tests/test_faults_stream.py (see its docstring), also run longer by
scripts/stream_faults.py: the RTSP server SIGKILLed and restarted under a daemon, and a set of broken sources."""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable

import cv2

from monitor.config.loader import parse_config
from monitor.config.types import Config
from monitor.daemon import Daemon
from testkit.faults import (
    BadRtspServer, CrashWatch, HangServer, Resources, kill_restart_run, leaked, resources, settle, summarize,
    truncated_copy, wait_resumed,
)
from testkit.rtsp import RtspServer

SEED = 2                 # 5 kills, 2 of them 0.1-0.4 s after a restart (before the camera resumed)
RESUME_LIMIT = 12.0      # s from the server's restart to a result; backoff_max 1 s + open + first key frame ~ 3 s
SETTLE = 12.0            # s for threads blocked in OpenCV (open_timeout 3 s) to return after stop()


def classified(d: Daemon, camera: str) -> float:
    return d.metrics.registry.get_sample_value("monitor_frames_classified_total", {"camera": camera}) or 0.0


def build(tmp_path: Path, weights: Path, cameras: list[dict]) -> Config:
    return parse_config({
        "model": {"weights": str(weights), "threads": 2},
        "cameras": cameras,
        "events": {"database": str(tmp_path / "events.db")},
    }, tmp_path)


def live_camera(url: str) -> dict:
    return {"name": "live", "source": url, "fps": 5, "open_timeout": 3, "read_timeout": 2, "stale_after": 2,
            "backoff_max": 1}


def witness_camera(videos_dir: Path) -> dict:
    return {"name": "witness", "source": str(videos_dir / "bottle-detection.mp4"), "loop": True, "fps": 5}


def warm_baseline(tmp_path: Path, weights: Path, cameras: list[dict], ready: Callable[[Daemon], bool]) -> Resources:
    """Run the daemon once until `ready`, stop it, and count threads and fds: what a process that has already
    loaded torch, OpenCV's FFmpeg and GStreamer clients holds. Lazy one-time initialisation is not a leak."""
    d = Daemon(build(tmp_path, weights, cameras))
    d.start(web=False)
    try:
        deadline = time.monotonic() + 20
        while not ready(d):
            assert time.monotonic() < deadline, [c.status() for c in d.cameras.values()]
            time.sleep(0.05)
    finally:
        d.stop()
    return settle(resources(), 0)


def alive(d: Daemon) -> list[str]:
    """Components whose thread is gone (a crash)."""
    dead = [] if d.worker._thread is not None and d.worker._thread.is_alive() else ["inference-worker"]
    return dead + [f"camera-{name}" for name, cam in d.cameras.items() if not cam.is_alive()]


def kill_restart(tmp_path: Path, weights: Path, videos_dir: Path, server: RtspServer, kills: int,
                 daemons: list[Daemon], seed: int = SEED) -> dict:
    """`kills` SIGKILLs of the RTSP server under a daemon (see testkit.faults.kill_restart_run); checks and
    returns the figures. Also run by scripts/stream_faults.py."""
    cameras = [live_camera(server.url("car-detection")), witness_camera(videos_dir)]
    baseline = warm_baseline(tmp_path, weights, cameras, lambda d: classified(d, "live") >= 1)
    with CrashWatch() as crashes:
        d = Daemon(build(tmp_path, weights, cameras))
        daemons.append(d)
        d.start(web=False)
        assert wait_resumed(d, "live", 0.0, 20), d.cameras["live"].status()
        run = kill_restart_run(d, server, "live", kills, random.Random(seed), witness="witness",
                               resume_timeout=RESUME_LIMIT + 10)
        dead = alive(d)
        healthy = d.healthy()
        during = resources()
        d.stop()
    after = settle(baseline, SETTLE)
    figures = {**run.figures(), "crashes": crashes.crashes, "threads_before": baseline.threads,
               "threads_during": during.threads, "threads_after": after.threads, "fds_before": baseline.fds,
               "fds_during": during.fds, "fds_after": after.fds}
    print(f"\nkill/restart x{kills}: {figures}\n  resume: {summarize(run.resume_s)}\n  outage: "
          f"{summarize(run.outage_s)}\n  schedule (up, down): {run.schedule}")
    assert not dead, f"threads died: {dead}"
    assert healthy, "daemon not healthy after the kills"
    assert crashes.crashes == 0, crashes.report()
    assert run.kills == kills and run.not_resumed == 0, figures
    assert run.reconnects >= kills, f"fewer reopen attempts than kills: {figures}"
    assert len(run.resume_s) == kills - run.flaps
    assert max(run.resume_s) < RESUME_LIMIT, f"slow resume: {run.resume_s}"
    assert min(run.witness_frames) >= 2, f"the file camera stalled during a cycle: {run.witness_frames}"
    assert not leaked(baseline, after), leaked(baseline, after)
    return figures


def bad_sources(tmp_path: Path, demo_weights: Path, videos_dir: Path, daemons: list[Daemon]) -> None:
    """Garbage after a real RTSP set-up, a cut DESCRIBE answer, noise, a hung connect and truncated MP4s beside a
    good file camera: every broken source retried, the good one at full rate, no crash, no leak."""
    source = videos_dir / "car-detection.mp4"
    # The sample MP4 keeps its index (moov) at the front: cut at 20 % it still opens and plays 6 s, then ends in
    # the middle of a frame; cut at 10 kB the index itself is cut and no frame can be read.
    partial = truncated_copy(source, tmp_path / "partial.mp4", 0.2)
    headless = truncated_copy(source, tmp_path / "index-cut.mp4", 10_000)
    cap = cv2.VideoCapture(str(partial), cv2.CAP_FFMPEG)
    partial_frames = 0
    while cap.read()[0]:
        partial_frames += 1
    cap.release()
    assert 20 < partial_frames < 150, partial_frames

    quick = {"fps": 5, "open_timeout": 2, "read_timeout": 2, "stale_after": 2, "backoff_max": 1}
    bad = {mode: BadRtspServer(mode, seed=SEED) for mode in BadRtspServer.MODES}
    hang = HangServer()
    before = resources()
    with CrashWatch() as crashes:
        for server in (*bad.values(), hang):
            server.start()
        d = Daemon(build(tmp_path, demo_weights, [
            *({"name": mode, "source": server.url(), **quick} for mode, server in bad.items()),
            {"name": "hang", "source": hang.url(), **quick},
            {"name": "partial", "source": str(partial), "loop": True, "fps": 0, "backoff_max": 1},
            {"name": "index-cut", "source": str(headless), "loop": True, "fps": 5, "backoff_max": 1},
            witness_camera(videos_dir),
        ]))
        daemons.append(d)
        d.start(web=False)
        deadline = time.monotonic() + 20
        while classified(d, "witness") < 3:
            assert time.monotonic() < deadline, d.cameras["witness"].status()
            time.sleep(0.05)
        n0, t0 = classified(d, "witness"), time.monotonic()
        unhealthy = 0
        while time.monotonic() - t0 < 10:
            unhealthy += not d.healthy()
            time.sleep(0.2)
        witness_rate = (classified(d, "witness") - n0) / (time.monotonic() - t0)
        status = {name: cam.status() for name, cam in d.cameras.items()}
        dead = alive(d)
        during = resources()
        d.stop()
        for server in (*bad.values(), hang):
            server.stop()
    after = settle(before, SETTLE)
    connections = {mode: s.connections for mode, s in bad.items()} | {"hang": hang.connections}
    print(f"\nbad sources: {({n: (s['state'], s['reason'], s['reconnects'], s['frames']) for n, s in status.items()})}"
          f"\n  server connections {connections}; witness {witness_rate:.1f} frames/s; "
          f"resources before {before}, during {during}, after {after}; crashes {crashes.crashes}")

    assert not dead, f"threads died: {dead}"
    assert crashes.crashes == 0, crashes.report()
    assert unhealthy == 0, "the daemon reported unhealthy while cameras were failing"
    assert witness_rate >= 4.0, f"the good camera slowed down to {witness_rate:.1f} frames/s: {status['witness']}"
    # every broken network source was retried, none was ever up
    assert "PLAY" in bad["garbage"].requests, bad["garbage"].requests      # the garbage came after a real set-up
    assert "DESCRIBE" in bad["truncate"].requests
    for name in ("garbage", "truncate", "noise", "hang"):
        assert connections[name] >= 2, (name, connections, status[name])
        assert status[name]["reconnects"] >= 1 and status[name]["reason"], status[name]
    for name in ("truncate", "noise", "hang"):
        assert status[name]["frames"] == 0 and status[name]["state"] != "up", status[name]
    # the file cut mid-frame plays what it has and loops; the one without its index is retried with backoff
    assert status["partial"]["state"] == "up" and status["partial"]["frames"] > partial_frames, status["partial"]
    assert classified(d, "partial") > partial_frames
    assert status["index-cut"]["frames"] == 0 and status["index-cut"]["reconnects"] >= 2, status["index-cut"]
    assert not leaked(before, after), leaked(before, after)
