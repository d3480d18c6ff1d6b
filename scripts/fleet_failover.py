"""Fleet figures (issue 20), on a throw-away PostgreSQL 15 and real RTSP cameras:

1. failover: two daemon processes share fleet cameras; kill -9 of the node holding a camera -> the first
   classification of that camera on the other node (its /metrics), ROUNDS times (the killed node restarts and
   the load is rebalanced between rounds); median, min, max, against the lease time (the bound by design);
2. PostgreSQL load per node at the heartbeat interval: pg_stat_statements calls and pg_stat_database commits
   over a quiet window, per node and per second;
3. outbox catch-up: N events committed locally while PostgreSQL is stopped, then the time to drain them into
   PostgreSQL (events/s), against a baseline measured in the same run: the same rows sent one autocommitted
   INSERT at a time (the naive replication).

    .venv/bin/python scripts/fleet_failover.py [--rounds 10] [--minutes 8] [--events 5000] [--json]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from monitor.alerts.events import EventStore  # noqa: E402
from monitor.config.types import FleetConfig  # noqa: E402
from monitor.core.metrics import Metrics  # noqa: E402
from monitor.fleet import outbox  # noqa: E402
from monitor.fleet.database import FleetDatabase  # noqa: E402
from testkit.postgres import Postgres  # noqa: E402
from testkit.process import DaemonProcess  # noqa: E402
from testkit.rtsp import RtspServer, free_port  # noqa: E402

HEARTBEAT, LEASE = 1.0, 6.0
CAMERAS = ("fa", "fb")


def metric(port: int, name: str, camera: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    m = re.search(rf'^{name}{{camera="{camera}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def holders(pg: Postgres) -> dict[str, str]:
    with psycopg.connect(pg.dsn, password=pg.password) as conn:
        return dict(conn.execute("SELECT camera, holder FROM leases WHERE expires_at > now()").fetchall())


def wait(cond, timeout: float, what: str, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(what)


def failover_and_load(pg: Postgres, weights: Path, root: Path, rounds: int, minutes: float) -> dict:
    rtsp = RtspServer(free_port(), ("car-detection",)).start()
    fleet_file = root / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump({"cameras": [{"name": c, "source": rtsp.url("car-detection"), "fps": 2}
                                                      for c in CAMERAS]}))
    nodes: dict[str, dict] = {}
    for name in ("a", "b"):
        port = free_port()
        (root / name).mkdir()
        doc = {"server": {"host": "127.0.0.1", "port": port}, "model": {"weights": str(weights)}, "cameras": [],
               "events": {"database": str(root / name / "events.db")}, "logging": {"level": "info"},
               "node": {"name": name, "public_url": f"http://127.0.0.1:{port}"},
               "fleet": {"database": pg.dsn, "password_file": str(pg.password_file), "heartbeat": f"{HEARTBEAT}s",
                         "lease_time": f"{LEASE}s", "max_cameras": 2, "cameras_file": str(fleet_file)}}
        (root / name / "config.yaml").write_text(yaml.safe_dump(doc))
        nodes[name] = {"port": port, "config": root / name / "config.yaml", "proc": None}

    def start(name: str) -> None:
        nodes[name]["proc"] = DaemonProcess(nodes[name]["config"])

    times: list[float] = []
    load: dict = {}
    try:
        for name in nodes:
            start(name)
        for name in nodes:
            nodes[name]["proc"].wait_line(r"fleet: node", 90)
        wait(lambda: sorted(holders(pg).values()) == ["a", "b"], 60, "cameras spread 1/1")
        # -- PostgreSQL load at the heartbeat interval: two idle nodes, a quiet window
        with psycopg.connect(pg.dsn, password=pg.password, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
            c0 = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                              ).fetchone()[0]
            t0 = time.monotonic()
            time.sleep(20)
            calls = conn.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query NOT ILIKE "
                                 "'%pg_stat%'").fetchone()[0]
            c1 = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                              ).fetchone()[0]
            elapsed = time.monotonic() - t0
        load = {"window_s": round(elapsed, 1), "nodes": 2, "heartbeat_s": HEARTBEAT,
                "statements_per_s_per_node": round(float(calls) / elapsed / 2, 2),
                "commits_per_s_per_node": round((c1 - c0 - 2) / elapsed / 2, 2)}
        print(f"PostgreSQL load at heartbeat {HEARTBEAT:g} s: {load['statements_per_s_per_node']} statements/s and "
              f"{load['commits_per_s_per_node']} commits/s per node ({elapsed:.0f} s window, 2 idle nodes)",
              flush=True)
        # -- failover rounds
        deadline = time.monotonic() + minutes * 60
        for i in range(rounds):
            if time.monotonic() > deadline:
                print(f"time box reached after {len(times)} rounds", flush=True)
                break
            held = holders(pg)
            camera = sorted(held)[i % len(held)]
            victim = held[camera]
            other = next(n for n in nodes if n != victim)
            before = metric(nodes[other]["port"], "monitor_frames_classified_total", camera)
            killed = time.monotonic()
            nodes[victim]["proc"].kill()
            wait(lambda: metric(nodes[other]["port"], "monitor_frames_classified_total", camera) > before,
                 LEASE + 30, f"{camera} classified on {other}", interval=0.05)
            times.append(time.monotonic() - killed)
            print(f"round {i + 1}: kill -9 {victim} -> {camera} classified on {other} after {times[-1]:.2f} s",
                  flush=True)
            start(victim)
            nodes[victim]["proc"].wait_line(r"fleet: node", 90)
            wait(lambda: sorted(holders(pg).values()) == ["a", "b"], 60, "rebalanced 1/1")
    finally:
        for n in nodes.values():
            if n["proc"] is not None:
                n["proc"].kill()
        rtsp.kill()
    return {"failover_s": [round(t, 2) for t in times],
            "failover_median_s": round(statistics.median(times), 2) if times else None,
            "lease_time_s": LEASE, "heartbeat_s": HEARTBEAT, "load": load}


def catch_up(pg: Postgres, root: Path, events: int) -> dict:
    metrics = Metrics()
    metrics.enable_fleet()
    db_path = root / "catchup.db"
    store = EventStore(db_path, metrics)
    outbox.install(db_path)
    cfg = FleetConfig(database=pg.dsn, password=pg.password, heartbeat=1.0, lease_time=6.0)
    db = FleetDatabase(cfg, "catchup")
    db.open()
    rep = outbox.Replicator(db_path, db, "catchup", "http://catchup:8080", metrics, interval=1.0)
    pg.stop()
    t0 = time.monotonic()
    for i in range(events):
        ev = store.start_event(f"cam{i % 8}", "r", "car", 0.7, time.time(), snapshot=f"/s/{i}.jpg")
        store.end_event(ev, time.time(), 0.9)
    local = time.monotonic() - t0
    assert rep.flush() == 0
    pending, lag = rep.measure()
    pg.start()
    t0 = time.monotonic()
    sent = rep.flush()
    drain = time.monotonic() - t0
    with psycopg.connect(pg.dsn, password=pg.password) as conn:
        stored = conn.execute("SELECT count(*) FROM events WHERE node = 'catchup'").fetchone()[0]
    # baseline, same rows: one autocommitted INSERT per event (no batch, no transaction)
    rows = [(f"naive", i, "cam", "r", "car", 0.7, 0.9, 1.0, 2.0) for i in range(events)]
    t0 = time.monotonic()
    with psycopg.connect(pg.dsn, password=pg.password, autocommit=True) as conn:
        for row in rows:
            conn.execute("INSERT INTO events (node, id, camera, rule, label, score, peak_score, started_at, ended_at)"
                         " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", row)
    naive = time.monotonic() - t0
    rep.stop()
    db.close()
    store.close()
    out = {"events": events, "pending_during_outage": pending, "outbox_changes_per_event": 2,
           "local_commit_s": round(local, 2), "catch_up_s": round(drain, 2), "sent": sent, "stored": stored,
           "catch_up_events_per_s": round(sent / drain), "naive_events_per_s": round(events / naive),
           "ratio_vs_naive": round((sent / drain) / (events / naive), 1)}
    print(f"outbox catch-up: {sent} events in {drain:.2f} s = {out['catch_up_events_per_s']} events/s "
          f"({out['ratio_vs_naive']}x the one-INSERT-per-event baseline, {out['naive_events_per_s']} events/s); "
          f"{stored} rows, each once", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--minutes", type=float, default=8.0, help="time box of the failover rounds")
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--weights", help="model artifact (default: a demo artifact built now)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import tempfile
    root = Path(tempfile.mkdtemp(prefix="fleet-figures-"))
    root.chmod(0o755)       # the postgres user walks through it to its cluster folder
    weights = Path(args.weights) if args.weights else root / "demo.pt"
    if not args.weights:
        from monitor import weights as w
        w.demo(weights)
    pg = Postgres(root / "pg").init()
    try:
        result = {"catch_up": catch_up(pg, root, args.events),
                  **failover_and_load(pg, weights, root, args.rounds, args.minutes)}
    finally:
        pg.kill()
    if result["failover_s"]:
        print(f"failover kill -9 -> first classification elsewhere: median {result['failover_median_s']} s over "
              f"{len(result['failover_s'])} rounds (min {min(result['failover_s'])}, max "
              f"{max(result['failover_s'])}; lease {LEASE:g} s, heartbeat {HEARTBEAT:g} s)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
