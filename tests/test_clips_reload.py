"""Clips turned on and off by a reload (issue 19): a daemon started without clips gets its clip stage at the
reload that enables them (the next event has a complete clip, `has_clip`, the webhook's "clip" follow-up), takes
pre/post changes live without restarting its camera, and at the reload that turns clips off the clip being
written ends playable (or failed, no file) and no recorder thread or clip file descriptor is left.

One real daemon for the module (a real RTSP camera from testkit/rtsp read by PyAV, the real sinks with a real
webhook receiver on 127.0.0.1); the tests run in order on it and reload it in process (Daemon.reload, as SIGHUP
does through monitor.daemon._reload). Events go in as the alert engine sends them: stored, then SinkSet.emit.
"""
from __future__ import annotations

import copy
import logging
import os
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from monitor.alerts.event import Event
from monitor.config.loader import parse_config
from testkit.rtsp import RtspServer, free_port
from testkit.waiting import wait_until
from testkit.webhook import Receiver
from tests.webapp import Served, request

PRE, POST, EVENT = 1.0, 0.5, 1.0


class Rig:
    def __init__(self, served: Served, hook: Receiver, data: dict[str, Any], tmp: Path) -> None:
        self.served, self.hook, self.data, self.tmp = served, hook, data, tmp

    def reload(self, clips: dict[str, Any]) -> None:
        data = copy.deepcopy(self.data)
        data["clips"] = {**data["clips"], **clips}
        self.served.app.reload(parse_config(data, self.tmp))


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, demo_weights: Path, videos_dir: Path) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("clips-reload")
    with RtspServer(free_port(), ["car-detection"], minutes=1) as server, Receiver("ok") as hook:
        data = {
            "server": {"host": "127.0.0.1", "port": 0},
            "model": {"weights": str(demo_weights), "threads": 1},
            "cameras": [{"name": "cam", "source": server.url("car-detection"), "backend": "pyav",
                         "frame_size": [320, 180], "fps": 1}],
            "clips": {"enabled": False, "pre": PRE, "post": POST, "min_free_bytes": 1,
                      "retain": {"days": 7, "max_bytes": None}},
            "alerts": {"snapshots": None, "webhook": {"url": hook.url, "retries": 0}},
            "events": {"database": str(tmp / "events.db")},
        }
        with Served(parse_config(data, tmp), wait=["cam"]) as served:
            yield Rig(served, hook, data, tmp)


def start_event(rig: Rig) -> Event:
    app = rig.served.app
    ev = app.events.insert(Event(camera="cam", rule="r", label="car", score=0.9, peak_score=0.9,
                                 started_at=time.time()))
    app.sinks.emit("start", ev, np.full((180, 320, 3), 90, np.uint8))
    return ev


def end_event(rig: Rig, ev: Event) -> Event:
    ended = replace(ev, ended_at=time.time())
    rig.served.app.events.end_event(ev.id, ended.ended_at, 0.9)
    rig.served.app.sinks.emit("end", ended, None)
    return ended


def api_event(rig: Rig, event_id: int) -> dict:
    docs = request(rig.served.port, "GET", "/api/events").json()["events"]
    return next(d for d in docs if d["id"] == event_id)


