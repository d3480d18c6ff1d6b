"""EventStore: the SQLite (WAL) history of alert events, committed as each event starts and ends."""
from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import stat
import threading
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from monitor.alerts.event import CLIP_STATES, Event
from monitor.alerts.snapshot_files import SNAPSHOT_NAME, TMP_NAME, clean_snapshot_path

if TYPE_CHECKING:
    from monitor.core.metrics import Metrics

log = logging.getLogger(__name__)

TMP_STALE_AFTER = 3600.0        # seconds: a .tmp this old was left by a process that died while writing it
SWEEP_DOWN_TO = 0.9             # over the byte cap, the oldest files go until the folder holds 90 % of it
_IN_CHUNK = 500                 # paths per "IN (...)" query (SQLite's variable limit is 32766, keep it small)

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
    note        TEXT,
    box         TEXT             -- "x,y,w,h": the frame region the label was scored on
);
CREATE INDEX IF NOT EXISTS events_started_at ON events (started_at);
CREATE INDEX IF NOT EXISTS events_camera_started_at ON events (camera, started_at);
"""

# A row is an Event: one column per field (the table has one more, last_seen, which only the store reads).
_COLUMNS = tuple(f.name for f in fields(Event))
# Columns added after the first release, with their type: a database made before gets them on open (old rows
# hold NULL: an event from then has no box).
_ADDED = {"box": "TEXT", "clip": "TEXT", "clip_seconds": "REAL", "clip_state": "TEXT NOT NULL DEFAULT 'none'"}
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
            _add_columns(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise EventStoreError(f"events database {self.path}: cannot initialise: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn
        self._owner_fd = self._claim_ownership()
        # Only the owner may close open events: another process (a CLI listing events while the daemon runs)
        # would otherwise "recover" the live daemon's open events.
        self.recovered = self._close_crashed() if self._owner_fd is not None else 0

    # -- writes ---------------------------------------------------------------------------------------------

    def insert(self, event: Event) -> Event:
        """Insert an event as it starts (open: ended_at None); returns it with the id of its row, or unchanged
        (id None) when the write failed (counted and logged)."""
        cur = self._write(
            "start event",
            "INSERT INTO events (camera, rule, label, score, peak_score, started_at, ended_at, snapshot, box,"
            " last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (event.camera, event.rule, event.label, float(event.score), float(event.peak_score),
             float(event.started_at), event.ended_at, event.snapshot, _box_text(event.box), float(event.started_at)))
        if cur is None or cur.lastrowid is None:
            return event
        return replace(event, id=int(cur.lastrowid))

    def start_event(self, camera: str, rule: str, label: str, score: float, started_at: float,
                    snapshot: str | None = None) -> int | None:
        """insert() from the parts (tools and tests): the new row's id, or None when the write failed."""
        return self.insert(Event(camera=camera, rule=rule, label=label, score=float(score), peak_score=float(score),
                                 started_at=float(started_at), snapshot=snapshot)).id

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

    def set_clip(self, event_id: int, *, file: str | None, seconds: float | None, state: str) -> bool:
        """The event's clip (file relative to the clips folder) and its state; False when the write failed."""
        if state not in CLIP_STATES:
            raise ValueError(f"clip state {state!r} is not one of {CLIP_STATES}")
        return self._write("set clip", "UPDATE events SET clip = ?, clip_seconds = ?, clip_state = ? WHERE id = ?",
                           (file, None if seconds is None else float(seconds), state, int(event_id))) is not None

    def clips_in_state(self, state: str) -> list[Event]:
        """Events whose clip is in `state` (start-up: "recording" rows a killed process left)."""
        return [_event(row) for row in self._read("clips in state", _SELECT + " WHERE clip_state = ?", (state,))]

    def clip_files(self) -> set[str] | None:
        """Every clip file a row names (retention: a file no row names is an orphan); None when unreadable."""
        try:
            rows = self._read("clip files", "SELECT DISTINCT clip FROM events WHERE clip IS NOT NULL", (),
                              strict=True)
        except EventStoreError:
            return None
        return {r[0] for r in rows}

    def forget_clip(self, file: str, state: str = "none") -> bool:
        """Rows naming `file` lose it (retention deletes it next): never a row pointing at a missing file."""
        return self._write("forget clip", "UPDATE events SET clip = NULL, clip_seconds = NULL, clip_state = ? "
                           "WHERE clip = ?", (state, file)) is not None

    def prune(self, older_than: float, now: float | None = None, snapshots: Path | str | None = None,
              max_bytes: int | None = None) -> int:
        """Delete events that ended more than `older_than` seconds ago, and their snapshot files (with the
        overlay-free .clean.jpg twin). With `snapshots` (the snapshot folder) also sweep that folder: files older
        than `older_than` that no event refers to (snapshots of events whose row could not be written, `-noid-`)
        and, above `max_bytes`, the oldest files (see sweep_snapshots).

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
                    files = [row[0] for row in conn.execute(
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
        # Files go after the rows are committed: a crash in between leaves orphan files, never dangling rows
        # (and the folder sweep below deletes orphans).
        self._unlink_all(files + [str(clean_snapshot_path(f)) for f in files])
        if deleted:
            log.info("events: pruned %d events older than %.0f s (%d snapshot files)", deleted, older_than,
                     len(files))
        if snapshots is not None:
            sweep_snapshots(snapshots, older_than=older_than, max_bytes=max_bytes, store=self, now=now)
        return deleted

    def referenced(self, paths: Iterable[str]) -> set[str] | None:
        """Which of `paths` an event row names as its snapshot; None when the database cannot tell (then no file
        may be taken for an orphan)."""
        paths = list(paths)
        found: set[str] = set()
        for i in range(0, len(paths), _IN_CHUNK):
            chunk = paths[i:i + _IN_CHUNK]
            try:
                rows = self._read("find snapshots", f"SELECT snapshot FROM events WHERE snapshot IN "
                                  f"({', '.join('?' * len(chunk))})", chunk, strict=True)
            except EventStoreError:
                return None
            found.update(r[0] for r in rows)
        return found

    def forget_snapshots(self, paths: Iterable[str]) -> bool:
        """Clear the snapshot of the events naming one of `paths` (files about to be deleted); False when the
        write failed (then the files must stay: rows never point at missing files by our doing)."""
        paths = [(p,) for p in paths]
        if not paths:
            return True
        with self._lock:
            if self._conn is None:
                self._error("forget snapshots", "the store is closed")
                return False
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany("UPDATE events SET snapshot = NULL WHERE snapshot = ?", paths)
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                self._error("forget snapshots", exc)
                return False
        return True

    # -- reads ----------------------------------------------------------------------------------------------

    def query(self, camera: str | None = None, since: float | None = None, limit: int = 100,
              strict: bool = False) -> list[Event]:
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
        return [_event(row) for row in self._read("query", sql, args, strict)]

    def get(self, event_id: int, strict: bool = False) -> Event | None:
        rows = self._read("get", _SELECT + " WHERE id = ?", (int(event_id),), strict)
        return _event(rows[0]) if rows else None

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


def _event(row: tuple) -> Event:
    values = dict(zip(_COLUMNS, row))
    values["box"] = _box_value(values["box"])
    return Event(**values)


def _add_columns(conn: sqlite3.Connection) -> None:
    have = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
    for name, kind in _ADDED.items():
        if name not in have:
            conn.execute(f"ALTER TABLE events ADD COLUMN {name} {kind}")


def _box_text(box: tuple[int, int, int, int] | None) -> str | None:
    return None if box is None else ",".join(str(int(v)) for v in box)


def _box_value(text: str | None) -> tuple[int, int, int, int] | None:
    """A stored box back as a tuple; None for none or for a value this version cannot read."""
    if text is None:
        return None
    try:
        x, y, w, h = (int(v) for v in str(text).split(","))
    except ValueError:
        return None
    return x, y, w, h


# -- the snapshot folder ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotSweep:
    deleted: int = 0            # files deleted
    freed: int = 0              # their bytes
    left: int = 0               # bytes of snapshot files left in the folder


@dataclass
class _Group:
    """A snapshot and its .clean.jpg twin: deleted together, aged by the older of the two."""
    mtime: float
    size: int = 0
    paths: list[str] = field(default_factory=list)


_sweep_lock = threading.Lock()


def sweep_snapshots(root: Path | str, *, older_than: float | None = None, max_bytes: int | None = None,
                    store: EventStore | None = None, now: float | None = None) -> SnapshotSweep:
    """Delete from the snapshot folder `root`, oldest first:
      - `.tmp` files left by a process that died while writing (older than TMP_STALE_AFTER);
      - snapshots older than `older_than` seconds that no event row names (orphans: the `-noid-` files of events
        whose row could not be written, files of rows deleted before a crash); with no `store` every old file;
      - while the folder holds more than `max_bytes`, the oldest snapshots, down to SWEEP_DOWN_TO of it (their
        rows forget the path first, so no row ever points at a missing file).
    Only files named as the snapshot sink names them are touched. Never raises for a file or the database:
    problems are logged and that file stays."""
    wall = time.time() if now is None else now
    root = Path(root)
    with _sweep_lock:
        groups, stale_tmp = _scan_snapshots(root, wall)
        doomed: list[str] = list(stale_tmp)
        aged = 0
        if older_than is not None:
            cutoff = wall - older_than
            old = {key: g for key, g in groups.items() if g.mtime < cutoff}
            refs = store.referenced(old) if store is not None and old else set()
            if refs is None:
                log.warning("snapshots %s: cannot read the events database; orphan files stay for now", root)
            else:
                for key, g in old.items():
                    if key not in refs:
                        doomed += g.paths
                        aged += len(g.paths)
                        del groups[key]
        total = sum(g.size for g in groups.values())
        capped = 0
        if max_bytes is not None and total > max_bytes:
            target = int(max_bytes * SWEEP_DOWN_TO)
            over: list[str] = []
            for key, g in sorted(groups.items(), key=lambda kv: kv[1].mtime):
                if total <= target:
                    break
                over.append(key)
                total -= g.size
            if store is not None and not store.forget_snapshots(over):
                log.warning("snapshots %s: over the %d byte cap, but the events database cannot be updated; "
                            "the oldest files stay for now", root, max_bytes)
                total = sum(g.size for g in groups.values())
            else:
                for key in over:
                    doomed += groups[key].paths
                    capped += len(groups[key].paths)
        freed = 0
        deleted = 0
        for path in doomed:
            try:
                size = os.stat(path, follow_symlinks=False).st_size
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("snapshots: cannot delete %s: %s", path, exc)
                continue
            freed += size
            deleted += 1
        if deleted:
            log.info("snapshots %s: deleted %d files (%.1f MB): %d stale temporary, %d older than %s without an "
                     "event, %d over the %s byte cap; %.1f MB left", root, deleted, freed / 1e6, len(stale_tmp),
                     aged, "the retention" if older_than is None else f"{older_than / 86400:g} days", capped,
                     "(none)" if max_bytes is None else max_bytes, total / 1e6)
        return SnapshotSweep(deleted, freed, total)


def _scan_snapshots(root: Path, wall: float) -> tuple[dict[str, _Group], list[str]]:
    """The snapshot files under `root` grouped by their main file's path, and stale .tmp files."""
    groups: dict[str, _Group] = {}
    stale: list[str] = []
    def unreadable(exc: OSError) -> None:
        if not isinstance(exc, FileNotFoundError):     # no folder yet (no snapshot written): nothing to sweep
            log.warning("snapshots: %s", exc)

    for folder, dirs, names in os.walk(root, onerror=unreadable):
        for name in names:
            is_tmp = name.endswith(".tmp") and TMP_NAME.fullmatch(name) is not None
            if not is_tmp and not SNAPSHOT_NAME.fullmatch(name):
                continue
            path = os.path.join(folder, name)
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                continue                        # deleted meanwhile
            if not stat.S_ISREG(st.st_mode):
                continue                        # a symlink or folder with a snapshot's name: not ours
            if is_tmp:
                if st.st_mtime < wall - TMP_STALE_AFTER:
                    stale.append(path)
                continue
            key = path[: -len(".clean.jpg")] + ".jpg" if name.endswith(".clean.jpg") else path
            g = groups.get(key)
            if g is None:
                g = groups[key] = _Group(st.st_mtime)
            g.mtime = min(g.mtime, st.st_mtime)
            g.size += st.st_size
            g.paths.append(path)
    return groups, stale
