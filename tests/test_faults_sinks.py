"""Alert sinks and the event store failing under a running daemon, on real parts: webhook receivers on 127.0.0.1
that time out, answer 500 or close the socket; a command that hangs; a snapshot directory that cannot be created
(its parent is a regular file: root ignores chmod, not ENOTDIR) or that lies on a full filesystem (a tiny tmpfs
filled to the last block); the SQLite file locked by another connection holding BEGIN EXCLUSIVE.

The daemon classifies every frame of a 6 s clip of a sample video (looped) at its native 12.5 fps with a rule on
the demo model's top class at a min_score where that class flickers all through the clip, so events start and
end several times in every window and every sink is busy. Each fault runs for one window between two healthy windows of the same length (the same daemon, switched
by reload or by taking the lock), so machine noise hits both sides alike. Per fault: the classification rate
stays within 10 % of its healthy neighbours, the failures and drops are counted in the metrics, and afterwards
every event whose start was committed (logged as "event N started") is in SQLite, closed. The scenarios live in
testkit/sink_scenarios.py (scripts/sink_faults.py runs them with longer windows).
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
from monitor.alerts.event import Event
from monitor.alerts.events import EventStore
from monitor.capture.camera import Frame
from monitor.config.types import RuleConfig
from monitor.core.metrics import Metrics
from monitor.inference.classifier import Prediction
from monitor.inference.results import Result
from testkit.faults import FullFilesystem, clip, flicker_rule
from testkit.sink_scenarios import Setup, command_and_snapshot_faults, sqlite_lock_faults, webhook_faults
from testkit.webhook import Receiver


@pytest.fixture(scope="module")
def footage(demo_weights: Path, videos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(6 s clip of the car video, a rule on the demo model's top class that flickers all through it)."""
    video = clip(videos_dir / "car-detection.mp4", tmp_path_factory.mktemp("clip") / "cars-6s.mp4", 6)
    label, min_score = flicker_rule(demo_weights, video)
    return video, {"name": "watch", "classes": [label], "min_score": min_score, "min_frames": 1, "end_after": 0.05,
                   "cooldown": 0}


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


def test_webhook_timeout_500_and_closed_socket(setup: Setup) -> None:
    webhook_faults(setup)


def test_hung_command_and_snapshots_unwritable_or_on_a_full_filesystem(setup: Setup) -> None:
    why = FullFilesystem.available(setup.tmp_path)
    if why:
        pytest.skip(f"full-filesystem case needs a tmpfs mount (root/CAP_SYS_ADMIN): {why}")
    command_and_snapshot_faults(setup)


def test_sqlite_locked_by_another_connection(setup: Setup) -> None:
    sqlite_lock_faults(setup)


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

    def rows() -> list[Event]:
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
        assert rows()[0].ended_at is None                  # not written while locked
        locker.execute("ROLLBACK")
        ended = wait(lambda: rows()[-1].ended_at)
        assert ended == pytest.approx(1_700_000_002.0), rows()
        engine.close_all()
    finally:
        locker.close()
        store.close()
    assert slowest < 0.1, f"observe() blocked {slowest:.3f} s on the locked database"
