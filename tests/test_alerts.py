"""AlertEngine with deterministic probabilities and a fake clock, recording into a real SQLite EventStore."""
from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pytest

from monitor.alerts.engine import AlertEngine
from monitor.alerts.event import Event
from monitor.config.types import AlertsConfig, RuleConfig
from monitor.alerts.events import EventStore
from monitor.core.metrics import Metrics
from monitor.inference.results import Result, ResultBoard
from monitor.alerts.sinks import SinkSet

GOLDEN, LABRADOR, TABBY, TIGER_CAT, TENNIS_BALL = 207, 208, 281, 282, 852


@dataclass(frozen=True)
class FakeFrame:            # same attributes as monitor.capture.camera.Frame
    image: np.ndarray
    seq: int
    captured_at: float
    captured_mono: float


class Pred(NamedTuple):     # same fields as monitor.inference.classifier.Prediction
    label: str
    index: int
    probability: float


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


IMAGE = np.full((48, 64, 3), 90, np.uint8)


def result(camera: str, probs: dict[int, float], t: float, seq: int = 1) -> Result:
    p = np.zeros(1000, np.float32)
    for i, v in probs.items():
        p[i] = v
    rest = 1.0 - p.sum()
    p[TENNIS_BALL] += max(0.0, rest)   # the remainder goes to an unwatched class, like a softmax would
    top = [Pred(str(i), int(i), float(p[i])) for i in np.argsort(-p)[:3]]
    return Result(camera=camera, frame=FakeFrame(IMAGE, seq, t, t), predictions=top, probabilities=p,
                  classified_at=t, latency=0.01)


def dog_rule(**kw: object) -> RuleConfig:
    args = dict(name="dogs", classes=("dog",), indices=(("dog", (GOLDEN, LABRADOR)),), min_score=0.6,
                min_frames=3, end_after=10.0, cooldown=60.0)
    args.update(kw)
    return RuleConfig(**args)  # type: ignore[arg-type]


@pytest.fixture
def env(tmp_path: Path):
    metrics = Metrics()
    store = EventStore(tmp_path / "events.db", metrics)
    clock = Clock()
    yield metrics, store, clock
    store.close()


def alerts_count(metrics: Metrics, rule: str, label: str) -> float:
    return metrics.registry.get_sample_value("monitor_alerts_total", {"rule": rule, "label": label}) or 0.0


def step(engine: AlertEngine, clock: Clock, camera: str, probs: dict[int, float], dt: float = 1.0) -> None:
    clock.t += dt
    engine.observe(result(camera, probs, clock.t))


def test_starts_exactly_once_after_min_frames_and_a_miss_resets(env) -> None:
    metrics, store, clock = env
    engine = AlertEngine([dog_rule()], store, None, metrics, clock=clock)
    hit, miss = {GOLDEN: 0.9}, {GOLDEN: 0.1}
    step(engine, clock, "cam1", hit)
    step(engine, clock, "cam1", hit)          # min_frames - 1 hits: nothing yet
    assert store.query() == [] and engine.active("cam1") == []
    step(engine, clock, "cam1", miss)         # the miss resets the count
    step(engine, clock, "cam1", hit)
    step(engine, clock, "cam1", hit)
    assert store.query() == []
    step(engine, clock, "cam1", {GOLDEN: 0.6})   # third consecutive hit, exactly at min_score
    events = store.query()
    assert len(events) == 1
    ev = events[0]
    assert (ev.camera, ev.rule, ev.label, ev.started_at, ev.ended_at) == (
        "cam1", "dogs", "dog", clock.t, None)
    assert ev.score == pytest.approx(0.6)
    assert engine.active("cam1") == ["dog"] and engine.active("cam2") == []
    assert alerts_count(metrics, "dogs", "dog") == 1
    for _ in range(20):                       # the dog stays: still one event
        step(engine, clock, "cam1", hit)
    assert len(store.query()) == 1 and alerts_count(metrics, "dogs", "dog") == 1


def test_peak_tracked_and_ends_after_end_after(env) -> None:
    metrics, store, clock = env
    engine = AlertEngine([dog_rule(end_after=10.0)], store, None, metrics, clock=clock)
    for s in (0.7, 0.7, 0.7, 0.95, 0.8):
        step(engine, clock, "cam1", {GOLDEN: s})
    last_hit = clock.t
    step(engine, clock, "cam1", {}, dt=5.0)     # gone 5 s: still active
    step(engine, clock, "cam1", {}, dt=4.9)     # gone 9.9 s: still active
    assert engine.active("cam1") == ["dog"] and store.query()[0].ended_at is None
    step(engine, clock, "cam1", {}, dt=0.1)     # gone 10 s: ends
    ev = store.query()[0]
    assert ev.ended_at == pytest.approx(last_hit + 10.0)
    assert ev.peak_score == pytest.approx(0.95)
    assert engine.active("cam1") == []


