"""The sink-fault scenarios of tests/test_faults_sinks.py (see its docstring), also run with longer windows by
scripts/sink_faults.py: each fault for one window between two healthy windows on the same daemon, checking the
classification rate, the failure/drop counters and that every committed event is in SQLite, closed."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

from monitor.config.loader import parse_config
from monitor.config.types import Config
from monitor.daemon import Daemon
from testkit.faults import (
    CrashWatch, EventLog, Fault, FullFilesystem, HttpCloseServer, Window, alternate, rate_ratios,
)
from testkit.webhook import Receiver

CAMERA = "cars"
WINDOW = 3.0            # seconds per window (~37 frames at 12.5 fps: one frame is under 3 %)
TOLERANCE = 0.10
NATIVE_FPS = 12.5


class Setup:
    """One daemon on the car video; `config(**alerts)` builds its config with the healthy sinks overridden.
    `hook` is the healthy webhook receiver (a testkit.webhook.Receiver)."""

    def __init__(self, tmp_path: Path, weights: Path, footage: tuple[Path, dict], hook_url: str,
                 window: float = WINDOW) -> None:
        self.tmp_path = tmp_path
        self.window = window                # seconds per healthy or faulty window
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


def run(setup: Setup, faults: list[Fault], min_events: int = 2) -> tuple[list[Window], dict[str, dict[str, float]],
                                                                       EventLog]:
    """Healthy and faulty windows alternately; checks rates, crashes and SQLite; returns what was measured.

    `min_events`: events that must have started (reached the store and the sinks) in each faulty window, proof
    that the fault was exercised."""
    with EventLog() as events, CrashWatch(expected_errors=("events database",)) as crashes:
        d = setup.start()
        windows, moved = alternate(d, CAMERA, faults, setup.window)
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
        assert w.alerts >= min_events, f"{w.label}: only {w.alerts:.0f} events in {setup.window} s"
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



def webhook_faults(setup: Setup) -> None:
    """A webhook receiver that hangs, one that answers 500, one that closes the socket."""
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


def command_and_snapshot_faults(setup: Setup) -> None:
    """A command that hangs; a snapshot directory that cannot be created or lies on a full filesystem (needs
    FullFilesystem.available())."""
    blocker = setup.tmp_path / "not-a-directory"
    blocker.write_text("a regular file where the snapshot directory's parent should be")
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


def sqlite_lock_faults(setup: Setup) -> None:
    """The SQLite file locked by another connection holding BEGIN EXCLUSIVE, twice."""
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
