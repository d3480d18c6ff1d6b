"""Fleet, without daemons: the PostgreSQL schema and its migrations, the errors a node gives at start, the outbox
through a real outage, and the fleet cameras file's errors. A real PostgreSQL 15 (testkit/postgres.py)."""
from __future__ import annotations

import re
import time
from pathlib import Path

import psycopg
import pytest

from monitor.alerts.events import EventStore
from monitor.config.loader import ConfigError, parse_config
from monitor.config.types import FleetConfig
from monitor.core.metrics import Metrics
from monitor.fleet import outbox
from monitor.fleet.cameras import load_fleet_cameras
from monitor.fleet.database import FleetDatabase, FleetError
from monitor.fleet.schema import SCHEMA_VERSION
from monitor.fleet.status import fleet_events
from testkit.postgres import postgres  # noqa: F401  (module-scoped fixture)
from testkit.postgres import Postgres


def fleet_cfg(pg: Postgres, **over: object) -> FleetConfig:
    return FleetConfig(**{"database": pg.dsn, "password": pg.password, "heartbeat": 0.5, "lease_time": 3.0,
                          **over})


def test_schema_is_created_then_kept_and_a_newer_one_is_refused(postgres: Postgres) -> None:
    db = FleetDatabase(fleet_cfg(postgres), "n1")
    assert db.open() == (0, SCHEMA_VERSION)
    db.close()
    again = FleetDatabase(fleet_cfg(postgres), "n2")
    assert again.open() == (SCHEMA_VERSION, SCHEMA_VERSION)
    again.close()
    postgres.psql("CREATE DATABASE newer")
    postgres.psql(f"CREATE TABLE schema_version (version integer NOT NULL); "
                  f"INSERT INTO schema_version VALUES ({SCHEMA_VERSION + 1})", database="newer")
    newer = FleetDatabase(fleet_cfg(postgres, database=postgres.dsn.rsplit("/", 1)[0] + "/newer"), "n1")
    with pytest.raises(FleetError) as err:
        newer.open()
    line = str(err.value)
    assert "\n" not in line and "newer than this monitor knows" in line and f"version {SCHEMA_VERSION + 1}" in line
    assert line.startswith("fleet.database: postgresql://***@127.0.0.1:")
    # nothing was written to it
    assert postgres.psql("SELECT count(*) FROM information_schema.tables WHERE table_name = 'leases'",
                         database="newer") == "0"


@pytest.mark.parametrize("change, expected", [
    ({"password": "wrong-password"}, "fleet.password_file: PostgreSQL refused the password of user 'monitor'"),
    ({"port": "1"}, "connection refused"),
    ({"database": "nosuchdb"}, "the database does not exist"),
])
def test_wrong_dsn_or_password_is_one_clear_line(postgres: Postgres, change: dict, expected: str) -> None:
    dsn = postgres.dsn
    if "port" in change:
        dsn = dsn.replace(f":{postgres.port}/", f":{change['port']}/")
    if "database" in change:
        dsn = dsn.rsplit("/", 1)[0] + "/" + change["database"]
    db = FleetDatabase(fleet_cfg(postgres, database=dsn, password=change.get("password", postgres.password)), "n1")
    with pytest.raises(FleetError) as err:
        db.open()
    line = str(err.value)
    assert expected in line and "\n" not in line, line
    assert postgres.password not in line and "wrong-password" not in line


def test_config_refuses_a_password_in_the_dsn(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"cameras": [], "fleet": {"database": "postgresql://monitor:hunter2@db/monitor"}})
    assert err.value.errors == ["fleet.database: must not hold the password (put it in a file named by "
                                "fleet.password_file)"]
    with pytest.raises(ConfigError) as err:
        parse_config({"cameras": []})
    assert err.value.errors == ["cameras: must list at least one camera (got [])"]
    with pytest.raises(ConfigError) as err:
        parse_config({"cameras": [], "fleet": {"database": "postgresql://m@db/m", "heartbeat": "5s",
                                               "lease_time": "10s"}})
    assert err.value.errors[0].startswith("fleet.lease_time: must be at least 3 heartbeats (15s)")


def pg_events(pg: Postgres, node: str) -> list[tuple]:
    out = pg.psql(f"SELECT id, camera, peak_score, ended_at IS NOT NULL, snapshot_url FROM events "
                  f"WHERE node = '{node}' ORDER BY id")
    return [tuple(line.split("|")) for line in out.splitlines()] if out else []


