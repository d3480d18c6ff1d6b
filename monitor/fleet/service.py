"""Fleet: the stage assembled for the daemon (database checked at start, outbox replication, leases)."""
from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Mapping

from monitor.config.types import CameraConfig, Config
from monitor.core.metrics import Metrics
from monitor.fleet import outbox
from monitor.fleet.cameras import load_fleet_cameras
from monitor.fleet.database import FleetDatabase
from monitor.fleet.leases import ApplyCameras, LeaseKeeper

log = logging.getLogger(__name__)


def public_url(config: Config) -> str:
    """node.public_url, else http://<host name>:<port> (what other nodes' pages link to)."""
    if config.node.public_url:
        return config.node.public_url.rstrip("/")
    host = config.server.host
    if host in ("0.0.0.0", "::", "127.0.0.1", "localhost", "::1"):
        host = socket.gethostname() if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{config.server.port}"


def fleet_cameras(config: Config) -> tuple[CameraConfig, ...]:
    """The fleet file's cameras (ConfigError with key path and line); none without fleet.cameras_file."""
    if config.fleet is None or config.fleet.cameras_file is None:
        return ()
    return load_fleet_cameras(Path(config.fleet.cameras_file), tuple(c.name for c in config.cameras))


class Fleet:
    """Owned by the daemon when config.fleet is set. open() raises FleetError (one line) when the database cannot
    be used; start() after the daemon's own components; stop() before them (its cameras stop first)."""

    def __init__(self, config: Config, metrics: Metrics, apply: ApplyCameras) -> None:
        assert config.fleet is not None
        self.config = config
        self.node = config.node.name
        self.url = public_url(config)
        metrics.enable_fleet()
        self.metrics = metrics
        self.cameras = fleet_cameras(config)
        self.database = FleetDatabase(config.fleet, self.node, timeout=min(3.0, max(0.5, config.fleet.heartbeat)))
        self.db_path = Path(config.events.database)
        self.replicator: outbox.Replicator | None = None
        self.keeper: LeaseKeeper | None = None
        self._apply = apply

    def open(self) -> None:
        found, now = self.database.open()
        if found != now:
            log.info("fleet: schema of %s %s to version %d", self.database.where,
                     "created" if found == 0 else f"upgraded from version {found}", now)
        outbox.install(self.db_path)
        self.replicator = outbox.Replicator(self.db_path, self.database, self.node, self.url, self.metrics,
                                            self.config.fleet.heartbeat)
        self.keeper = LeaseKeeper(self.database, self.config.fleet, self.node, self.url, self.cameras, self.metrics,
                                  self._apply, outbox_state=lambda: (self.replicator.pending, self.replicator.lag))
        self.replicator.measure()
        self.metrics.fleet_db_up.set(1)
        self.metrics.fleet_cameras_held.set(0)

    def start(self) -> None:
        assert self.replicator is not None and self.keeper is not None
        self.replicator.start()
        self.keeper.start()
        log.info("fleet: node %s (%s) on %s: %d fleet cameras, up to %d here", self.node, self.url,
                 self.database.where, len(self.cameras), self.config.fleet.max_cameras)

    def stop(self, timeout: float = 3.0) -> None:
        if self.keeper is not None:
            self.keeper.stop(timeout=timeout / 2)
        if self.replicator is not None:
            self.replicator.stop(timeout=timeout / 2)
        self.database.close()

    def reload(self, config: Config) -> None:
        """SIGHUP: the fleet file read again (the caller validated it with fleet_cameras())."""
        self.cameras = fleet_cameras(config)
        if self.keeper is not None:
            self.keeper.update_cameras(self.cameras)

    def wake(self) -> None:
        if self.replicator is not None:
            self.replicator.wake()

    def held(self) -> Mapping[str, CameraConfig]:
        return dict(self.keeper.held) if self.keeper is not None else {}
