"""Alerts through the whole daemon: real footage, the deterministic demo model, real SQLite, a real webhook
receiver on 127.0.0.1, a real command and real JPEG snapshots.

The AlertEngine state machine is unit-tested with a fake clock in test_alerts.py; here the point is the
pipeline: capture thread -> inference worker -> alert engine -> store and sinks, on real time.
"""
from __future__ import annotations

import collections
import sqlite3
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from monitor.inference.classifier import Classifier
from monitor.config.loader import parse_config
from monitor.config.types import Config
from monitor.daemon import Daemon

from tests.daemon_helpers import classified
from testkit.waiting import wait_until
from testkit.footage import read_video_frames
from testkit.webhook import Receiver

CARS, BOTTLES = "car-detection", "bottle-detection"
MIN_SCORE = 0.08         # the watched class's score on the first seconds of CARS is far above this
ABSENT_BELOW = 0.05      # ... and on BOTTLES far below
RULE = "watch"


class Footage:
    """What the untrained demo model sees in the sample videos (measured, not assumed)."""

    def __init__(self, label: str, flicker: float, cars: Path, bottles: Path) -> None:
        self.label = label        # top-1 class of the demo model on the first seconds of CARS
        self.flicker = flicker    # a min_score at which that class comes and goes from frame to frame on CARS
        self.cars = cars
        self.bottles = bottles


@pytest.fixture(scope="module")
def footage(demo_weights: Path, videos_dir: Path) -> Footage:
    clf = Classifier(demo_weights)
    # The first 75 frames (6 s at 12.5 fps) are what a camera starting on CARS shows first.
    head = read_video_frames(CARS, 75)
    probs = clf.probabilities(head, ["center"] * len(head))
    label_index = collections.Counter(probs.argmax(axis=1).tolist()).most_common(1)[0][0]
    label = clf.labels[label_index]
    watched = probs[:, label_index]
    # Preconditions of the tests below, checked so that a changed demo model fails here with a clear message
    # instead of as a timeout further down.
    assert watched[:60].min() >= MIN_SCORE, (label, watched[:60].round(3))
    bottles = clf.probabilities(read_video_frames(BOTTLES, 24, stride=45), ["center"] * 24)[:, label_index]
    assert bottles.max() < ABSENT_BELOW, (label, bottles.round(3))
    flicker = float(np.median(watched))
    hits = watched >= flicker
    changes = int(np.sum(hits[1:] != hits[:-1]))
    assert changes >= 10, f"{label!r} at min_score {flicker:.3f} changes only {changes} times in 6 s"
    return Footage(label, flicker, videos_dir / f"{CARS}.mp4", videos_dir / f"{BOTTLES}.mp4")


def sink_count(d: Daemon, metric: str, sink: str) -> float:
    return d.metrics.registry.get_sample_value(metric, {"sink": sink}) or 0.0


def build(tmp_path: Path, weights: Path, cameras: list[dict], rule: dict, alerts: dict) -> Config:
    return parse_config({
        "server": {"port": 0},
        "model": {"weights": str(weights), "threads": 2},
        "cameras": cameras,
        "watchlist": [{"name": RULE, **rule}],
        "alerts": alerts,
        "events": {"database": str(tmp_path / "events.db")},
    }, tmp_path)


# ---------------------------------------------------------------------------------------------------------


