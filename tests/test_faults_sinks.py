"""Alert sinks and the event store failing under a running daemon, on real parts: webhook receivers on 127.0.0.1
that time out, answer 500 or close the socket; a command that hangs; a snapshot directory that cannot be created
(its parent is a regular file: root ignores chmod, not ENOTDIR) or that lies on a full filesystem (a tiny tmpfs
filled to the last block); the SQLite file locked by another connection holding BEGIN EXCLUSIVE.

The daemon classifies every frame of a 6 s clip of a sample video (looped) at its native 12.5 fps with a rule on
the demo model's top class at a min_score where that class flickers all through the clip, so events start and
end several times in every window and every sink is busy. Each fault runs for one window between two healthy windows of the same length (the same daemon, switched
by reload or by taking the lock), so machine noise hits both sides alike. Per fault: the classification rate
stays within 10 % of its healthy neighbours, the failures and drops are counted in the metrics, and afterwards
every event whose start was committed (logged as "event N started") is in SQLite, closed.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from monitor.alerts.engine import AlertEngine
from testkit.faults import (
    CrashWatch, EventLog, Fault, FullFilesystem, HttpCloseServer, Window, alternate, clip, flicker_rule,
    rate_ratios,
)
from monitor.capture.camera import Frame
from monitor.inference.classifier import Prediction
from monitor.config.loader import parse_config
from monitor.config.types import Config, RuleConfig
from monitor.daemon import Daemon
from monitor.alerts.events import EventStore
from monitor.core.metrics import Metrics
from monitor.inference.results import Result

from tests.helpers_http import Receiver

CAMERA = "cars"
WINDOW = 3.0            # seconds per window (~37 frames at 12.5 fps: one frame is under 3 %)
TOLERANCE = 0.10
NATIVE_FPS = 12.5


@pytest.fixture(scope="module")
def footage(demo_weights: Path, videos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(6 s clip of the car video, a rule on the demo model's top class that flickers all through it)."""
    video = clip(videos_dir / "car-detection.mp4", tmp_path_factory.mktemp("clip") / "cars-6s.mp4", 6)
    label, min_score = flicker_rule(demo_weights, video)
    return video, {"name": "watch", "classes": [label], "min_score": min_score, "min_frames": 1, "end_after": 0.05,
                   "cooldown": 0}


class Setup:
    """One daemon on the car video; `config(**alerts)` builds its config with the healthy sinks overridden."""

    def __init__(self, tmp_path: Path, weights: Path, footage: tuple[Path, dict], hook_url: str) -> None:
        self.tmp_path = tmp_path
        self.weights = weights
        self.video, self.rule = footage
        self.healthy = {
            "snapshots": str(tmp_path / "snapshots"),
            "webhook": {"url": hook_url, "timeout": 1, "retries": 1},
            "command": ["/bin/true", "{event_id}"],
            "command_timeout": 1,
            "queue_size": 4,
        }
        self.db = tmp_path / "events.db"
        self.daemon: Daemon | None = None

    def config(self, **alerts: Any) -> Config:
        return parse_config({
            "model": {"weights": str(self.weights), "threads": 2},
            "cameras": [{"name": CAMERA, "source": str(self.video), "loop": True, "fps": 0}],
            "watchlist": [self.rule],
            "alerts": {**self.healthy, **alerts},
            "events": {"database": str(self.db)},
        }, self.tmp_path)

    def reload(self, **alerts: Any) -> Callable[[], None]:
        return lambda: self.daemon.reload(self.config(**alerts))      # type: ignore[union-attr]

    def start(self) -> Daemon:
        self.daemon = Daemon(self.config())
        self.daemon.start(web=False)
        deadline = time.monotonic() + 15
        while self.daemon.worker.classified < 10:
            assert time.monotonic() < deadline, self.daemon.cameras[CAMERA].status()
            time.sleep(0.05)
        return self.daemon


@pytest.fixture
def setup(tmp_path: Path, demo_weights: Path, footage: tuple[Path, dict]) -> Iterator[Setup]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with Receiver("ok") as hook:
        s = Setup(tmp_path, demo_weights, footage, hook.url)
        s.hook = hook                                                   # type: ignore[attr-defined]
        yield s
        if s.daemon is not None and s.daemon._started:
            s.daemon.stop()
    root.handlers[:] = handlers        # Daemon.reload() installs the CLI's logging on the root logger
    root.setLevel(level)


