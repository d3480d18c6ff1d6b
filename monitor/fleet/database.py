"""The connection to the fleet's PostgreSQL: a psycopg 3 pool, the password from its file, every error worded for
a user with the DSN shown without credentials, and the schema checked at start."""
from __future__ import annotations

import logging
from typing import Any, Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool

from monitor.config.types import FleetConfig
from monitor.core.redact import redact_url
from monitor.fleet.schema import SchemaError, migrate

log = logging.getLogger(__name__)

POOL_MAX = 2            # readers (web, CLI); made on demand (min 0): no reconnect loop while the server is away


class FleetError(RuntimeError):
    """The fleet database cannot be used: one line naming the key and the (redacted) DSN."""


def describe(exc: BaseException, dsn: str) -> str:
    """One line for a psycopg error at start: what went wrong and where (DSN without credentials)."""
    where = redact_url(dsn)
    text = " ".join(str(exc).split())
    low = text.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        user = text.split('for user "', 1)[1].split('"', 1)[0] if 'for user "' in text else "?"
        return (f"fleet.password_file: PostgreSQL refused the password of user {user!r} at {where} "
                "(wrong password, or the file holds another)")
    if "does not exist" in low and "database" in low:
        return f"fleet.database: {where}: the database does not exist (create it, or fix the name)"
    if "connection refused" in low:
        return f"fleet.database: cannot connect to {where}: connection refused (is PostgreSQL running there?)"
    if "timeout" in low or "timed out" in low:
        return f"fleet.database: cannot connect to {where}: timed out"
    if "could not translate host name" in low or "name or service not known" in low:
        return f"fleet.database: cannot connect to {where}: unknown host"
    # the server's own message, first line only; it never holds our password
    return f"fleet.database: cannot use {where}: {redact_url(text)[:300]}"


class Session:
    """One connection for one thread, made again at its next use after a failure, at once: a pool backs off
    exponentially between reconnection attempts, so after a 30 s outage its next try could come 16 s late, and
    the heartbeat and the outbox should resume at their next tick."""

    def __init__(self, database: FleetDatabase) -> None:
        self.database = database
        self._conn: psycopg.Connection | None = None

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            self._conn = psycopg.connect(self.database.dsn, **self.database._kwargs)
        try:
            yield self._conn
        except (psycopg.OperationalError, psycopg.InterfaceError):
            self.close()        # whatever state the connection is in: a new one next time
            raise

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None


class FleetDatabase:
    """A pool of connections with short timeouts: a database that stops answering makes the fleet's loops fail
    fast (and fence), never hang."""

    def __init__(self, cfg: FleetConfig, node: str, timeout: float = 3.0) -> None:
        self.dsn = cfg.database
        self.where = redact_url(cfg.database)
        ms = int(timeout * 1000)
        self._kwargs: dict[str, Any] = {
            "password": cfg.password or None, "connect_timeout": max(1, int(round(timeout))),
            "application_name": f"monitor-{node}"[:63], "autocommit": True,
            # a statement may not outlive the heartbeat; a dead peer is noticed by the kernel within `timeout`
            "options": f"-c statement_timeout={ms} -c lock_timeout={ms}",
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2,
            "tcp_user_timeout": ms,
        }
        self.timeout = timeout
        self.pool: ConnectionPool | None = None

    def connect_once(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self.dsn, **self._kwargs)
        except psycopg.Error as exc:
            raise FleetError(describe(exc, self.dsn)) from None

    def open(self) -> tuple[int, int]:
        """Check the database (connect, log in, create or upgrade the schema) and open the pool; FleetError with
        one line when it cannot be used. Returns (schema version found, version now)."""
        conn = self.connect_once()
        try:
            versions = migrate(conn)
        except SchemaError as exc:
            raise FleetError(f"fleet.database: {self.where}: {exc}") from None
        except psycopg.Error as exc:
            raise FleetError(describe(exc, self.dsn)) from None
        finally:
            conn.close()
        self.pool = ConnectionPool(self.dsn, kwargs=self._kwargs, min_size=0, max_size=POOL_MAX,
                                   timeout=self.timeout, name="fleet", open=False,
                                   check=ConnectionPool.check_connection)   # a restarted server: no stale conn
        self.pool.open(wait=False)
        return versions

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection (autocommit; use conn.transaction()). Raises psycopg errors (and PoolTimeout)."""
        if self.pool is None:
            raise FleetError("fleet database not opened")
        with self.pool.connection(timeout=self.timeout) as conn:
            yield conn

    def session(self) -> Session:
        """A connection of one thread's own (the lease keeper, the outbox)."""
        return Session(self)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close(timeout=1.0)
            self.pool = None