def test_event_starts_once_reaches_every_sink_ends_and_obeys_cooldown(
        tmp_path: Path, demo_weights: Path, footage: Footage, daemons: list[Daemon]) -> None:
    end_after, cooldown, min_frames = 5.0, 3.0, 3
    command_out = tmp_path / "command.txt"
    script = "import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + '\\n')"
    rule = {"classes": [footage.label], "min_score": MIN_SCORE, "min_frames": min_frames,
            "end_after": end_after, "cooldown": cooldown}

    def config(cars_source: Path, hook_url: str) -> Config:
        return build(tmp_path, demo_weights, [
            {"name": "cars", "source": str(cars_source), "loop": True, "fps": 10},
            {"name": "bottles", "source": str(footage.bottles), "loop": True, "fps": 5},
        ], rule, {
            "snapshots": str(tmp_path / "snapshots"),
            "webhook": {"url": hook_url, "timeout": 2, "retries": 1},
            "command": [sys.executable, "-c", script, str(command_out), "{camera}", "{label}", "{score}",
                        "{event_id}"],
        })

    def command_lines() -> list[str]:
        return command_out.read_text().splitlines() if command_out.exists() else []

    with Receiver("ok") as hook:
        d = Daemon(config(footage.cars, hook.url))
        daemons.append(d)
        d.start(web=False)

        # -- the class shows up on "cars": one event, in SQLite and at every sink
        rows = wait_until(lambda: d.events.query(), 15)
        assert len(rows) == 1, rows
        first = rows[0]
        assert (first.camera, first.rule, first.label, first.ended_at) == ("cars", RULE, footage.label,
                                                                                       None)
        assert first.score >= MIN_SCORE and first.peak_score >= first.score
        assert hook.wait_for(1, 5), "webhook not called"
        assert wait_until(command_lines, 5), "command not run"
        assert wait_until(lambda: getattr(d.events.get(first.id), "snapshot", None), 5), "snapshot path not stored"

        # it keeps being seen for many more frames: still one event, not one per frame
        seen = classified(d, "cars")
        assert wait_until(lambda: classified(d, "cars") >= seen + 15, 5)
        assert len(d.events.query()) == 1
        assert d.alerts.active("cars") == [footage.label] and d.alerts.active("bottles") == []
        assert d.metrics.registry.get_sample_value("monitor_alerts_total",
                                                   {"rule": RULE, "label": footage.label}) == 1
        assert hook.hits == 1 and len(command_lines()) == 1

        row = d.events.get(first.id)
        body = hook.requests[0]
        assert body["kind"] == "start"
        assert body["node"] == d.config.node.name and body["node"]      # which daemon sent it (default: host name)
        assert {k: body[k] for k in ("id", "camera", "rule", "label", "ended_at")} == {
            "id": first.id, "camera": "cars", "rule": RULE, "label": footage.label, "ended_at": None}
        assert body["score"] == pytest.approx(first.score, abs=1e-6)
        assert body["started_at"] == pytest.approx(first.started_at, abs=1e-3)
        assert body["snapshot"] == row.snapshot
        assert hook.headers[0]["Content-Type"] == "application/json"
        assert command_lines() == [f"cars {footage.label} {first.score:.3f} {first.id}"]
        snapshot = cv2.imread(row.snapshot)
        assert snapshot is not None, row.snapshot
        assert snapshot.shape == (432, 768, 3)
        assert Path(row.snapshot).parent == tmp_path / "snapshots" / "cars"

        # -- the class goes away: "cars" now shows the bottles video; the event ends after end_after
        t_reload = time.time()
        d.reload(config(footage.bottles, hook.url))
        ended = wait_until(lambda: d.events.get(first.id).ended_at, end_after + 6)
        assert ended, "event did not end"
        assert ended >= t_reload and ended - first.started_at >= end_after
        assert d.alerts.active("cars") == []
        assert hook.wait_for(2, 5), "no webhook for the end of the event"
        end_body = hook.requests[1]
        assert (end_body["kind"], end_body["id"]) == ("end", first.id)
        assert end_body["ended_at"] == pytest.approx(ended, abs=1e-3)
        assert end_body["peak_score"] >= end_body["score"]

        # -- the class comes back at once: held back by the cooldown, then alerted as soon as it expires
        t_back = time.time()
        d.reload(config(footage.cars, hook.url))
        hits_in_cooldown: set[float] = set()
        label_index = d.classifier.labels.index(footage.label)
        while time.time() < ended + cooldown - 0.1:
            result = d.results.get("cars")
            if result is not None and result.classified_at > t_back \
                    and result.classified_at < ended + cooldown \
                    and result.probabilities[label_index] >= MIN_SCORE:
                hits_in_cooldown.add(result.classified_at)
            assert len(d.events.query()) == 1, "a second event started inside the cooldown"
            time.sleep(0.02)
        # the class really was there: the cooldown, not its absence, held the alert back
        assert len(hits_in_cooldown) >= min_frames, sorted(hits_in_cooldown)
        rows = wait_until(lambda: d.events.query() if len(d.events.query()) == 2 else None, 5)
        assert rows, "no event after the cooldown although the class is present"
        second = rows[0]
        assert second.id != first.id and second.camera == "cars"
        assert second.started_at >= ended + cooldown
        assert second.started_at - (ended + cooldown) < 1.5   # hits counted during the cooldown
        assert wait_until(lambda: len(command_lines()) == 2, 5)
        d.stop()

    # -- after shutdown the SQLite file itself holds both events, closed, and nothing for "bottles"
    with sqlite3.connect(f"file:{tmp_path / 'events.db'}?mode=ro", uri=True) as db:
        stored = db.execute("SELECT camera, rule, label, score, peak_score, started_at, ended_at, snapshot"
                            " FROM events ORDER BY id").fetchall()
    assert [(r[0], r[1], r[2]) for r in stored] == [("cars", RULE, footage.label)] * 2
    for _, _, _, score, peak, started, ended_at, snap in stored:
        assert score >= MIN_SCORE and peak >= score
        assert ended_at is not None and ended_at >= started
        assert snap and cv2.imread(snap) is not None
    assert stored[0][6] == pytest.approx(ended)