def run(setup: Setup, faults: list[Fault], min_events: int = 2) -> tuple[list[Window], dict[str, dict[str, float]],
                                                                       EventLog]:
    """Healthy and faulty windows alternately; checks rates, crashes and SQLite; returns what was measured.

    `min_events`: events that must have started (reached the store and the sinks) in each faulty window, proof
    that the fault was exercised."""
    with EventLog() as events, CrashWatch(expected_errors=("events database",)) as crashes:
        d = setup.start()
        windows, moved = alternate(d, CAMERA, faults, WINDOW)
        assert d.worker._thread is not None and d.worker._thread.is_alive(), "inference worker died"
        assert d.cameras[CAMERA].is_alive() and d.cameras[CAMERA].status()["reconnects"] == 0
        d.stop()
    assert crashes.crashes == 0, crashes.report()
    figures = {w.label: f"{w.rate:.2f}/s ({w.alerts:.0f} events)" for w in windows[1::2]}
    ratios = rate_ratios(windows)
    print(f"\nhealthy: {[round(w.rate, 2) for w in windows[::2]]} frames/s; faulty: {figures}; "
          f"ratios: { {k: round(v, 3) for k, v in ratios.items()} }; counters: {moved}")
    for w in windows[::2]:
        assert w.rate >= 0.8 * NATIVE_FPS, f"healthy window classified only {w.rate:.1f} frames/s: {windows}"
    for name, ratio in ratios.items():
        assert abs(ratio - 1) <= TOLERANCE, (f"{name}: classification rate {ratio:.0%} of the healthy rate "
                                             f"(windows {windows})")
    for w in windows[1::2]:
        # the fault was really exercised: events kept starting while it lasted
        assert w.alerts >= min_events, f"{w.label}: only {w.alerts:.0f} events in {WINDOW} s"
    check_sqlite(setup.db, events)
    return windows, moved, events


def check_sqlite(db: Path, events: EventLog) -> None:
    """Every event whose start was committed (logged with its id) is in the file, once, closed."""
    committed = [i for i in events.started if i is not None]
    assert committed, "no event was committed at all"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = {r[0]: r for r in conn.execute("SELECT id, ended_at, started_at FROM events")}
    missing = sorted(set(committed) - set(rows))
    assert not missing, f"committed events missing from SQLite: {missing}"
    assert len(committed) == len(set(committed)), "an event id was logged as started twice"
    still_open = [i for i in committed if rows[i][1] is None]
    assert not still_open, f"events left open after stop(): {still_open}"


# ---------------------------------------------------------------------------------------------------------


def test_webhook_timeout_500_and_closed_socket(setup: Setup) -> None:
    with Receiver("hang") as hang, Receiver("500") as error, HttpCloseServer() as closer:
        _, moved, _ = run(setup, [
            Fault("webhook-timeout", setup.reload(webhook={"url": hang.url, "timeout": 1, "retries": 1}),
                  setup.reload()),
            Fault("webhook-500", setup.reload(webhook={"url": error.url, "timeout": 1, "retries": 1}),
                  setup.reload()),
            Fault("webhook-close", setup.reload(webhook={"url": closer.url_http, "timeout": 1, "retries": 1}),
                  setup.reload()),
        ])
        assert hang.hits >= 1 and error.hits >= 2 and closer.hits >= 2, (hang.hits, error.hits, closer.hits)
    # A hung receiver holds each delivery for timeout x (1 + retries): the queue (4) overflows, drops counted.
    assert moved["webhook-timeout"].get("webhook_dropped", 0) >= 1, moved
    for name in ("webhook-timeout", "webhook-500", "webhook-close"):
        assert moved[name].get("webhook_failures", 0) >= 1, (name, moved)
    assert setup.hook.hits >= 4                                                 # type: ignore[attr-defined]


def test_hung_command_and_snapshots_unwritable_or_on_a_full_filesystem(setup: Setup) -> None:
    blocker = setup.tmp_path / "not-a-directory"
    blocker.write_text("a regular file where the snapshot directory's parent should be")
    why = FullFilesystem.available(setup.tmp_path)
    if why:
        pytest.skip(f"full-filesystem case needs a tmpfs mount (root/CAP_SYS_ADMIN): {why}")
    with FullFilesystem(setup.tmp_path / "full") as full:
        _, moved, _ = run(setup, [
            Fault("command-hang", setup.reload(command=["/bin/sleep", "30"], command_timeout=1), setup.reload()),
            Fault("snapshot-unwritable", setup.reload(snapshots=str(blocker / "snapshots")), setup.reload()),
            Fault("snapshot-disk-full", setup.reload(snapshots=str(full.path / "snapshots")), setup.reload()),
        ])
        left = [p.name for p in (full.path / "snapshots").rglob("*") if p.is_file()]
    assert moved["command-hang"].get("command_failures", 0) >= 1, moved         # killed at its timeout
    assert moved["snapshot-unwritable"].get("snapshot_failures", 0) >= 2, moved
    assert moved["snapshot-disk-full"].get("snapshot_failures", 0) >= 2, moved
    assert left == [], f"partial snapshot files left on the full filesystem: {left}"
    with sqlite3.connect(f"file:{setup.db}?mode=ro", uri=True) as conn:
        claimed = [r[0] for r in conn.execute("SELECT snapshot FROM events WHERE snapshot IS NOT NULL")]
    bad = [p for p in claimed if not Path(p).is_file()]
    assert not bad, f"rows point at snapshots that were never written: {bad[:5]}"


