"""The assembled daemon (in process, no web server) with cameras that work, fail and come back: one camera's
trouble never stops the others. Real footage, a real RTSP server (GStreamer), the demo model."""
from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path
from typing import Callable

import pytest
from prometheus_client import generate_latest

from monitor import daemon as daemon_module
from monitor.config.loader import parse_config
from monitor.config.types import Config
from monitor.daemon import Daemon

from tests.daemon_helpers import classified
from testkit.waiting import wait_until
from testkit.rtsp import RtspServer
from testkit.faults import HangServer


def connected(d: Daemon, camera: str) -> float | None:
    return d.metrics.registry.get_sample_value("monitor_camera_connected", {"camera": camera})


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(tmp_path: Path, weights: Path, cameras: list[dict]) -> Config:
    return parse_config({
        "server": {"port": 0},
        "model": {"weights": str(weights), "threads": 2},
        "cameras": cameras,
        "events": {"database": str(tmp_path / "events.db")},
    }, tmp_path)


def state(d: Daemon, camera: str) -> str:
    return d.cameras[camera].status()["state"]


# ---------------------------------------------------------------------------------------------------------


def test_file_camera_runs_while_missing_device_and_unreachable_url_are_down(
        tmp_path: Path, demo_weights: Path, videos_dir: Path, daemons: list[Daemon],
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    port = closed_port()
    d = Daemon(build(tmp_path, demo_weights, [
        {"name": "file", "source": str(videos_dir / "car-detection.mp4"), "loop": True, "fps": 5},
        {"name": "usb", "source": "/dev/video57"},
        {"name": "ipcam", "source": f"rtsp://user:secret@127.0.0.1:{port}/x", "open_timeout": 2,
         "backoff_max": 1},
    ]))
    daemons.append(d)
    d.start(web=False)

    assert wait_until(lambda: classified(d, "file") >= 3, 10), d.cameras["file"].status()
    assert wait_until(lambda: state(d, "usb") == "down" and state(d, "ipcam") == "down"
                      and d.cameras["ipcam"].status()["reconnects"] >= 1, 10), \
        [c.status() for c in d.cameras.values()]
    # the file camera keeps being classified while the other two keep failing
    before = classified(d, "file")
    time.sleep(1.5)
    assert classified(d, "file") >= before + 5
    assert (classified(d, "usb"), classified(d, "ipcam")) == (0, 0)

    statuses = {name: cam.status() for name, cam in d.cameras.items()}
    assert statuses["file"]["state"] == "up" and statuses["file"]["reconnects"] == 0
    assert statuses["usb"]["reason"] == "device /dev/video57 not found"
    assert statuses["ipcam"]["reason"] == f"cannot open rtsp://***@127.0.0.1:{port}/x: [Errno 111] Connection refused"
    assert statuses["ipcam"]["source"] == f"rtsp://***@127.0.0.1:{port}/x"
    assert (connected(d, "file"), connected(d, "usb"), connected(d, "ipcam")) == (1, 0, 0)
    assert d.status_line().startswith("1/3 cameras up")
    assert d.ready() and d.healthy()        # down cameras are not a hung daemon
    # the reasons are logged, once per reason, with the credentials redacted
    down_lines = [r.getMessage() for r in caplog.records if "down:" in r.getMessage()]
    assert any("camera usb: down: device /dev/video57 not found" in m for m in down_lines), down_lines
    assert sum(1 for m in down_lines if m.startswith("camera ipcam: down: cannot open rtsp://***@")) == 1, down_lines
    d.stop()

    out, err = capfd.readouterr()
    exposition = generate_latest(d.metrics.registry).decode()
    for where, text in (("status", json.dumps(statuses)), ("log", caplog.text), ("stdout", out),
                        ("stderr", err), ("metrics", exposition), ("status line", d.status_line())):
        assert "secret" not in text, f"password leaked into the {where}"
    assert "user:" not in caplog.text


def test_rtsp_cameras_go_down_and_come_back_while_file_camera_keeps_running(
        tmp_path: Path, demo_weights: Path, videos_dir: Path, daemons: list[Daemon],
        rtsp_server: Callable[..., RtspServer]) -> None:
    server = rtsp_server(["car-detection", "bottle-detection"], minutes=1)
    live = {"rtsp-cars": server.url("car-detection"), "rtsp-bottles": server.url("bottle-detection", "user:s3cr3t")}
    d = Daemon(build(tmp_path, demo_weights, [
        *({"name": name, "source": url, "fps": 5, "open_timeout": 3, "read_timeout": 2, "stale_after": 2,
           "backoff_max": 1} for name, url in live.items()),
        {"name": "file", "source": str(videos_dir / "one-by-one-person-detection.mp4"), "loop": True, "fps": 5},
    ]))
    daemons.append(d)
    d.start(web=False)

    assert wait_until(lambda: all(classified(d, name) >= 3 for name in [*live, "file"]), 15), \
        [c.status() for c in d.cameras.values()]

    # the server dies: both RTSP cameras go down ...
    server.kill()
    killed = time.monotonic()
    assert wait_until(lambda: all(state(d, name) == "down" for name in live), 8), \
        [d.cameras[name].status() for name in live]
    assert time.monotonic() - killed < 6
    time.sleep(0.3)                      # a frame taken just before the failure may still be in the worker
    during = {name: classified(d, name) for name in [*live, "file"]}
    time.sleep(2.0)
    # ... and stay down without results, while the file camera keeps being classified
    for name in live:
        assert classified(d, name) == during[name], d.cameras[name].status()
        assert d.cameras[name].status()["reason"], d.cameras[name].status()
        assert connected(d, name) == 0
    assert classified(d, "file") >= during["file"] + 6
    assert state(d, "file") == "up" and d.cameras["file"].status()["reconnects"] == 0

    # the server comes back on the same port: the RTSP cameras are classified again
    server.start()
    assert wait_until(lambda: all(classified(d, name) >= during[name] + 3 for name in live), 15), \
        [d.cameras[name].status() for name in live]
    for name in live:
        st = d.cameras[name].status()
        assert st["state"] == "up" and st["reconnects"] >= 1 and connected(d, name) == 1
    assert d.cameras["file"].status()["reconnects"] == 0
    assert "s3cr3t" not in json.dumps([c.status() for c in d.cameras.values()])


def test_camera_hung_in_open_does_not_hold_up_other_cameras(tmp_path: Path, demo_weights: Path, videos_dir: Path,
                                                            daemons: list[Daemon]) -> None:
    """A camera whose server accepts the connection and never answers blocks in OpenCV's open for its whole
    open_timeout. Other cameras must open meanwhile: here a file camera is added (reload) while the hung open is
    in progress, as a reconnecting camera would open."""
    with HangServer() as hung:
        hung_cam = {"name": "hung", "source": f"rtsp://127.0.0.1:{hung.port}/x", "open_timeout": 10}
        d = Daemon(build(tmp_path, demo_weights, [hung_cam]))
        daemons.append(d)
        d.start(web=False)
        assert hung.accepted.wait(5), "the camera never connected to the hung server"
        time.sleep(0.2)
        assert state(d, "hung") == "connecting"
        d.reload(build(tmp_path, demo_weights, [
            hung_cam, {"name": "file", "source": str(videos_dir / "car-detection.mp4"), "loop": True, "fps": 5}]))
        t0 = time.monotonic()
        up = wait_until(lambda: classified(d, "file") >= 3, 4)
        waited = time.monotonic() - t0
        assert state(d, "hung") == "connecting", "the hung open ended early: the test did not test anything"
        assert up, (f"file camera not classified {waited:.1f} s after it was added, while another camera hangs "
                    f"in open: {d.cameras['file'].status()}")
        d.stop()


def test_camera_blocked_in_its_bounded_open_is_not_a_hung_daemon(tmp_path: Path, demo_weights: Path,
                                                                 daemons: list[Daemon],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """healthy() decides whether the systemd watchdog gets pinged. A capture thread inside OpenCV's open cannot
    beat; that open is bounded by the camera's open_timeout, which the config allows to exceed HEARTBEAT_FRESH.
    Such a camera is down, not hung: the daemon must stay healthy (else the watchdog stops being pinged and, with
    long timeouts or several cameras, systemd kills a daemon that works). HEARTBEAT_FRESH (15 s) is scaled down
    to 2 s here so that the test takes seconds; the camera's open_timeout (6 s) exceeds it as 20 s would 15 s."""
    monkeypatch.setattr(daemon_module, "HEARTBEAT_FRESH", 2.0)
    with HangServer() as hung:
        d = Daemon(build(tmp_path, demo_weights, [
            {"name": "hung", "source": f"rtsp://127.0.0.1:{hung.port}/x", "open_timeout": 6}]))
        daemons.append(d)
        d.start(web=False)
        assert hung.accepted.wait(5), "the camera never connected to the hung server"
        t0 = time.monotonic()
        unhealthy_after = None
        while time.monotonic() - t0 < 3.5:
            if not d.healthy() and unhealthy_after is None:
                unhealthy_after = time.monotonic() - t0
            time.sleep(0.1)
        assert state(d, "hung") == "connecting", "the open ended early: the test did not test anything"
        assert d.worker.heartbeat > time.monotonic() - 1.0       # the rest of the daemon is alive
        assert unhealthy_after is None, (f"daemon reported unhealthy {unhealthy_after:.1f} s into a camera's "
                                         f"6 s open_timeout")
        d.stop()


def test_reloaded_camera_stays_connected_when_its_old_capture_thread_ends_late(
        tmp_path: Path, demo_weights: Path, videos_dir: Path, daemons: list[Daemon],
        rtsp_server: Callable[..., RtspServer]) -> None:
    """SIGHUP changes a camera whose stream has stalled: its old capture thread is still blocked in OpenCV's read
    when reload() replaces it (stop() gives up after 2 s). When that read finally times out, the old thread must
    not touch the metrics of the new camera of the same name: monitor_camera_connected stays 1."""
    server = rtsp_server(["car-detection"], minutes=1)
    stalled = {"name": "cam", "source": server.url("car-detection"), "fps": 5, "open_timeout": 3,
               "read_timeout": 4, "stale_after": 4, "backoff_max": 1}
    d = Daemon(build(tmp_path, demo_weights, [stalled]))
    daemons.append(d)
    d.start(web=False)
    assert wait_until(lambda: classified(d, "cam") >= 3, 15), d.cameras["cam"].status()
    old = d.cameras["cam"]
    server.pause()                          # connection open, nothing flows: the read blocks up to 4 s
    try:
        time.sleep(0.5)
        d.reload(build(tmp_path, demo_weights, [
            {"name": "cam", "source": str(videos_dir / "car-detection.mp4"), "loop": True, "fps": 5}]))
        assert old.is_alive(), "the old capture thread already ended: the test did not test anything"
        before = classified(d, "cam")
        assert wait_until(lambda: classified(d, "cam") >= before + 3 and connected(d, "cam") == 1, 10), \
            d.cameras["cam"].status()
        assert wait_until(lambda: not old.is_alive(), 8), "the old capture thread never ended"
        time.sleep(0.3)
        assert state(d, "cam") == "up"
        assert connected(d, "cam") == 1, "the old camera's thread reset the new camera's connected gauge"
    finally:
        server.resume()


def test_reload_forgets_a_removed_camera_result_and_metric_series(tmp_path: Path, demo_weights: Path,
                                                                  videos_dir: Path, daemons: list[Daemon]) -> None:
    """A camera removed by reload leaves nothing behind: no last frame on the ResultBoard (memory, pages), no metric
    series (a zeroed one would be exported for ever and read as a camera that is down)."""
    cams = [{"name": name, "source": str(videos_dir / "car-detection.mp4"), "loop": True, "fps": 5}
            for name in ("keep", "gone")]
    d = Daemon(build(tmp_path, demo_weights, cams))
    daemons.append(d)
    d.start(web=False)
    assert wait_until(lambda: classified(d, "keep") >= 2 and classified(d, "gone") >= 2, 15)
    d.reload(build(tmp_path, demo_weights, cams[:1]))
    time.sleep(0.5)                                 # a frame of "gone" classified meanwhile must not bring it back
    assert d.results.get("gone") is None and d.results.cameras() == ["keep"]
    exported = generate_latest(d.metrics.registry).decode()
    assert 'camera="gone"' not in exported, [line for line in exported.splitlines() if '"gone"' in line]
    before = classified(d, "keep")
    assert wait_until(lambda: classified(d, "keep") >= before + 2, 5) and connected(d, "keep") == 1
    assert d.results.get("keep") is not None
    d.stop()