def test_hung_webhook_does_not_slow_classification(tmp_path: Path, demo_weights: Path, footage: Footage,
                                                   daemons: list[Daemon]) -> None:
    """Same video, every frame classified at its native 12.5 fps, an event every second or so: the classification
    rate with a webhook that never answers matches the rate with a healthy one; the failures are counted."""
    native_fps = 12.5
    window = 4.0

    def measure(mode: str, sub: str) -> tuple[float, Daemon, Receiver]:
        folder = tmp_path / sub
        folder.mkdir()
        with Receiver(mode) as hook:
            d = Daemon(build(folder, demo_weights,
                             [{"name": "cars", "source": str(footage.cars), "loop": True, "fps": 0}],
                             {"classes": [footage.label], "min_score": footage.flicker, "min_frames": 1,
                              "end_after": 0.05, "cooldown": 0},
                             {"webhook": {"url": hook.url, "timeout": 1, "retries": 0}, "queue_size": 4}))
            daemons.append(d)
            d.start(web=False)
            assert wait_until(lambda: classified(d, "cars") >= 5, 10), d.cameras["cars"].status()
            alerts0 = len(d.events.query(limit=10_000))
            n0, t0 = classified(d, "cars"), time.monotonic()
            time.sleep(window)
            n1, t1 = classified(d, "cars"), time.monotonic()
            events = len(d.events.query(limit=10_000)) - alerts0
            assert events >= 3, f"{mode}: only {events} events in {window} s: the webhook was hardly used"
            if mode == "hang":
                # deliveries pile up behind the hung one: the failure and the drops are counted
                assert wait_until(lambda: sink_count(d, "monitor_sink_failures_total", "webhook") >= 1, 3)
                assert sink_count(d, "monitor_sink_dropped_total", "webhook") >= 1
                assert hook.hits >= 1
            d.stop()
            return (n1 - n0) / (t1 - t0), d, hook

    healthy, d_ok, hook_ok = measure("ok", "healthy")
    hung, _, _ = measure("hang", "hung")
    assert healthy >= 0.8 * native_fps, f"healthy run classified only {healthy:.1f} frames/s"
    assert abs(hung - healthy) <= 0.2 * healthy, f"hung webhook: {hung:.1f} frames/s vs healthy {healthy:.1f}"
    assert hook_ok.hits >= 3 and sink_count(d_ok, "monitor_sink_failures_total", "webhook") == 0
    assert sink_count(d_ok, "monitor_sink_dropped_total", "webhook") == 0
    # the healthy receiver got every start and end, as JSON
    assert {r["kind"] for r in hook_ok.requests} == {"start", "end"}
    assert all(r["camera"] == "cars" and r["label"] == footage.label for r in hook_ok.requests)


def test_reload_keeps_the_open_event_of_an_unchanged_rule(tmp_path: Path, demo_weights: Path, footage: Footage,
                                                           daemons: list[Daemon]) -> None:
    """SIGHUP adds an unrelated rule and points the webhook elsewhere while an event is open: the event stays
    open (same row, no end, no second start anywhere); its end later goes to the new webhook."""
    end_after = 2.0
    rule = {"name": RULE, "classes": [footage.label], "min_score": MIN_SCORE, "min_frames": 3,
            "end_after": end_after, "cooldown": 30}

    def config(source: Path, rules: list[dict], hook_url: str) -> Config:
        return parse_config({
            "server": {"port": 0},
            "model": {"weights": str(demo_weights), "threads": 2},
            "cameras": [{"name": "cars", "source": str(source), "loop": True, "fps": 10}],
            "watchlist": rules,
            "alerts": {"webhook": {"url": hook_url, "timeout": 2, "retries": 0}},
            "events": {"database": str(tmp_path / "events.db")},
        }, tmp_path)

    unrelated = {"name": "dogs", "classes": ["dog"], "min_score": 0.9}
    with Receiver("ok") as hook1, Receiver("ok") as hook2:
        d = Daemon(config(footage.cars, [rule], hook1.url))
        daemons.append(d)
        d.start(web=False)
        rows = wait_until(lambda: d.events.query(), 15)
        assert len(rows) == 1 and rows[0].ended_at is None, rows
        assert hook1.wait_for(1, 5)

        d.reload(config(footage.cars, [rule, unrelated], hook2.url))
        seen = classified(d, "cars")
        assert wait_until(lambda: classified(d, "cars") >= seen + 20, 10)   # 2 s of hits after the reload
        assert d.events.query() == rows, "the open event was ended or another one started"
        assert d.alerts.active("cars") == [footage.label]
        assert d.metrics.registry.get_sample_value("monitor_alerts_total", {"rule": RULE, "label": footage.label}) == 1
        assert (hook1.hits, hook2.hits) == (1, 0), (hook1.requests, hook2.requests)

        # the class goes away: the event ends, once, and its end reaches the new webhook
        d.reload(config(footage.bottles, [rule, unrelated], hook2.url))
        assert wait_until(lambda: d.events.get(rows[0].id).ended_at, end_after + 6), "event did not end"
        assert hook2.wait_for(1, 5), "no webhook for the end of the event"
        assert [(r["kind"], r["id"]) for r in hook2.requests] == [("end", rows[0].id)]
        assert hook1.hits == 1 and len(d.events.query()) == 1
        d.stop()
