"""The fleet's PostgreSQL schema and its versioned migrations.

One row in `schema_version` says which migrations ran. A node creates or upgrades the schema at start, inside
one transaction holding an advisory lock (nodes starting together do not race), and refuses a database whose
version is newer than it knows: an older monitor must not write rows a newer schema reads differently.
"""
from __future__ import annotations

from typing import Any

_LOCK_KEY = 7_420_020   # pg_advisory_xact_lock key of the migrations (any constant the fleet agrees on)

# Each entry brings the schema from version i to i + 1. Append only: a released migration never changes.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE nodes (
        name          text PRIMARY KEY,
        public_url    text NOT NULL,
        version       text NOT NULL,
        started_at    timestamptz NOT NULL,
        heartbeat_at  timestamptz NOT NULL,
        max_cameras   integer NOT NULL,
        cameras_held  integer NOT NULL DEFAULT 0,
        outbox_pending integer NOT NULL DEFAULT 0,
        outbox_lag    double precision NOT NULL DEFAULT 0
    );
    CREATE TABLE leases (
        camera       text PRIMARY KEY,
        holder       text,
        expires_at   timestamptz,
        acquired_at  timestamptz
    );
    CREATE TABLE events (
        node          text NOT NULL,
        id            bigint NOT NULL,
        camera        text NOT NULL,
        rule          text NOT NULL,
        label         text NOT NULL,
        score         double precision NOT NULL,
        peak_score    double precision NOT NULL,
        started_at    double precision NOT NULL,
        ended_at      double precision,
        note          text,
        snapshot_url  text,
        clip_url      text,
        replicated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (node, id)
    );
    CREATE INDEX events_started_at ON events (started_at DESC);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaError(RuntimeError):
    """The database holds a schema this node cannot use (newer than it knows)."""


def migrate(conn: Any) -> tuple[int, int]:
    """Create or upgrade the schema on a psycopg connection; returns (version found, version now). Raises
    SchemaError for a newer schema. Commits."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        found = int(row[0]) if row and row[0] is not None else 0
        if found > SCHEMA_VERSION:
            raise SchemaError(f"the database's fleet schema is version {found}, newer than this monitor knows "
                              f"({SCHEMA_VERSION}): upgrade monitor on this node (it will not write to it)")
        for sql in MIGRATIONS[found:]:
            conn.execute(sql)
        if found < SCHEMA_VERSION:
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
    return found, SCHEMA_VERSION