def test_cooldown_blocks_then_allows_a_new_event(env) -> None:
    metrics, store, clock = env
    engine = AlertEngine([dog_rule(end_after=5.0, cooldown=60.0)], store, None, metrics, clock=clock)
    for _ in range(3):
        step(engine, clock, "cam1", {GOLDEN: 0.9})
    step(engine, clock, "cam1", {}, dt=5.0)    # ends
    ended = store.query()[0].ended_at
    assert ended is not None
    # Within the cooldown: the dog is back for many frames, no new event.
    while clock.t < ended + 59.0:
        step(engine, clock, "cam1", {GOLDEN: 0.9})
    assert len(store.query()) == 1 and engine.active("cam1") == []
    step(engine, clock, "cam1", {GOLDEN: 0.9}, dt=1.0)   # cooldown over, class still present: alerts
    events = store.query()
    assert len(events) == 2 and events[0].started_at >= ended + 60.0
    assert alerts_count(metrics, "dogs", "dog") == 2


def test_cooldown_over_a_fresh_appearance_needs_min_frames_again(env) -> None:
    metrics, store, clock = env
    engine = AlertEngine([dog_rule(end_after=5.0, cooldown=30.0)], store, None, metrics, clock=clock)
    for _ in range(3):
        step(engine, clock, "cam1", {GOLDEN: 0.9})
    step(engine, clock, "cam1", {}, dt=5.0)
    step(engine, clock, "cam1", {}, dt=40.0)   # cooldown over, scene empty
    step(engine, clock, "cam1", {GOLDEN: 0.9})
    step(engine, clock, "cam1", {GOLDEN: 0.9})
    assert len(store.query()) == 1
    step(engine, clock, "cam1", {GOLDEN: 0.9})
    assert len(store.query()) == 2


def test_group_score_is_the_sum_of_its_classes(env) -> None:
    metrics, store, clock = env
    rule = dog_rule(indices=(("cat", (TABBY, TIGER_CAT)), ("dog", (GOLDEN, LABRADOR))), min_frames=2)
    engine = AlertEngine([rule], store, None, metrics, clock=clock)
    # Neither breed alone reaches 0.6; together they are 0.70 and "dog" beats "cat" (0.25).
    for _ in range(2):
        step(engine, clock, "cam1", {GOLDEN: 0.35, LABRADOR: 0.35, TABBY: 0.25})
    (ev,) = store.query()
    assert ev.label == "dog" and ev.score == pytest.approx(0.70, abs=1e-6)
    assert alerts_count(metrics, "dogs", "dog") == 1


def test_single_class_below_min_score_does_not_alert(env) -> None:
    metrics, store, clock = env
    engine = AlertEngine([dog_rule(min_frames=2)], store, None, metrics, clock=clock)
    for _ in range(10):
        step(engine, clock, "cam1", {GOLDEN: 0.35, TABBY: 0.35})   # dog group 0.35 < 0.6
    assert store.query() == []


def test_rule_camera_filter_and_independent_cameras(env) -> None:
    metrics, store, clock = env
    engine = AlertEngine([dog_rule(cameras=("yard",), min_frames=2),
                          dog_rule(name="anycat", indices=(("cat", (TABBY,)),), min_frames=2)],
                         store, None, metrics, clock=clock)
    for _ in range(5):
        step(engine, clock, "door", {GOLDEN: 0.9})       # dog rule does not watch "door"
    assert store.query() == []
    for _ in range(2):
        step(engine, clock, "yard", {GOLDEN: 0.9})
    for _ in range(2):
        step(engine, clock, "door", {TABBY: 0.9})        # cameras=() watches every camera
    events = {(e.camera, e.rule) for e in store.query()}
    assert events == {("yard", "dogs"), ("door", "anycat")}
    assert engine.active("yard") == ["dog"] and engine.active("door") == ["cat"]


def test_close_all_ends_open_events(env) -> None:
    metrics, store, clock = env
    engine = AlertEngine([dog_rule(min_frames=1)], store, None, metrics, clock=clock)
    step(engine, clock, "a", {GOLDEN: 0.9})
    step(engine, clock, "b", {GOLDEN: 0.8})
    clock.t += 2.0
    engine.close_all()
    events = store.query()
    assert len(events) == 2 and all(e.ended_at == clock.t for e in events)
    assert engine.active("a") == [] and engine.active("b") == []