def test_sqlite_locked_by_another_connection(setup: Setup) -> None:
    locker: list[sqlite3.Connection] = []

    def lock() -> None:
        conn = sqlite3.connect(str(setup.db), isolation_level=None, timeout=5)
        conn.execute("BEGIN EXCLUSIVE")
        locker.append(conn)

    def unlock() -> None:
        conn = locker.pop()
        conn.execute("ROLLBACK")
        conn.close()

    try:
        # While the lock is held each write waits out the store's 2 s busy timeout, so at most a start or two
        # gets through per window (often none in 3 s); the decisions queue up (bounded) and are written once
        # the lock is gone. The database errors counted below prove the fault was exercised.
        _, moved, events = run(setup, [Fault("sqlite-locked", lock, unlock),
                                       Fault("sqlite-locked-again", lock, unlock)], min_events=0)
    finally:
        for conn in locker:
            conn.close()
    assert moved["sqlite-locked"].get("events_db_errors", 0) >= 1, moved
    assert moved["sqlite-locked-again"].get("events_db_errors", 0) >= 1, moved


def test_locked_database_never_blocks_observe_and_ends_are_written_once_it_unlocks(tmp_path: Path) -> None:
    """The engine as the daemon runs it (background=True) on a real SQLite file that another connection locks:
    observe() (the inference thread) returns at once while the writes wait out the busy timeout on the io thread;
    the end of an event committed before the lock, decided during it, is written once the lock is gone."""
    tabby = 281
    metrics = Metrics()
    store = EventStore(tmp_path / "events.db", metrics, busy_timeout=0.3)
    rule = RuleConfig(name="cats", classes=("tabby",), indices=(("tabby", (tabby,)),), min_score=0.5, min_frames=1,
                      end_after=1.0, cooldown=0.0)
    now = [1_700_000_000.0]
    engine = AlertEngine([rule], store, None, metrics, clock=lambda: now[0], background=True)
    image = np.zeros((48, 64, 3), np.uint8)

    def observe(p: float) -> float:
        probs = np.zeros(1000, np.float32)
        probs[tabby] = p
        probs[0] = 1 - p
        frame = Frame(image=image, seq=1, captured_at=now[0], captured_mono=time.monotonic())
        t = time.monotonic()
        engine.observe(Result(camera="yard", frame=frame, predictions=[Prediction("tabby", tabby, p)],
                              probabilities=probs, classified_at=now[0], latency=0.0))
        return time.monotonic() - t

    def rows() -> list[dict]:
        return store.query(limit=100)

    def wait(cond: Callable[[], Any], timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := cond()) and time.monotonic() < deadline:
            time.sleep(0.01)
        return value

    locker = sqlite3.connect(str(tmp_path / "events.db"), isolation_level=None)
    try:
        observe(0.9)                                          # event 1 starts, committed
        assert wait(lambda: len(rows()) == 1)
        locker.execute("BEGIN EXCLUSIVE")
        now[0] += 2.0
        slowest = observe(0.0)                                # event 1 ends: its write meets the lock
        now[0] += 1.0
        slowest = max(slowest, observe(0.9))                  # event 2 starts: its write meets the lock too
        now[0] += 2.0
        slowest = max(slowest, observe(0.0))
        assert wait(lambda: metrics.registry.get_sample_value("monitor_events_db_errors_total") >= 2), \
            "the writes never met the lock"
        assert rows()[0]["ended_at"] is None                  # not written while locked
        locker.execute("ROLLBACK")
        ended = wait(lambda: rows()[-1]["ended_at"])
        assert ended == pytest.approx(1_700_000_002.0), rows()
        engine.close_all()
    finally:
        locker.close()
        store.close()
    assert slowest < 0.1, f"observe() blocked {slowest:.3f} s on the locked database"
