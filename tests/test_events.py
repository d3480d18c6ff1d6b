"""EventStore on a real SQLite file: commits, crash recovery, queries, retention, a locked database."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from monitor.alerts.event import Event
from monitor.alerts.events import CRASH_NOTE, EventStore
from monitor.core.metrics import Metrics


def db_errors(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("monitor_events_db_errors_total") or 0.0


def test_start_and_end_are_committed_for_other_connections(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db", Metrics())
    eid = store.start_event("cam1", "dogs", "dog", 0.7, 1000.0, None)
    assert isinstance(eid, int)
    # A separate connection sees the row at once: committed, not pending in a transaction.
    other = sqlite3.connect(tmp_path / "events.db")
    row = other.execute("SELECT camera, rule, label, score, peak_score, started_at, ended_at FROM events "
                        "WHERE id = ?", (eid,)).fetchone()
    assert row == ("cam1", "dogs", "dog", 0.7, 0.7, 1000.0, None)
    store.end_event(eid, 1030.0, 0.93)
    assert other.execute("SELECT ended_at, peak_score FROM events WHERE id = ?", (eid,)).fetchone() == (1030.0, 0.93)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()
    ev = store.get(eid)
    assert ev is not None and ev.ended_at == 1030.0 and ev.peak_score == 0.93 and ev.note is None
    assert store.get(eid + 100) is None
    store.close()


def test_an_event_round_trips_through_the_store(tmp_path: Path) -> None:
    """Event -> row -> Event: what the engine inserts comes back field for field (the id added, nothing else
    changed), through get() and query(), from another process's connection too (a reopened store); the end,
    written by id, comes back as the engine's replaced instance has it."""
    store = EventStore(tmp_path / "e.db", Metrics())
    started = Event(camera="porch", rule="parcels", label="porch:package", score=0.8125, peak_score=0.875,
                    started_at=1_700_000_000.25, snapshot="/snaps/porch/x.jpg")
    stored = store.insert(started)
    assert stored.id is not None and stored is not started and started.id is None     # a new instance
    assert replace(stored, id=None) == started
    assert store.get(stored.id) == stored and store.query() == [stored]
    ended = replace(stored, ended_at=1_700_000_042.5, peak_score=0.9375)
    assert store.end_event(ended.id, ended.ended_at, ended.peak_score)
    store.close()
    reopened = EventStore(tmp_path / "e.db", Metrics())
    try:
        assert reopened.recovered == 0
        assert reopened.get(stored.id) == ended and reopened.query(camera="porch") == [ended]
        assert ended.custom == ("porch", "package") and reopened.get(stored.id).custom == ("porch", "package")
    finally:
        reopened.close()


def test_a_failed_insert_gives_the_event_back_without_an_id(tmp_path: Path) -> None:
    metrics = Metrics()
    store = EventStore(tmp_path / "e.db", metrics)
    store.close()
    ev = Event(camera="c", rule="r", label="l", score=0.5, peak_score=0.5, started_at=1.0)
    assert store.insert(ev) == ev and db_errors(metrics) == 1


def test_update_peak_only_raises_and_refreshes_last_seen(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "e.db")
    eid = store.start_event("cam1", "dogs", "dog", 0.6, 100.0)
    store.update_peak(eid, 0.9, seen_at=150.0)
    store.update_peak(eid, 0.7, seen_at=140.0)   # lower peak and older time change nothing
    assert store.get(eid).peak_score == 0.9
    store.close()
    raw = sqlite3.connect(tmp_path / "e.db")
    assert raw.execute("SELECT last_seen FROM events WHERE id = ?", (eid,)).fetchone()[0] == 150.0
    raw.close()


