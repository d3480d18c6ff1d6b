"""Camera leases: which node runs which fleet camera, through rows (camera, holder, expires_at) in PostgreSQL.

Thread "fleet-lease", once per heartbeat, in one transaction: refresh this node's row, renew its leases, claim
free or expired ones with SELECT ... FOR UPDATE SKIP LOCKED up to its share, and (rebalance) let one go when it
holds more than its share while another live node holds less. All times in the database are the database's
own clock (now()), so the nodes' clocks never meet.

Fencing by time: a renewal sent at monotonic t0 keeps the leases until at least t0 + lease_time on the
database's clock, so this node may run them until t0 + lease_time - margin on its own monotonic clock. The
"fleet-fence" thread stops every fleet camera when that moment passes without a newer renewal (the database
unreachable, the keeper stuck), before any other node can claim them: a camera never has two holders. A node
stops a camera before it releases the lease, never after.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable, Mapping

import psycopg

from monitor import __version__
from monitor.config.types import CameraConfig, FleetConfig
from monitor.core.metrics import Metrics
from monitor.fleet.database import FleetDatabase

log = logging.getLogger(__name__)

STABLE_BEATS = 3        # the set of live nodes unchanged this many heartbeats before a lease is let go
RELEASE_EVERY = 2       # heartbeats between two releases (the taker shows its new count meanwhile)

ApplyCameras = Callable[[Mapping[str, CameraConfig]], None]


def fence_margin(cfg: FleetConfig) -> float:
    """Seconds before its lease can expire that a node stops its cameras: a heartbeat (the next renewal is not
    due yet) or a quarter of the lease, whichever is more, so stopping them has time."""
    return max(cfg.heartbeat, cfg.lease_time / 4)


class LeaseKeeper:
    """Claims, renews and releases this node's fleet cameras; `apply(cameras)` makes the daemon run exactly those
    (called from the keeper's and the fence's threads, one at a time)."""

    def __init__(self, database: FleetDatabase, cfg: FleetConfig, node: str, public_url: str,
                 cameras: tuple[CameraConfig, ...], metrics: Metrics, apply: ApplyCameras,
                 outbox_state: Callable[[], tuple[int, float]] = lambda: (0, 0.0)) -> None:
        self.database = database
        self.cfg = cfg
        self.node = node
        self.public_url = public_url
        self.metrics = metrics
        self._apply = apply
        self._outbox_state = outbox_state
        self._known: dict[str, CameraConfig] = {c.name: c for c in cameras}
        self.held: dict[str, CameraConfig] = {}     # what this node runs now
        self._valid_until = 0.0                     # monotonic: run the held cameras until then
        self._lock = threading.Lock()               # held, _valid_until, apply()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._alive_seen: tuple[str, ...] = ()
        self._stable = 0
        self._since_release = RELEASE_EVERY
        self._failing = False
        self.margin = fence_margin(cfg)
        self.beats = 0
        self._seeded: set[str] = set()         # camera names whose lease rows this node made sure exist
        self._session = database.session()

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        for name, target in (("fleet-lease", self._run), ("fleet-fence", self._fence_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the cameras, then hand their leases back (others take them at their next heartbeat)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        with self._lock:
            names = list(self.held)
            self._set_held({})
        if names:
            try:
                with self._session.connection() as conn:
                    conn.execute("UPDATE leases SET holder = NULL, expires_at = NULL WHERE holder = %s",
                                 (self.node,))
            except psycopg.Error as exc:
                log.warning("fleet: could not hand back leases (%s); they expire in %.0f s", exc, self.cfg.lease_time)
        self._session.close()

    def update_cameras(self, cameras: tuple[CameraConfig, ...]) -> None:
        """A reloaded fleet file: the next heartbeat renews, claims and releases against it."""
        with self._lock:
            self._known = {c.name: c for c in cameras}

    # -- the fence ------------------------------------------------------------------------------------------

    def _fence_loop(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                if self.held and time.monotonic() >= self._valid_until:
                    lost = len(self.held)
                    log.error("fleet: leases not renewed in time; stopping %d fleet cameras before they can "
                              "expire (%s)", lost, ", ".join(sorted(self.held)))
                    self._set_held({})
                    self.metrics.fleet_lease_lost.inc(lost)

    # -- the heartbeat --------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.beat()
            except Exception as exc:      # psycopg errors, PoolTimeout; a bug must not end the keeper either
                self.metrics.fleet_db_up.set(0)
                if not self._failing:
                    self._failing = True
                    log.warning("fleet: heartbeat failed (%s); fleet cameras stop in at most %.1f s unless "
                                "PostgreSQL answers again", " ".join(str(exc).split())[:200],
                                max(0.0, self._valid_until - time.monotonic()))
                if not isinstance(exc, psycopg.Error):
                    log.exception("fleet: unexpected heartbeat error")
            self._stop.wait(max(0.05, self.cfg.heartbeat - (time.monotonic() - t0)))

    def beat(self) -> None:
        """One heartbeat: node row, renew, claim or release (one transaction), then start what was claimed."""
        t0 = time.monotonic()
        lease = self.cfg.lease_time
        with self._lock:
            known = dict(self._known)
            running = set(self.held)
            seeded = self._seeded
        pending, lag = self._outbox_state()
        release: str | None = None
        with self._session.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO nodes (name, public_url, version, started_at, heartbeat_at, max_cameras, cameras_held,"
                " outbox_pending, outbox_lag) VALUES (%s, %s, %s, now(), now(), %s, %s, %s, %s)"
                " ON CONFLICT (name) DO UPDATE SET public_url = EXCLUDED.public_url, version = EXCLUDED.version,"
                " heartbeat_at = now(), max_cameras = EXCLUDED.max_cameras, cameras_held = EXCLUDED.cameras_held,"
                " outbox_pending = EXCLUDED.outbox_pending, outbox_lag = EXCLUDED.outbox_lag",
                (self.node, self.public_url, __version__, self.cfg.max_cameras, len(running), pending, lag))
            if known and seeded != known.keys():  # once, and after a reload: O(cameras) rows, not every beat
                conn.cursor().executemany("INSERT INTO leases (camera) VALUES (%s) ON CONFLICT DO NOTHING",
                                          [(name,) for name in known])
            # Ours by name: a lease still valid from this node's previous life (kill -9, restart) is adopted.
            mine = [r[0] for r in conn.execute(
                "UPDATE leases SET expires_at = now() + make_interval(secs => %s) WHERE holder = %s"
                " AND expires_at > now() RETURNING camera", (lease, self.node))]
            stray = [name for name in mine if name not in known]
            if stray:       # the fleet file no longer lists them
                conn.execute("UPDATE leases SET holder = NULL, expires_at = NULL WHERE camera = ANY(%s)"
                             " AND holder = %s", (stray, self.node))
            mine = [name for name in mine if name in known]
            alive = conn.execute("SELECT name, cameras_held FROM nodes WHERE heartbeat_at > now() - "
                                 "make_interval(secs => %s) AND max_cameras > 0 ORDER BY name", (lease,)).fetchall()
            # the first heartbeat only says "here": nodes starting together all count before anyone claims
            share = self._share(len(known), max(1, len(alive))) if self.beats else 0
            claimed: list[str] = []
            if len(mine) < share:
                claimed = [r[0] for r in conn.execute(
                    "SELECT camera FROM leases WHERE camera = ANY(%s) AND (holder IS NULL OR expires_at IS NULL"
                    " OR expires_at <= now()) ORDER BY camera LIMIT %s FOR UPDATE SKIP LOCKED",
                    (list(known), share - len(mine)))]
                if claimed:
                    conn.execute("UPDATE leases SET holder = %s, expires_at = now() + make_interval(secs => %s),"
                                 " acquired_at = now() WHERE camera = ANY(%s)", (self.node, lease, claimed))
            release = self._pick_release(mine, alive, share)
        self.beats += 1
        self._seeded = set(known)
        self.metrics.fleet_db_up.set(1)
        if self._failing:
            self._failing = False
            log.info("fleet: heartbeat renewed again")
        now_held = set(mine) | set(claimed)
        with self._lock:
            self._valid_until = t0 + lease - self.margin
            if claimed:
                self.metrics.fleet_lease_acquired.inc(len(claimed))
                log.info("fleet: claimed %s", ", ".join(claimed))
            if release is not None:
                now_held.discard(release)
            if now_held != set(self.held):
                self._set_held({n: known[n] for n in sorted(now_held) if n in known})
        if release is not None:
            self._release(release)

    def _share(self, cameras: int, nodes: int) -> int:
        return min(self.cfg.max_cameras, math.ceil(cameras / nodes))

    def _pick_release(self, mine: list[str], alive: list[tuple[str, int]], share: int) -> str | None:
        """Rebalance with hysteresis: let one camera go only when this node holds more than its share (rounded
        up), another live node holds less than its share (rounded down) and could take it, the set of live nodes
        has not changed for STABLE_BEATS heartbeats, and no other release happened in the last RELEASE_EVERY."""
        names = tuple(name for name, _ in alive)
        self._stable = self._stable + 1 if names == self._alive_seen else 0
        self._alive_seen = names
        self._since_release += 1
        if len(mine) <= share or self._stable < STABLE_BEATS or self._since_release < RELEASE_EVERY:
            return None
        floor_share = min(self.cfg.max_cameras, len(self._known) // max(1, len(alive)))
        if not any(name != self.node and held < floor_share for name, held in alive):
            return None
        self._since_release = 0
        return sorted(mine)[-1]

    def _release(self, name: str) -> None:
        """The camera is already stopped (apply() above); now the lease goes back."""
        try:
            with self._session.connection() as conn:
                conn.execute("UPDATE leases SET holder = NULL, expires_at = NULL WHERE camera = %s AND holder = %s",
                             (name, self.node))
            self.metrics.fleet_lease_lost.inc()
            log.info("fleet: released %s (rebalance: more than this node's share)", name)
        except psycopg.Error as exc:
            self.metrics.fleet_lease_lost.inc()
            log.warning("fleet: release of %s failed (%s); it expires on its own", name, exc)

    def _set_held(self, cameras: dict[str, CameraConfig]) -> None:
        """Under self._lock: make the daemon run exactly `cameras` (stops before starts: see daemon)."""
        self.held = cameras
        self.metrics.fleet_cameras_held.set(len(cameras))
        self._apply(dict(cameras))
