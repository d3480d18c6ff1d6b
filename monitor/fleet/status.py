"""What the fleet looks like from PostgreSQL: nodes (heartbeat, cameras held, outbox), cameras with their holder,
and the fleet's events; read by `monitor fleet status`, /api/status and /api/events?scope=fleet."""
from __future__ import annotations

from typing import Any

from monitor.fleet.database import FleetDatabase


def fleet_status(database: FleetDatabase) -> dict[str, Any]:
    """{"nodes": [...], "cameras": [...]}: ages in seconds on the database's clock; a node is alive while its
    last heartbeat is younger than its leases would last (the cameras it holds are still its own)."""
    with database.connection() as conn:
        nodes = conn.execute(
            "SELECT name, public_url, version, extract(epoch FROM now() - heartbeat_at)::float8,"
            " extract(epoch FROM heartbeat_at)::float8, cameras_held, max_cameras, outbox_pending, outbox_lag"
            " FROM nodes ORDER BY name").fetchall()
        cameras = conn.execute(
            "SELECT camera, CASE WHEN expires_at > now() THEN holder END,"
            " extract(epoch FROM expires_at - now())::float8, extract(epoch FROM acquired_at)::float8"
            " FROM leases ORDER BY camera").fetchall()
    held: dict[str, list[str]] = {}
    for camera, holder, _, _ in cameras:
        if holder:
            held.setdefault(holder, []).append(camera)
    return {
        "nodes": [{"name": n, "public_url": url, "version": v, "heartbeat_age": round(age, 3), "heartbeat_at": at,
                   "cameras_held": len(held.get(n, [])), "cameras": held.get(n, []), "max_cameras": mx,
                   "outbox_pending": pending, "outbox_lag": round(lag, 3)}
                  for n, url, v, age, at, _, mx, pending, lag in nodes],
        "cameras": [{"name": c, "holder": holder, "expires_in": round(left, 3) if holder and left is not None
                     else None, "acquired_at": acquired} for c, holder, left, acquired in cameras],
    }


def fleet_events(database: FleetDatabase, camera: str | None = None, since: float | None = None,
                 limit: int = 100) -> list[dict[str, Any]]:
    """The fleet's newest events first (every node's), as stored in PostgreSQL."""
    where, args = [], []
    if camera is not None:
        where.append("camera = %s")
        args.append(camera)
    if since is not None:
        where.append("started_at >= %s")
        args.append(since)
    sql = ("SELECT node, id, camera, rule, label, score, peak_score, started_at, ended_at, note, snapshot_url,"
           " clip_url FROM events" + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY started_at DESC, node, id DESC LIMIT %s")
    with database.connection() as conn:
        rows = conn.execute(sql, (*args, int(limit))).fetchall()
    keys = ("node", "id", "camera", "rule", "label", "score", "peak_score", "started_at", "ended_at", "note",
            "snapshot_url", "clip_url")
    return [dict(zip(keys, row)) for row in rows]


def format_status(status: dict[str, Any]) -> str:
    """The text `monitor fleet status` prints."""
    lines = [f"{'NODE':<20} {'HEARTBEAT':>10} {'CAMERAS':>8} {'OUTBOX':>7} {'LAG':>8}  URL"]
    for n in status["nodes"]:
        lines.append(f"{n['name']:<20} {n['heartbeat_age']:>9.1f}s {n['cameras_held']:>4}/{n['max_cameras']:<3} "
                     f"{n['outbox_pending']:>7} {n['outbox_lag']:>7.1f}s  {n['public_url']}")
    lines.append("")
    lines.append(f"{'CAMERA':<20} HOLDER")
    for c in status["cameras"]:
        lines.append(f"{c['name']:<20} {c['holder'] or '-'}" +
                     (f" (lease {c['expires_in']:.1f}s left)" if c["holder"] else ""))
    return "\n".join(lines)