def test_dead_camera_events_end_on_tick(env) -> None:
    metrics, store, clock = env
    engine = AlertEngine([dog_rule(min_frames=1, end_after=10.0)], store, None, metrics, clock=clock)
    step(engine, clock, "a", {GOLDEN: 0.9})
    clock.t += 11.0                         # camera "a" delivers nothing any more
    engine.tick()
    assert store.query()[0].ended_at == clock.t


def test_long_event_refreshes_last_seen_for_crash_recovery(tmp_path: Path) -> None:
    metrics, clock = Metrics(), Clock()
    store = EventStore(tmp_path / "e.db", metrics)
    engine = AlertEngine([dog_rule(min_frames=1)], store, None, metrics, clock=clock, persist_every=30.0)
    step(engine, clock, "a", {GOLDEN: 0.7})
    started = clock.t
    for _ in range(100):
        step(engine, clock, "a", {GOLDEN: 0.9})
    store.close()                                  # the process "dies" with the event open
    reopened = EventStore(tmp_path / "e.db", metrics)
    ev = reopened.query()[0]
    assert reopened.recovered == 1
    assert started + 60.0 <= ev.ended_at <= clock.t and ev.peak_score == pytest.approx(0.9)
    reopened.close()


def test_event_reaches_sinks_and_snapshot_lands_in_the_row(env, tmp_path: Path) -> None:
    metrics, store, clock = env
    sinks = SinkSet(AlertsConfig(snapshots=tmp_path / "snaps"), metrics, store)
    sinks.start()
    try:
        engine = AlertEngine([dog_rule(min_frames=1)], store, sinks, metrics, clock=clock)
        step(engine, clock, "cam1", {GOLDEN: 0.9})
    finally:
        sinks.stop(5.0)
    (ev,) = store.query()
    assert ev.snapshot is not None and Path(ev.snapshot).is_file()
    assert cv2.imread(ev.snapshot).shape == IMAGE.shape


def test_active_is_safe_while_observing(env) -> None:
    metrics, store, clock = env
    engine = AlertEngine([dog_rule(min_frames=1, end_after=0.5, cooldown=0.0)], store, None, metrics, clock=clock)
    stop = threading.Event()
    seen: set[tuple[str, ...]] = set()

    def reader() -> None:
        while not stop.is_set():
            seen.add(tuple(engine.active("a")))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(200):
        step(engine, clock, "a", {GOLDEN: 0.9} if i % 4 < 2 else {}, dt=0.3)
    stop.set()
    t.join(5)
    assert seen <= {(), ("dog",)}
    assert len(store.query(limit=1000)) > 10


def test_rule_without_indices_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        AlertEngine([dog_rule(name="empty", indices=())], None, None, Metrics())


def test_result_board_latest_fps_and_latency() -> None:
    clock = Clock(100.0)
    board = ResultBoard(window=5.0, clock=clock)
    assert board.get("a") is None and board.fps_out("a") == 0.0 and board.latency("a") is None
    for i in range(11):                      # 10 intervals of 0.2 s -> 5 fps
        board.publish(result("a", {}, clock.t, seq=i))
        clock.t += 0.2
    clock.t -= 0.2
    assert board.fps_out("a") == pytest.approx(5.0)
    assert board.get("a").frame.seq == 10 and board.latency("a") == pytest.approx(0.01)
    assert board.fps_out("b") == 0.0
    clock.t += 10.0                          # nothing for a whole window: rate falls to 0
    assert board.fps_out("a") == 0.0 and board.get("a") is not None


