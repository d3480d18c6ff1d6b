"""The outbox: every change of the local event history, queued in the same SQLite transaction by triggers, and
replicated into PostgreSQL by one thread.

The local SQLite stays the source of truth: the alert path writes only to it (the triggers add one row to
`fleet_outbox` inside the event's own INSERT/UPDATE, so no change can be committed without its outbox row and the
EventStore needs no knowledge of the fleet). The "fleet-outbox" thread reads the outbox in order, upserts the
events' current rows into PostgreSQL keyed by (node, id) (`ON CONFLICT DO UPDATE`: the end and the peak arrive
as updates, a batch sent twice changes nothing), commits, and only then deletes the outbox rows it sent. A
PostgreSQL outage therefore never blocks an alert nor loses one: the outbox grows, its lag is a metric, and it
drains when the database is back.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from monitor.core.metrics import Metrics
from monitor.fleet.database import FleetDatabase

log = logging.getLogger(__name__)

BATCH = 500             # events per PostgreSQL transaction
SNAPSHOT_ROUTE = "/api/events/{id}/snapshot.jpg"    # monitor/web/routes/events.py
CLIP_ROUTE = "/api/events/{id}/clip.mp4"

_TABLE = """
CREATE TABLE IF NOT EXISTS fleet_outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   INTEGER NOT NULL,
    queued_at  REAL NOT NULL
);
"""
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_TRIGGERS = ("fleet_outbox_insert", "fleet_outbox_update")


def install(db_path: Path) -> None:
    """Create the outbox table and (re)create its triggers on the events table (which EventStore made)."""
    conn = sqlite3.connect(str(db_path), timeout=5.0, isolation_level=None)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
        # last_seen alone changes while an event goes on (crash recovery): not worth a row in PostgreSQL
        watched = [c for c in ("score", "peak_score", "ended_at", "snapshot", "note", "clip_state") if c in columns]
        changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in watched)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_TABLE)
        for name in _TRIGGERS:
            conn.execute(f"DROP TRIGGER IF EXISTS {name}")
        conn.execute(f"CREATE TRIGGER fleet_outbox_insert AFTER INSERT ON events BEGIN "
                     f"INSERT INTO fleet_outbox (event_id, queued_at) VALUES (NEW.id, {_NOW}); END")
        conn.execute(f"CREATE TRIGGER fleet_outbox_update AFTER UPDATE ON events WHEN {changed} BEGIN "
                     f"INSERT INTO fleet_outbox (event_id, queued_at) VALUES (NEW.id, {_NOW}); END")
        conn.execute("COMMIT")
    finally:
        conn.close()


def uninstall(db_path: Path) -> None:
    """A daemon without fleet: no triggers (an outbox nobody drains would grow forever); the table stays."""
    if not Path(db_path).exists():
        return
    try:
        conn = sqlite3.connect(str(db_path), timeout=5.0, isolation_level=None)
        try:
            if conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE "
                            "'fleet_outbox_%'").fetchone()[0]:
                for name in _TRIGGERS:
                    conn.execute(f"DROP TRIGGER IF EXISTS {name}")
        finally:
            conn.close()
    except sqlite3.Error as exc:    # the history itself works without this: say it, never stop the daemon
        log.warning("events database %s: could not remove the fleet outbox triggers: %s", db_path, exc)


class Replicator:
    """Thread "fleet-outbox": drains the outbox into PostgreSQL every `interval` (and on wake())."""

    def __init__(self, db_path: Path, database: FleetDatabase, node: str, public_url: str, metrics: Metrics,
                 interval: float) -> None:
        self.db_path = Path(db_path)
        self.database = database
        self.node = node
        self.public_url = public_url.rstrip("/")
        self.metrics = metrics
        self.interval = interval
        self.pending = 0
        self.lag = 0.0
        self.db_up = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn = sqlite3.connect(str(self.db_path), timeout=2.0, isolation_level=None, check_same_thread=False)
        self._columns = [row[1] for row in self._conn.execute("PRAGMA table_info(events)")]
        self._failing_since: float | None = None
        self._session = database.session()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            self._conn.close()
            self._session.close()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.flush()
            except Exception:       # a bug must not end replication silently
                log.exception("fleet outbox: unexpected error")
            self._wake.wait(self.interval)
            self._wake.clear()
        try:
            self.flush(limit_batches=2)     # a clean stop sends what it can, quickly
        except Exception:
            pass

    def measure(self) -> tuple[int, float]:
        """(events waiting, age in seconds of the oldest waiting change); also sets the gauges."""
        row = self._conn.execute("SELECT count(DISTINCT event_id), min(queued_at) FROM fleet_outbox").fetchone()
        self.pending = int(row[0] or 0)
        self.lag = max(0.0, time.time() - row[1]) if row[1] is not None else 0.0
        self.metrics.fleet_outbox_pending.set(self.pending)
        self.metrics.fleet_outbox_lag.set(self.lag)
        return self.pending, self.lag

    def flush(self, limit_batches: int | None = None) -> int:
        """Send batches until the outbox is empty (or PostgreSQL fails); returns the events written."""
        sent = 0
        batches = 0
        self.measure()      # the gauges show what waits before a send that may hang up to the pool's timeout
        while not (self._stop.is_set() and limit_batches is None):
            rows = self._conn.execute(
                f"SELECT o.seq, o.event_id, {', '.join('e.' + c for c in self._columns)} FROM fleet_outbox o "
                f"LEFT JOIN events e ON e.id = o.event_id ORDER BY o.seq LIMIT {BATCH}").fetchall()
            if not rows:
                break
            last_seq = rows[-1][0]
            latest: dict[int, dict[str, Any]] = {}
            for row in rows:
                if row[2] is not None:      # an event pruned since: nothing to send
                    latest[row[1]] = dict(zip(self._columns, row[2:]))
            try:
                self._send(list(latest.values()))
            except (psycopg.Error, OSError) as exc:   # PoolTimeout is a psycopg.Error too
                self._failed(exc)
                break
            self._conn.execute("DELETE FROM fleet_outbox WHERE seq <= ?", (last_seq,))
            self.metrics.fleet_outbox_replicated.inc(len(latest))
            sent += len(latest)
            batches += 1
            if limit_batches is not None and batches >= limit_batches:
                break
        self.measure()
        return sent

    def _send(self, events: list[dict[str, Any]]) -> None:
        values = [(self.node, e["id"], e["camera"], e["rule"], e["label"], e["score"], e["peak_score"],
                   e["started_at"], e["ended_at"], e.get("note"), self._url(SNAPSHOT_ROUTE, e) if e.get("snapshot")
                   else None, self._url(CLIP_ROUTE, e) if e.get("clip") and e.get("clip_state") == "complete" else None)
                  for e in events]
        with self._session.connection() as conn:
            with conn.transaction():
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO events (node, id, camera, rule, label, score, peak_score, started_at, ended_at,"
                        " note, snapshot_url, clip_url) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT (node, id) DO UPDATE SET score = EXCLUDED.score,"
                        " peak_score = EXCLUDED.peak_score, ended_at = EXCLUDED.ended_at, note = EXCLUDED.note,"
                        " snapshot_url = EXCLUDED.snapshot_url, clip_url = EXCLUDED.clip_url,"
                        " replicated_at = now()", values)
        if not self.db_up:
            if self._failing_since is not None:
                log.info("fleet outbox: PostgreSQL %s reachable again, catching up", self.database.where)
            self._failing_since = None
        self.db_up = True
        self.metrics.fleet_db_up.set(1)

    def _failed(self, exc: BaseException) -> None:
        self.db_up = False
        self.metrics.fleet_db_up.set(0)
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning("fleet outbox: PostgreSQL %s unavailable (%s); events wait in the local outbox",
                        self.database.where, " ".join(str(exc).split())[:200])

    def _url(self, route: str, event: dict[str, Any]) -> str:
        return self.public_url + route.format(id=event["id"])