def probe_seconds(path: Path) -> float:
    """The duration ffprobe reads by decoding the whole file (a clip cut short fails here)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=codec_name,nb_read_frames:format=duration", "-of", "default=nw=1", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    fields = dict(line.split("=", 1) for line in out.stdout.split())
    assert fields["codec_name"] == "h264" and int(fields["nb_read_frames"]) > 0, fields
    return float(fields["duration"])


def clip_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("clips-") and t.is_alive()]


def clip_fds(root: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            found.append(target)
    return found


def test_a_reload_turns_clips_on_and_the_next_event_gets_a_complete_clip(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    app = rig.served.app
    assert app.clips is None and "clips" not in app.sinks.names and app.cameras["cam"].packets is None
    before = end_event(rig, start_event(rig))
    assert wait_until(lambda: len([d for d in rig.hook.requests if d.get("id") == before.id]) == 2, 10)
    assert app.events.get(before.id).clip_state == "none"
    assert api_event(rig, before.id)["has_clip"] is False

    with caplog.at_level(logging.INFO, logger="monitor"):
        rig.reload({"enabled": True})
    assert "clips: on for cameras cam" in caplog.messages
    assert app.clips is not None and "clips" in app.sinks.names and app.sinks.clips
    assert sorted(clip_threads()) == ["clips-cam", "clips-retention"]
    ring = app.cameras["cam"].packets
    assert ring is not None, "the restarted camera has no packet ring"
    assert wait_until(lambda: ring.held_seconds() >= PRE, 20), "the packet ring holds no pre-roll"

    ev = start_event(rig)
    time.sleep(EVENT)
    ev = end_event(rig, ev)
    assert wait_until(lambda: app.events.get(ev.id).clip_state == "complete", 15), app.events.get(ev.id)
    row = app.events.get(ev.id)
    assert probe_seconds(app.clips.root / row.clip) >= PRE + EVENT + POST - 0.5
    doc = api_event(rig, ev.id)
    url = f"/api/events/{ev.id}/clip.mp4"
    assert doc["has_clip"] is True and doc["clip"] == url
    assert request(rig.served.port, "GET", url).status == 200
    # the clip completes POST after the end: the webhook gets the follow-up with its URL
    assert wait_until(lambda: any(d.get("id") == ev.id and d["kind"] == "clip" for d in rig.hook.requests), 10)
    assert [(d["kind"], d["clip_url"]) for d in rig.hook.requests if d.get("id") == ev.id][-1] == ("clip", url)


def test_pre_and_post_change_live_without_restarting_the_camera(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    app = rig.served.app
    cam, clips = app.cameras["cam"], app.clips
    with caplog.at_level(logging.INFO, logger="monitor"):
        rig.reload({"enabled": True, "pre": 3.0, "post": 0.25, "retain": {"days": 3, "max_bytes": None}})
    assert app.cameras["cam"] is cam and app.clips is clips, "a live clip setting restarted the camera or stage"
    assert cam.packets is not None and cam.packets.pre == 3.0 and cam.cfg.clips.post == 0.25
    assert app.clips._settings("cam").post == 0.25 and app.clips.config.clips.retain.days == 3
    line = [m for m in caplog.messages if m.startswith("clips: applied live")]
    assert line and "cam pre 1.0 -> 3.0, post 0.5 -> 0.25" in line[0] and "retain.days 7.0 -> 3.0" in line[0], \
        caplog.messages


def test_a_reload_turning_clips_off_mid_clip_leaves_it_playable_and_no_thread(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    app = rig.served.app
    root = app.clips.root
    ev = start_event(rig)
    # recording: the pre-roll is written into the .part at once
    assert wait_until(lambda: app.events.get(ev.id).clip_state == "recording"
                      and any(p.stat().st_size > 0 for p in root.glob("cam/*.part")), 10)
    time.sleep(1.0)
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger="monitor"):
        rig.reload({"enabled": False})
    took = time.monotonic() - t0
    assert "clips: off" in caplog.messages and took < 6.0, took
    assert app.clips is None and "clips" not in app.sinks.names and app.cameras["cam"].packets is None
    assert clip_threads() == [] and clip_fds(root) == []
    row = app.events.get(ev.id)
    assert row.clip_state in ("complete", "failed"), row
    if row.clip_state == "complete":        # cut where the reload found it: it plays to its end
        assert probe_seconds(root / row.clip) > 0.5
    else:
        assert row.clip is None
    assert list(root.glob("cam/*.part")) == []
    # the event, still open, ends after the reload: its end message carries the clip it has (or none)
    end_event(rig, ev)
    assert wait_until(lambda: any(d.get("id") == ev.id and d["kind"] == "end" for d in rig.hook.requests), 10)
    end = [d for d in rig.hook.requests if d.get("id") == ev.id and d["kind"] == "end"][-1]
    assert end["clip_url"] == (f"/api/events/{ev.id}/clip.mp4" if row.clip_state == "complete" else None), end
    later = end_event(rig, start_event(rig))
    assert wait_until(lambda: len([d for d in rig.hook.requests if d.get("id") == later.id]) == 2, 10)
    assert app.events.get(later.id).clip_state == "none"


def test_which_clip_keys_restart_a_camera_and_the_on_off_lines(tmp_path: Path) -> None:
    from monitor.clips.stage import on_off_line, restart_view

    def cams(clips: dict[str, Any], own: dict[str, Any] | None = None) -> list[Any]:
        return parse_config({"model": {"weights": str(tmp_path / "w.pt")}, "clips": clips,
                             "cameras": [{"name": "a", "source": "rtsp://127.0.0.1:1/a", "backend": "pyav",
                                          "clips": own or {}},
                                         {"name": "b", "source": "rtsp://127.0.0.1:1/b", "backend": "pyav"}],
                             "events": {"database": str(tmp_path / "e.db")}}, tmp_path).cameras
    base = cams({"enabled": True, "pre": 2, "post": 1, "max_length": 60})
    live = cams({"enabled": True, "pre": 4, "post": 3, "max_length": 30, "max_preroll_bytes": "1MB"})
    assert base[0] != live[0] and restart_view(base[0]) == restart_view(live[0])
    for other in (cams({"enabled": False, "pre": 2, "post": 1, "max_length": 60}),
                  cams({"enabled": True, "pre": 2, "post": 1, "max_length": 60}, own={"enabled": False})):
        assert restart_view(base[0]) != restart_view(other[0]), "turning clips on/off must restart the camera"
    assert restart_view(None) is None
    assert on_off_line([], ["a", "b"]) == "clips: on for cameras a, b"
    assert on_off_line(["a", "b"], ["a"]) == "clips: on for cameras a; off for b"
    assert on_off_line(["a"], []) == "clips: off"
    assert on_off_line(["a"], ["a"]) is None
