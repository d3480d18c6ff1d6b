"""Retention of the snapshot folder: the .clean.jpg twin goes with its snapshot, `-noid-` orphans older than the
retention go, and alerts.snapshots_max_bytes caps the folder (oldest first, rows forget the deleted path).

Snapshots are written by the real snapshot sink into a real folder next to a real SQLite event store; ages are
real file mtimes (os.utime), the retention pass is the one the daemon runs hourly (EventStore.prune)."""
from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest

from monitor.alerts import events
from monitor.alerts.event import Event
from monitor.alerts.events import EventStore
from monitor.alerts.sinks import SinkSet
from monitor.config.loader import ConfigError, parse_config
from monitor.config.types import AlertsConfig
from monitor.core.metrics import Metrics
from testkit.waiting import wait_until

DAY = 86400.0
RETENTION = 30 * DAY


def frame(seed: int) -> np.ndarray:
    """Noise compresses badly: every snapshot is about the same size (~50 KB at 160x120)."""
    return np.random.default_rng(seed).integers(0, 256, (120, 160, 3), dtype=np.uint8)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    s = EventStore(tmp_path / "events.db", Metrics())
    yield s
    s.close()


def age(path: Path | str, days: float) -> None:
    """Make a file `days` old (mtime and atime)."""
    t = time.time() - days * DAY
    os.utime(path, (t, t))


def write_snapshots(sinks: SinkSet, store: EventStore, n: int, label: str = "dog", with_rows: bool = True,
                    first_seed: int = 0) -> list[tuple[int | None, Path]]:
    """n events started through the real sinks (rows first, as the alert engine does); (id, snapshot path)."""
    made = []
    for i in range(n):
        started = time.time() - (n - i) * 10 - first_seed * 1000   # names hold the start second: all distinct
        eid = store.start_event("yard", "dogs", label, 0.9, started) if with_rows else None
        before = set(Path(sinks.cfg.snapshots).rglob("*.jpg"))
        sinks.emit("start", Event(id=eid, camera="yard", rule="dogs", label=label, score=0.9, peak_score=0.9,
                                  started_at=started), frame(first_seed + i))
        assert wait_until(lambda: len(set(Path(sinks.cfg.snapshots).rglob("*.jpg")) - before) >= 1, 5.0)
        if eid is not None:
            assert wait_until(lambda: getattr(store.get(eid), "snapshot", None) is not None, 5.0)
            made.append((eid, Path(store.get(eid).snapshot)))
        else:
            new = sorted(set(Path(sinks.cfg.snapshots).rglob("*.jpg")) - before)
            made.append((None, next(p for p in new if not p.name.endswith(".clean.jpg"))))
    return made


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_prune_deletes_the_clean_twin_of_a_custom_class_snapshot(tmp_path: Path, store: EventStore) -> None:
    """A custom-class event ("porch:package") is snapshotted twice: with the overlay and without (.clean.jpg, for
    labelling). When the event is pruned both files go; before, the .clean.jpg stayed for ever."""
    root = tmp_path / "snaps"
    sinks = SinkSet(AlertsConfig(snapshots=root), Metrics(), store)
    sinks.start()
    try:
        [(eid, snap)] = write_snapshots(sinks, store, 1, label="porch:package")
        [(keep_id, keep)] = write_snapshots(sinks, store, 1, label="porch:package", first_seed=9)
    finally:
        sinks.stop(2.0)
    clean = snap.with_name(snap.stem + ".clean.jpg")
    assert snap.is_file() and clean.is_file()
    now = time.time()
    store.end_event(eid, now - RETENTION - DAY, 0.9)                  # ended before the retention
    store.end_event(keep_id, now - DAY, 0.9)
    assert store.prune(RETENTION, now=now) == 1
    assert not snap.exists() and not clean.exists()
    assert keep.exists() and keep.with_name(keep.stem + ".clean.jpg").exists()


def test_noid_orphans_older_than_the_retention_are_deleted(tmp_path: Path, store: EventStore) -> None:
    """Snapshots of events whose row could not be written (database locked: `-noid-` in the name) have no row
    that prune would find. The retention pass sweeps the folder: orphans older than the retention go; recent
    ones, files an event still names (an open event that started long ago), stale .tmp files of a writer that
    died, and files the sink did not write (not its naming) are handled as they should be."""
    root = tmp_path / "snaps"
    sinks = SinkSet(AlertsConfig(snapshots=root), Metrics(), store)
    sinks.start()
    try:
        (_, old_orphan), (_, new_orphan) = write_snapshots(sinks, store, 2, with_rows=False)
        [(open_id, open_snap)] = write_snapshots(sinks, store, 1, first_seed=5)
    finally:
        sinks.stop(2.0)
    assert "-noid-" in old_orphan.name and "-noid-" in new_orphan.name
    age(old_orphan, 31)
    age(new_orphan, 29)
    age(open_snap, 45)                              # the event is still open: its picture stays
    stale_tmp = old_orphan.with_name(f".{old_orphan.name}.4242.tmp")
    stale_tmp.write_bytes(b"half a jpeg")
    age(stale_tmp, events.TMP_STALE_AFTER / DAY + 0.01)
    fresh_tmp = new_orphan.with_name(f".{new_orphan.name}.4243.tmp")
    fresh_tmp.write_bytes(b"being written")
    foreign = [root / "yard" / "notes.jpg", root / "README.txt"]  # not the sink's naming: never touched
    for f in foreign:
        f.write_bytes(b"mine")
        age(f, 400)

    assert store.prune(RETENTION, snapshots=root, max_bytes=None) == 0
    assert not old_orphan.exists() and not stale_tmp.exists()
    assert new_orphan.exists() and fresh_tmp.exists() and open_snap.exists()
    assert all(f.exists() for f in foreign)
    assert store.get(open_id).snapshot == str(open_snap)


