"""Clips delivered (issue 19): the webhook and the MQTT `events` message carry the clip's URL once it is complete,
with a follow-up of kind "clip" when it completes after the event's end; a notification can link it; the status
page's event list shows the thumbnail and plays the clip inline in real headless Chromium (readyState >= 2,
currentTime advances, a seek into the pre-roll lands).

One real daemon: a real RTSP camera (testkit/rtsp, H.264) read by PyAV into its packet ring, the real clip stage,
a real webhook receiver, a real mosquitto, Apprise json:// to a local receiver. Events go in as the alert engine
sends them: stored, then SinkSet.emit("start"/"end") (the clip stage is one of its listeners).
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from monitor.alerts.event import Event
from monitor.config.loader import parse_config
from testkit.chromium import Browser
from testkit.mqtt import Mosquitto, Subscriber
from testkit.rtsp import RtspServer, free_port
from testkit.waiting import wait_until
from testkit.webhook import Receiver
from tests.webapp import Served

PRE, POST, EVENT = 2.0, 1.0, 2.0
PUBLIC = "http://monitor.example:8080"


@pytest.fixture(scope="module")
def server(videos_dir: Path) -> Iterator[RtspServer]:
    with RtspServer(free_port(), ["car-detection"], minutes=1) as s:
        yield s


class Rig:
    def __init__(self, served: Served, hook: Receiver, phone: Receiver, sub: Subscriber) -> None:
        self.served, self.hook, self.phone, self.sub = served, hook, phone, sub


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, demo_weights: Path, server: RtspServer,
        broker: Mosquitto) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("clip-delivery")
    with Receiver("ok") as hook, Receiver("ok", path="/phone") as phone:
        cfg = parse_config({
            "server": {"host": "127.0.0.1", "port": 0},
            "model": {"weights": str(demo_weights), "threads": 1},
            "cameras": [{"name": "cam", "source": server.url("car-detection"), "backend": "pyav",
                         "frame_size": [320, 180], "fps": 1}],
            "clips": {"enabled": True, "pre": PRE, "post": POST, "min_free_bytes": 1,
                      "retain": {"days": 7, "max_bytes": None}},
            "alerts": {"snapshots": str(tmp / "snapshots"), "webhook": {"url": hook.url, "retries": 0},
                       "notify": [{"name": "phone", "urls": [f"json://127.0.0.1:{phone.port}/phone"],
                                   "attach": False, "body": "clip: {clip_url}"}]},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "discovery_prefix": None},
            "events": {"database": str(tmp / "events.db")},
            "node": {"public_url": PUBLIC},
        }, tmp)
        sub = Subscriber(broker.port, ("monitor/events",))
        try:
            with Served(cfg, wait=["cam"]) as served:
                ring = served.app.cameras["cam"].packets
                assert wait_until(lambda: ring.held_seconds() >= PRE, 20), "the packet ring holds no pre-roll"
                yield Rig(served, hook, phone, sub)
        finally:
            sub.close()


def one_event(rig: Rig, seconds: float) -> Event:
    """An event as the alert engine makes one: stored, its start (with the frame) and end emitted."""
    app = rig.served.app
    ev = app.events.insert(Event(camera="cam", rule="r", label="car", score=0.9, peak_score=0.9,
                                 started_at=time.time()))
    app.sinks.emit("start", ev, np.full((180, 320, 3), 90, np.uint8))
    time.sleep(seconds)
    ended = replace(ev, ended_at=time.time())
    app.events.end_event(ev.id, ended.ended_at, 0.9)
    app.sinks.emit("end", ended, None)
    return ended


def messages(docs: list[dict], event_id: int) -> list[tuple[str, str | None]]:
    return [(d["kind"], d["clip_url"]) for d in docs if d.get("id") == event_id]


def test_webhook_and_mqtt_carry_the_clip_url_in_a_follow_up_and_the_page_plays_the_clip(
        rig: Rig, tmp_path: Path) -> None:
    ev = one_event(rig, EVENT)
    url = f"/api/events/{ev.id}/clip.mp4"
    app = rig.served.app
    # the clip completes POST seconds after the end: the end goes out without it, the follow-up carries it
    assert wait_until(lambda: len(messages(rig.hook.requests, ev.id)) == 3, 15), rig.hook.requests
    assert messages(rig.hook.requests, ev.id) == [("start", None), ("end", None), ("clip", url)]
    follow_up = [d for d in rig.hook.requests if d.get("id") == ev.id][-1]
    assert follow_up["ended_at"] == pytest.approx(ev.ended_at, abs=1e-3) and follow_up["camera"] == "cam"
    stored = app.events.get(ev.id)
    assert stored.clip_state == "complete" and stored.clip_seconds >= PRE + EVENT + POST - 0.5

    def mqtt_docs() -> list[dict]:
        return [m.json() for m in rig.sub.on("monitor/events")]
    assert wait_until(lambda: len(messages(mqtt_docs(), ev.id)) == 3, 10), mqtt_docs()
    assert messages(mqtt_docs(), ev.id) == [("start", None), ("end", None), ("clip", url)]

    # the notification (at the start) links where the clip will be
    assert rig.phone.wait_for(1, 10)
    assert [r["message"] for r in rig.phone.requests] == [f"clip: {PUBLIC}{url}"]

    # an end sent once the clip is complete carries the URL itself (a late end, e.g. after a reload)
    app.sinks.emit("end", ev, None)
    assert wait_until(lambda: len(messages(rig.hook.requests, ev.id)) == 4, 10)
    assert messages(rig.hook.requests, ev.id)[-1] == ("end", url)

    # -- the page: the event's thumbnail and its clip, played by a real Chromium
    with Browser(tmp_path, flags=("--autoplay-policy=no-user-gesture-required",)) as browser:
        page = browser.page(f"http://127.0.0.1:{rig.served.port}/")
        selector = f'li[data-event="{ev.id}"]'
        assert page.wait(f"!!document.querySelector('{selector} video.clip')", 15), (
            "no clip in the event list", page.evaluate("document.getElementById('events').outerHTML"),
            page.evaluate("fetch('/api/events?limit=12').then((r) => r.text())"), page.errors())
        assert page.evaluate(f"document.querySelector('{selector} video.clip').getAttribute('src')") == url
        assert page.wait(f"document.querySelector('{selector} img.thumb')?.naturalWidth > 0", 10)
        result = page.play_and_seek(f"{selector} video.clip", PRE / 2)
        assert result["error"] is None, result
        assert result["ready"] >= 2, result
        assert result["t1"] - result["t0"] >= 0.5, result                  # it plays
        assert abs(result["seekedTo"] - PRE / 2) < 0.3, result             # a seek into the pre-roll lands
        assert result["readyAfterSeek"] >= 2, result
        assert result["duration"] == pytest.approx(stored.clip_seconds, abs=0.5), result
        assert not page.errors(), page.errors()