def test_outbox_replicates_idempotently_and_survives_an_outage(postgres: Postgres, tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.enable_fleet()
    db_path = tmp_path / "events.db"
    store = EventStore(db_path, metrics)
    outbox.install(db_path)
    db = FleetDatabase(fleet_cfg(postgres), "box1", timeout=1.0)
    db.open()
    rep = outbox.Replicator(db_path, db, "box1", "http://box1:8080", metrics, interval=0.2)
    a = store.start_event("cam1", "r", "car", 0.6, time.time(), snapshot="/s/1.jpg")
    store.update_peak(a, 0.9, seen_at=time.time())
    store.update_peak(a, 0.5, seen_at=time.time() + 1)      # last_seen only: no outbox row
    assert rep.measure()[0] == 1
    assert rep.flush() == 1
    assert pg_events(postgres, "box1") == [(str(a), "cam1", "0.9", "f", f"http://box1:8080/api/events/{a}/snapshot.jpg")]
    store.end_event(a, time.time(), 0.95)
    rep.flush()
    # the same batch sent again (a crash between the PostgreSQL commit and the outbox delete): nothing changes
    rep._send([{"id": a, "camera": "cam1", "rule": "r", "label": "car", "score": 0.6, "peak_score": 0.95,
                "started_at": 1.0, "ended_at": 2.0, "snapshot": None}])
    assert postgres.psql("SELECT count(*) FROM events WHERE node = 'box1'") == "1"
    assert metrics.registry.get_sample_value("monitor_fleet_db_up") == 1

    postgres.stop()
    try:
        ids = []
        t0 = time.monotonic()
        for i in range(40):       # alerts keep being committed locally, fast, while PostgreSQL is away
            ids.append(store.start_event(f"cam{i % 3}", "r", "car", 0.7, time.time()))
            store.end_event(ids[-1], time.time(), 0.8)
        assert time.monotonic() - t0 < 10.0 and None not in ids     # no wait on PostgreSQL (2-core, loaded)
        assert rep.flush() == 0
        time.sleep(0.3)
        pending, lag = rep.measure()
        assert pending == 40 and lag > 0.2
        assert metrics.registry.get_sample_value("monitor_fleet_db_up") == 0
        assert metrics.registry.get_sample_value("monitor_fleet_outbox_pending") == 40
    finally:
        postgres.start()
    assert rep.flush() >= 40
    assert rep.measure() == (0, 0.0)
    rows = pg_events(postgres, "box1")
    assert [int(r[0]) for r in rows] == sorted([a, *ids])       # every event once: 0 lost, 0 duplicated
    assert all(r[3] == "t" for r in rows)
    listed = fleet_events(db, limit=5)
    assert len(listed) == 5 and listed[0]["node"] == "box1"
    rep.stop()
    db.close()
    store.close()
    outbox.uninstall(db_path)
    store2 = EventStore(db_path, metrics)
    store2.start_event("cam1", "r", "car", 0.6, time.time())
    store2.close()
    conn = psycopg  # noqa: F841  (imported for the errors the module raises)
    import sqlite3
    assert sqlite3.connect(db_path).execute("SELECT count(*) FROM fleet_outbox").fetchone()[0] == 0


def test_fleet_cameras_file_errors_name_key_path_and_line(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text("cameras:\n  - name: a\n    source: rtsp://127.0.0.1:1/x\n  - name: b\n    source: rtsp://h/y\n"
                 "    fps: -3\n  - name: local1\n    source: rtsp://h/z\n")
    with pytest.raises(ConfigError) as err:
        load_fleet_cameras(f, local=("local1",))
    assert err.value.errors == [
        "cameras[1].fps: must be >= 0 (got -3) (line 6)",
        "cameras[2].name: 'local1' is also a local camera of this node (config cameras); fleet camera names must "
        "be their own (line 7)"]
    f.write_text("cameras:\n  - name: a\n    source: rtsp://127.0.0.1:1/x\n")
    assert [c.name for c in load_fleet_cameras(f)] == ["a"]


def test_fleet_status_command_prints_nodes_and_holders(postgres: Postgres, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from monitor.commands.fleet import status_main
    db = FleetDatabase(fleet_cfg(postgres), "cli")
    db.open()       # the schema, when this test runs alone
    db.close()
    postgres.psql("INSERT INTO nodes (name, public_url, version, started_at, heartbeat_at, max_cameras, cameras_held,"
                  " outbox_pending, outbox_lag) VALUES ('box7', 'http://box7:8080', 'x', now(), now(), 4, 1, 3, 1.5)"
                  " ON CONFLICT (name) DO UPDATE SET heartbeat_at = now();"
                  " INSERT INTO leases (camera, holder, expires_at) VALUES ('gate', 'box7', now() + interval '30 s'),"
                  " ('yard', NULL, NULL) ON CONFLICT (camera) DO UPDATE SET holder = EXCLUDED.holder,"
                  " expires_at = EXCLUDED.expires_at")
    config = tmp_path / "config.yaml"
    config.write_text(f"cameras: []\nfleet:\n  database: {postgres.dsn}\n  password_file: {postgres.password_file}\n")
    assert status_main(str(config)) == 0
    out = capsys.readouterr().out
    box = next(line for line in out.splitlines() if line.startswith("box7"))
    assert "1/4" in box and " 3 " in box and "1.5s" in box and "http://box7:8080" in box
    assert re.search(r"^gate\s+box7 \(lease \d+\.\ds left\)$", out, re.M) and re.search(r"^yard\s+-$", out, re.M)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"cameras: []\nfleet:\n  database: {postgres.dsn.replace(str(postgres.port), '1')}\n")
    assert status_main(str(bad)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "connection refused" in err and "***@127.0.0.1:1/monitor" in err