def test_byte_cap_deletes_the_oldest_first_and_their_rows_forget_the_path(tmp_path: Path,
                                                                          store: EventStore) -> None:
    """Over alerts.snapshots_max_bytes the retention pass deletes the oldest snapshots (by file time, twins
    together) until the folder holds 90 % of the cap; the events stay, their snapshot column is cleared so
    nothing links to a missing file."""
    root = tmp_path / "snaps"
    sinks = SinkSet(AlertsConfig(snapshots=root, snapshots_max_bytes=None), Metrics(), store)
    sinks.start()
    try:
        made = write_snapshots(sinks, store, 8)
    finally:
        sinks.stop(2.0)
    for i, (_, path) in enumerate(made):           # oldest first: made[0] is 8 days old, made[7] 1 day
        age(path, 8 - i)
    sizes = [p.stat().st_size for _, p in made]
    cap = sum(sizes[-4:]) + 100                      # room for the 4 newest; 90 % of it holds 3
    assert store.prune(RETENTION, snapshots=root, max_bytes=cap) == 0
    kept = [p.exists() for _, p in made]
    assert kept == [False] * 5 + [True] * 3, kept
    assert folder_bytes(root) <= int(cap * 0.9)
    for eid, path in made:
        row = store.get(eid)
        assert row is not None                                  # the event stays
        assert row.snapshot == (str(path) if path.exists() else None)


def test_snapshot_sink_keeps_the_folder_under_the_cap_while_writing(tmp_path: Path, store: EventStore) -> None:
    """A burst of events between two hourly retention passes: the sink itself holds the folder under the cap,
    the newest snapshot always kept."""
    root = tmp_path / "snaps"
    one = len(cv2.imencode(".jpg", frame(0), [cv2.IMWRITE_JPEG_QUALITY, 90])[1])
    cap = 5 * one
    sinks = SinkSet(AlertsConfig(snapshots=root, snapshots_max_bytes=cap), Metrics(), store)
    sinks.start()
    try:
        made = write_snapshots(sinks, store, 12)
        assert wait_until(lambda: folder_bytes(root) <= cap, 5.0), folder_bytes(root)
    finally:
        sinks.stop(2.0)
    assert made[-1][1].exists()
    assert not made[0][1].exists()
    for eid, path in made:
        assert store.get(eid).snapshot == (str(path) if path.exists() else None)


def test_a_locked_database_keeps_the_files_rows_still_name(tmp_path: Path) -> None:
    """The cap must not leave a row pointing at a deleted file: when the rows cannot be updated (database
    locked by another process), the referenced files stay until a later pass."""
    store = EventStore(tmp_path / "events.db", Metrics(), busy_timeout=0.2)
    root = tmp_path / "snaps"
    sinks = SinkSet(AlertsConfig(snapshots=root, snapshots_max_bytes=None), Metrics(), store)
    sinks.start()
    try:
        made = write_snapshots(sinks, store, 3)
    finally:
        sinks.stop(2.0)
    locker = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        result = events.sweep_snapshots(root, max_bytes=1, store=store)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert result.deleted == 0 and all(p.exists() for _, p in made)
    result = events.sweep_snapshots(root, max_bytes=1, store=store)         # the lock is gone: now they go
    assert result.deleted == 3 and not any(p.exists() for _, p in made)
    assert all(store.get(eid).snapshot is None for eid, _ in made)
    store.close()


def test_config_key_default_null_and_errors(tmp_path: Path) -> None:
    base = {"model": {"weights": "/nonexistent.pt"}, "cameras": [{"name": "door", "source": "0"}]}
    assert parse_config(base, tmp_path).alerts.snapshots_max_bytes == 1024 ** 3
    cfg = parse_config({**base, "alerts": {"snapshots": "snaps", "snapshots_max_bytes": "200MB"}}, tmp_path)
    assert cfg.alerts.snapshots_max_bytes == 200 * 1024 ** 2
    assert parse_config({**base, "alerts": {"snapshots_max_bytes": None}}, tmp_path).alerts.snapshots_max_bytes is None
    for bad in ("lots", 0, -5, True):
        with pytest.raises(ConfigError) as info:
            parse_config({**base, "alerts": {"snapshots_max_bytes": bad}}, tmp_path)
        assert any(e.startswith("alerts.snapshots_max_bytes:") for e in info.value.errors), info.value.errors


def test_a_snapshot_folder_not_made_yet_is_swept_without_a_warning(tmp_path: Path, caplog) -> None:
    """A fresh install has no snapshot folder until the first event: the hourly sweep has nothing to say."""
    from monitor.alerts.events import sweep_snapshots

    with caplog.at_level(logging.WARNING):
        sweep = sweep_snapshots(tmp_path / "var" / "snapshots", older_than=0.0, max_bytes=1000)
    assert sweep.deleted == 0 and not [r for r in caplog.records if r.levelno >= logging.WARNING]