def test_failed_event_insert_is_logged_as_a_failure_not_as_event_none(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The database is locked by another process when an event starts: the insert fails (the store counts it). The
    alert is still counted, and the log says that the event was not recorded instead of "event None started"."""
    caplog.set_level(logging.INFO)
    metrics, clock = Metrics(), Clock()
    store = EventStore(tmp_path / "e.db", metrics, busy_timeout=0.1)
    engine = AlertEngine([dog_rule(min_frames=1, end_after=5.0)], store, None, metrics, clock=clock)
    locker = sqlite3.connect(tmp_path / "e.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        step(engine, clock, "cam1", {GOLDEN: 0.9})
        step(engine, clock, "cam1", {}, dt=6.0)        # the unrecorded event ends
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "monitor.alerts.engine"]
    assert not any("event None" in m for m in messages), messages
    started = [r for r in caplog.records if "NOT recorded in the event history" in r.getMessage()]
    assert len(started) == 1 and started[0].levelname == "WARNING", messages
    assert "camera=cam1 rule=dogs label=dog" in started[0].getMessage()
    assert any(m.startswith("unrecorded event ended: camera=cam1") for m in messages), messages
    assert alerts_count(metrics, "dogs", "dog") == 1
    assert (metrics.registry.get_sample_value("monitor_events_db_errors_total") or 0) >= 1
    assert store.query() == []
    store.close()


class RecordingSinks:
    """Records what the engine hands to its sinks (the real SinkSet is tested in test_sinks.py)."""

    def __init__(self) -> None:
        self.emitted: list[tuple[str, Event]] = []

    def emit(self, kind: str, event: Event, frame: object, predictions: object = ()) -> None:
        self.emitted.append((kind, event))


def cat_rule(**kw: object) -> RuleConfig:
    args = dict(name="cats", classes=("cat",), indices=(("cat", (TABBY, TIGER_CAT)),), min_score=0.6, min_frames=1)
    args.update(kw)
    return RuleConfig(**args)  # type: ignore[arg-type]


def test_reconfigure_keeps_open_events_streaks_and_cooldowns_of_unchanged_rules(env) -> None:
    """A reload that adds an unrelated rule must not end the open event (nor start it again), and a rule in its
    cooldown stays in it."""
    metrics, store, clock = env
    sinks = RecordingSinks()
    engine = AlertEngine([dog_rule(end_after=8.0, cooldown=60.0)], store, sinks, metrics, clock=clock)   # type: ignore[arg-type]
    for _ in range(3):
        step(engine, clock, "shed", {GOLDEN: 0.9})
    step(engine, clock, "shed", {}, dt=8.0)                  # "shed": started, ended, now cooling down
    for _ in range(3):
        step(engine, clock, "yard", {GOLDEN: 0.9})          # an event opens on "yard"
    step(engine, clock, "door", {GOLDEN: 0.9})
    step(engine, clock, "door", {GOLDEN: 0.9})              # a streak of 2 of 3 on "door"
    assert [e.camera for e in store.query() if e.ended_at is None] == ["yard"]

    assert engine.reconfigure([dog_rule(end_after=8.0, cooldown=60.0), cat_rule()]) == 0
    for _ in range(5):
        step(engine, clock, "yard", {GOLDEN: 0.9})
    assert engine.active("yard") == ["dog"]
    step(engine, clock, "door", {GOLDEN: 0.9})              # the streak went on: third hit opens the event
    assert engine.active("door") == ["dog"]
    for _ in range(3):
        step(engine, clock, "shed", {GOLDEN: 0.9})          # still inside the cooldown: no event
    assert engine.active("shed") == []
    step(engine, clock, "yard", {TABBY: 0.9})                # the new rule works
    assert engine.active("yard") == ["dog", "cat"]
    starts = [(e.camera, e.rule) for kind, e in sinks.emitted if kind == "start"]
    assert starts == [("shed", "dogs"), ("yard", "dogs"), ("door", "dogs"), ("yard", "cats")], starts
    assert alerts_count(metrics, "dogs", "dog") == 3
    assert len(store.query()) == 4


def test_reconfigure_ends_events_of_changed_and_removed_rules_and_removed_cameras(env) -> None:
    metrics, store, clock = env
    engine = AlertEngine([dog_rule(min_frames=1), cat_rule()], store, None, metrics, clock=clock)
    step(engine, clock, "yard", {GOLDEN: 0.9, TABBY: 0.05})
    step(engine, clock, "door", {TABBY: 0.9})
    step(engine, clock, "shed", {TABBY: 0.9})
    assert len(store.query()) == 3
    clock.t += 1.0
    # dogs changed (min_score), cats unchanged, camera "shed" removed
    assert engine.reconfigure([dog_rule(min_frames=1, min_score=0.7), cat_rule()], removed_cameras=["shed"]) == 2
    ended = {(e.camera, e.rule): e.ended_at for e in store.query()}
    assert ended == {("yard", "dogs"): clock.t, ("door", "cats"): None, ("shed", "cats"): clock.t}
    assert engine.active("yard") == [] and engine.active("door") == ["cat"] and engine.active("shed") == []
    step(engine, clock, "yard", {GOLDEN: 0.9})       # the changed rule starts afresh (no cooldown carried over)
    assert engine.active("yard") == ["dog"]
    assert engine.reconfigure([cat_rule()]) == 1      # dogs removed
    assert engine.active("yard") == [] and engine.active("door") == ["cat"]