def test_events_of_a_killed_process_survive_and_are_closed_once(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    # A real process commits events and is SIGKILLed while two are still open.
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from monitor.alerts.events import EventStore
        s = EventStore({str(db)!r})
        done = s.start_event("cam1", "dogs", "dog", 0.8, 100.0)
        s.end_event(done, 120.0, 0.9)
        a = s.start_event("cam1", "dogs", "dog", 0.7, 200.0)
        s.update_peak(a, 0.95, seen_at=260.0)
        s.start_event("cam2", "cats", "cat", 0.6, 300.0)
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()

    metrics = Metrics()
    store = EventStore(db, metrics)
    assert store.recovered == 2
    events = {e.started_at: e for e in store.query()}
    assert len(events) == 3
    assert events[100.0].ended_at == 120.0 and events[100.0].note is None
    assert events[200.0].ended_at == 260.0 and events[200.0].peak_score == 0.95   # last_seen
    assert events[300.0].ended_at == 300.0                                          # started_at
    assert events[200.0].note == CRASH_NOTE and events[300.0].note == CRASH_NOTE
    store.close()

    again = EventStore(db, metrics)
    assert again.recovered == 0
    assert len(again.query()) == 3                                  # no duplicates
    assert [e.ended_at for e in again.query()] == [300.0, 260.0, 120.0]
    assert db_errors(metrics) == 0
    again.close()


def test_query_filters_newest_first_and_limit(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "e.db")
    for i in range(10):
        store.start_event("cam1" if i % 2 == 0 else "cam2", "r", "dog", 0.5, 1000.0 + i)
    all_events = store.query()
    assert [e.started_at for e in all_events] == [1000.0 + i for i in reversed(range(10))]
    cam1 = store.query(camera="cam1")
    assert {e.camera for e in cam1} == {"cam1"} and len(cam1) == 5
    assert [e.started_at for e in store.query(since=1007.0)] == [1009.0, 1008.0, 1007.0]
    assert [e.started_at for e in store.query(camera="cam2", since=1004.0, limit=2)] == [1009.0, 1007.0]
    assert store.query(camera="nope") == []
    assert all(isinstance(e, Event) and e.id is not None for e in all_events)
    store.close()


def test_prune_deletes_old_ended_rows_and_their_snapshots(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "e.db")
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    now = 10_000.0
    old = store.start_event("cam1", "r", "dog", 0.5, now - 5000)
    store.end_event(old, now - 4900, 0.6)
    old_file = snaps / "old.jpg"
    old_file.write_bytes(b"x")
    store.set_snapshot(old, str(old_file))
    recent = store.start_event("cam1", "r", "dog", 0.5, now - 100)
    store.end_event(recent, now - 50, 0.6)
    recent_file = snaps / "recent.jpg"
    recent_file.write_bytes(b"x")
    store.set_snapshot(recent, str(recent_file))
    still_open = store.start_event("cam1", "r", "dog", 0.5, now - 9000)   # open events are never pruned
    gone_file = store.start_event("cam1", "r", "dog", 0.5, now - 6000)
    store.end_event(gone_file, now - 5900, 0.5)
    store.set_snapshot(gone_file, str(snaps / "already-deleted.jpg"))

    assert store.prune(1000.0, now=now) == 2
    assert store.get(old) is None and store.get(gone_file) is None
    assert store.get(recent) is not None and store.get(still_open) is not None
    assert not old_file.exists() and recent_file.exists()
    assert store.prune(1000.0, now=now) == 0
    store.close()


def test_locked_database_counts_errors_and_does_not_raise(tmp_path: Path) -> None:
    metrics = Metrics()
    store = EventStore(tmp_path / "e.db", metrics, busy_timeout=0.2)
    eid = store.start_event("cam1", "r", "dog", 0.5, 1.0)
    assert eid is not None
    locker = sqlite3.connect(tmp_path / "e.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        assert store.start_event("cam1", "r", "dog", 0.5, 2.0) is None
        store.end_event(eid, 3.0, 0.9)
        store.set_snapshot(eid, "/x.jpg")
        assert store.prune(0.0, now=100.0) == 0
        assert time.monotonic() - t0 < 5.0           # bounded by the busy timeout, not hanging
        assert db_errors(metrics) == 4
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    # Once the lock is gone the store works again; the committed event is intact.
    store.end_event(eid, 4.0, 0.9)
    assert store.get(eid).ended_at == 4.0
    assert db_errors(metrics) == 4
    store.close()


def test_writes_from_many_threads(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "e.db")
    ids: list[int] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        for i in range(20):
            eid = store.start_event(f"cam{n}", "r", "dog", 0.5, float(i))
            store.end_event(eid, float(i) + 1, 0.6)
            with lock:
                ids.append(eid)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(set(ids)) == 80 and all(i is not None for i in ids)
    assert len(store.query(limit=1000)) == 80
    store.close()


def test_unopenable_database_names_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    from monitor.alerts.events import EventStoreError
    with pytest.raises(EventStoreError, match=str(blocker / "events.db")):
        EventStore(blocker / "events.db")


def test_closed_store_counts_instead_of_raising(tmp_path: Path) -> None:
    metrics = Metrics()
    store = EventStore(tmp_path / "e.db", metrics)
    store.close()
    assert store.start_event("c", "r", "l", 0.5, 1.0) is None
    assert store.query() == []
    assert db_errors(metrics) == 2


def test_a_second_opener_leaves_the_owners_open_events_alone(tmp_path: Path) -> None:
    owner = EventStore(tmp_path / "e.db")
    eid = owner.start_event("cam1", "r", "dog", 0.5, 1.0)
    reader = EventStore(tmp_path / "e.db")          # e.g. `monitor events` while the daemon runs
    assert reader.recovered == 0
    assert reader.get(eid).ended_at is None
    reader.close()
    owner.end_event(eid, 5.0, 0.7)
    assert owner.get(eid).ended_at == 5.0 and owner.get(eid).note is None
    owner.close()


def test_the_region_an_event_was_scored_on_is_kept_and_an_older_database_gains_its_column(tmp_path: Path) -> None:
    """Event.box (what labelling the event files) goes through the store; a database made before events kept
    it gets the column on open, and its rows come back without a box."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(str(path))
    old.executescript("""CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, camera TEXT NOT NULL,
        rule TEXT NOT NULL, label TEXT NOT NULL, score REAL NOT NULL, peak_score REAL NOT NULL,
        started_at REAL NOT NULL, ended_at REAL, snapshot TEXT, last_seen REAL NOT NULL, note TEXT);
        INSERT INTO events (camera, rule, label, score, peak_score, started_at, ended_at, last_seen)
        VALUES ('porch', 'parcels', 'porch:package', 0.8, 0.8, 100.0, 130.0, 130.0);""")
    old.close()
    store = EventStore(path, Metrics())
    try:
        (before,) = store.query()
        assert before.box is None and before.label == "porch:package"
        ev = store.insert(Event(camera="porch", rule="parcels", label="porch:package", score=0.9, peak_score=0.9,
                                started_at=200.0, box=(10, 20, 300, 200)))
        assert store.get(ev.id) == ev and store.get(ev.id).box == (10, 20, 300, 200)
        assert "box" not in ev.payload("start")          # the webhook and MQTT carry what they always did
    finally:
        store.close()
