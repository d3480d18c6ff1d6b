"""EventStore: the SQLite (WAL) history of alert events, committed as each event starts and ends."""
from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from monitor.core.metrics import Metrics

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    camera      TEXT NOT NULL,
    rule        TEXT NOT NULL,
    label       TEXT NOT NULL,
    score       REAL NOT NULL,
    peak_score  REAL NOT NULL,
    started_at  REAL NOT NULL,
    ended_at    REAL,
    snapshot    TEXT,
    last_seen   REAL NOT NULL,   -- newest time the event was known to be going on (crash recovery)
    note        TEXT
);
CREATE INDEX IF NOT EXISTS events_started_at ON events (started_at);
CREATE INDEX IF NOT EXISTS events_camera_started_at ON events (camera, started_at);
"""

_COLUMNS = ("id", "camera", "rule", "label", "score", "peak_score", "started_at", "ended_at", "snapshot", "note")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM events"

CRASH_NOTE = "closed at startup: the process ended while the event was open; ended_at is the last time it was seen"


class EventStoreError(RuntimeError):
    """The database cannot be opened, its schema created, or (strict reads) read; the message names the file."""


class EventStore:
    """Thread-safe event history: one connection, one lock, every statement committed on its own.

    Durability: WAL with synchronous=FULL. A commit survives SIGKILL of the process already with NORMAL (the WAL
    is in the OS page cache); FULL also fsyncs the WAL on every commit so it survives power loss. Writes happen
    only when an event starts or ends (plus a rare last_seen refresh), so the fsync cost does not matter.

    Write failures (database locked by another process beyond the busy timeout, disk full, read-only file) are
    counted in metrics.events_db_errors and logged; callers get None / nothing back instead of an exception, so
    the pipeline keeps running.
    """

    def __init__(self, path: Path | str, metrics: Metrics | None = None, busy_timeout: float = 2.0) -> None:
        self.path = Path(path)
        self._metrics = metrics
        self._lock = threading.Lock()
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit, each statement is its own committed transaction.
            conn = sqlite3.connect(str(self.path), timeout=busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise EventStoreError(f"events database {self.path}: cannot open: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("events database %s: journal_mode is %s, not wal", self.path, mode)
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            conn.close()
            raise EventStoreError(f"events database {self.path}: cannot initialise: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn
        self._owner_fd = self._claim_ownership()
        # Only the owner may close open events: another process (a CLI listing events while the daemon runs)
        # would otherwise "recover" the live daemon's open events.
        self.recovered = self._close_crashed() if self._owner_fd is not None else 0

    # -- writes ---------------------------------------------------------------------------------------------

    def start_event(self, camera: str, rule: str, label: str, score: float, started_at: float,
                    snapshot: str | None = None) -> int | None:
        """Insert an open event; returns its id, or None when the write failed (counted and logged)."""
        cur = self._write(
            "start event",
            "INSERT INTO events (camera, rule, label, score, peak_score, started_at, ended_at, snapshot, last_seen)"
            " VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?)",
            (camera, rule, label, float(score), float(score), float(started_at), snapshot, float(started_at)))
        return int(cur.lastrowid) if cur is not None and cur.lastrowid is not None else None

    def update_peak(self, event_id: int, score: float, seen_at: float | None = None) -> None:
        """Raise the stored peak to `score` if higher; `seen_at` also refreshes last_seen (crash recovery)."""
        self._write("update peak",
                    "UPDATE events SET peak_score = MAX(peak_score, ?), last_seen = MAX(last_seen, COALESCE(?, last_seen))"
                    " WHERE id = ?",
                    (float(score), seen_at, int(event_id)))

    def end_event(self, event_id: int, ended_at: float, peak_score: float) -> bool:
        """Close the event; False when the write failed (counted and logged), so the caller can try again."""
        return self._write("end event",
                           "UPDATE events SET ended_at = ?, peak_score = MAX(peak_score, ?),"
                           " last_seen = MAX(last_seen, ?) WHERE id = ?",
                           (float(ended_at), float(peak_score), float(ended_at), int(event_id))) is not None

    def set_snapshot(self, event_id: int, path: str | Path) -> None:
        self._write("set snapshot", "UPDATE events SET snapshot = ? WHERE id = ?", (str(path), int(event_id)))

    def prune(self, older_than: float, now: float | None = None) -> int:
        """Delete events that ended more than `older_than` seconds ago, and their snapshot files.

        Open events are never pruned. Returns the number of rows deleted (0 on a database error)."""
        cutoff = (time.time() if now is None else now) - older_than
        with self._lock:
            conn = self._conn
            if conn is None:
                self._error("prune", "the store is closed")
                return 0
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    snapshots = [row[0] for row in conn.execute(
                        "SELECT snapshot FROM events WHERE ended_at IS NOT NULL AND ended_at < ?"
                        " AND snapshot IS NOT NULL", (cutoff,))]
                    deleted = conn.execute("DELETE FROM events WHERE ended_at IS NOT NULL AND ended_at < ?",
                                           (cutoff,)).rowcount
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                self._error("prune", exc)
                return 0
        # Files go after the rows are committed: a crash in between leaves orphan files, never dangling rows.
        self._unlink_all(snapshots)
        if deleted:
            log.info("events: pruned %d events older than %.0f s (%d snapshot files)", deleted, older_than,
                     len(snapshots))
        return deleted

    # -- reads ----------------------------------------------------------------------------------------------

    def query(self, camera: str | None = None, since: float | None = None, limit: int = 100,
              strict: bool = False) -> list[dict]:
        """Events newest first, optionally of one camera and/or started at or after `since`. A failed read is
        logged and counted; it gives [] unless `strict` (the HTTP API), where it raises EventStoreError."""
        where: list[str] = []
        args: list[Any] = []
        if camera is not None:
            where.append("camera = ?")
            args.append(camera)
        if since is not None:
            where.append("started_at >= ?")
            args.append(float(since))
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY started_at DESC, id DESC"
        sql += " LIMIT ?"
        args.append(max(0, int(limit)))
        return [dict(zip(_COLUMNS, row)) for row in self._read("query", sql, args, strict)]

    def get(self, event_id: int, strict: bool = False) -> dict | None:
        rows = self._read("get", _SELECT + " WHERE id = ?", (int(event_id),), strict)
        return dict(zip(_COLUMNS, rows[0])) if rows else None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except sqlite3.Error as exc:
                    log.warning("events database %s: close failed: %s", self.path, exc)
                self._conn = None
            if self._owner_fd is not None:
                os.close(self._owner_fd)      # releases the flock
                self._owner_fd = None

    # -- internals ------------------------------------------------------------------------------------------

    def _claim_ownership(self) -> int | None:
        """flock `<db>.owner` for the store's lifetime; the kernel drops it when the process dies (even SIGKILL),
        so holding it proves that no live process still has events open in this database."""
        lock_path = f"{self.path}.owner"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            log.warning("events database %s: cannot open %s (%s); not closing events left open", self.path,
                        lock_path, exc)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            log.info("events database %s: in use by another process; leaving its open events alone", self.path)
            return None
        return fd

    def _close_crashed(self) -> int:
        """End events a previous process left open (ended_at NULL): once, at their last known time, with a note.

        The UPDATE only matches open rows, so running it again (another restart) changes nothing already closed."""
        cur = self._write("recover open events",
                          "UPDATE events SET ended_at = last_seen, note = ? WHERE ended_at IS NULL", (CRASH_NOTE,))
        n = cur.rowcount if cur is not None else 0
        if n:
            log.warning("events database %s: closed %d event(s) left open by a previous run", self.path, n)
        return n

    def _write(self, what: str, sql: str, args: Iterable[Any]) -> sqlite3.Cursor | None:
        with self._lock:
            if self._conn is None:
                self._error(what, "the store is closed")
                return None
            try:
                return self._conn.execute(sql, tuple(args))
            except sqlite3.Error as exc:
                self._error(what, exc)
                return None

    def _read(self, what: str, sql: str, args: Iterable[Any], strict: bool = False) -> list[tuple]:
        with self._lock:
            if self._conn is None:
                self._error(what, "the store is closed")
                if strict:
                    raise EventStoreError(f"events database {self.path}: {what} failed: the store is closed")
                return []
            try:
                return self._conn.execute(sql, tuple(args)).fetchall()
            except sqlite3.Error as exc:
                self._error(what, exc)
                if strict:
                    raise EventStoreError(f"events database {self.path}: {what} failed: {exc}") from exc
                return []

    def _error(self, what: str, exc: object) -> None:
        if self._metrics is not None:
            self._metrics.events_db_errors.inc()
        log.error("events database %s: %s failed: %s", self.path, what, exc)

    def _unlink_all(self, paths: Iterable[str]) -> None:
        for p in paths:
            try:
                Path(p).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("events: cannot delete snapshot %s: %s", p, exc)
