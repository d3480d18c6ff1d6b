"""SIGKILL cycles of the real daemon process while events are being written (tests/test_crash_safety.py runs 2,
scripts/crash_safety.py 10): `crash_cycles()` checks that no committed event is lost or duplicated and that the
events left open are closed exactly once at restart, and returns the figures."""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

import yaml

from monitor.alerts.events import CRASH_NOTE
from testkit.faults import read_events
from testkit.process import DaemonProcess

START_TIMEOUT = 60.0          # interpreter + torch + model load, on a busy 2-core machine


def write_config(tmp_path: Path, weights: Path, footage: tuple[Path, dict]) -> tuple[Path, Path]:
    video, rule = footage
    db = tmp_path / "events.db"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": 0},
        "model": {"weights": str(weights), "threads": 2},
        "cameras": [{"name": "cars", "source": str(video), "loop": True, "fps": 0}],
        "watchlist": [rule],
        "events": {"database": str(db)},
        "logging": {"level": "info"},
    }, sort_keys=False))
    return cfg, db


def wait_for(cond, timeout: float, what: str, proc: DaemonProcess):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline or proc.proc.poll() is not None:
            raise AssertionError(f"{what} not within {timeout:g} s (exit {proc.proc.poll()}):\n{proc.text[-4000:]}")
        time.sleep(0.01)


def crash_cycles(tmp_path: Path, weights: Path, footage: tuple[Path, dict], kills: int,
                 processes: list[DaemonProcess], rng: random.Random) -> dict:
    cfg, db = write_config(tmp_path, weights, footage)
    crashed: dict[int, dict] = {}        # id -> its row at the kill (open then)
    closed_at_restart: dict[int, float] = {}
    figures = {"kills": 0, "events_committed": 0, "open_at_kill": [], "lost": 0, "duplicates": 0, "start_s": []}
    for i in range(kills + 1):
        t0 = time.monotonic()
        p = DaemonProcess(cfg)
        processes.append(p)
        p.started(START_TIMEOUT)
        figures["start_s"].append(round(time.monotonic() - t0, 1))
        # -- the restart closed what the previous process left open: once, at the last known time
        rows = read_events(db)
        left_open = [k for k, r in crashed.items() if k not in closed_at_restart]
        if left_open:
            p.wait_line(rf"closed {len(left_open)} event\(s\) left open by a previous run", 5)
        for k in left_open:
            row = rows[k]
            assert row["ended_at"] is not None and row["note"] == CRASH_NOTE, row
            assert math.isclose(row["ended_at"], crashed[k]["last_seen"], rel_tol=1e-6, abs_tol=1e-12), (row, crashed[k])
            closed_at_restart[k] = row["ended_at"]
        for k, ended in closed_at_restart.items():
            assert rows[k]["ended_at"] == ended and rows[k]["note"] == CRASH_NOTE, ("closed twice", rows[k])
        if i == kills:
            break
        # -- events come and go; at a random moment while one is open, SIGKILL
        known = set(rows)
        wanted = rng.randint(1, 3)
        wait_for(lambda: len(set(read_events(db)) - known) >= wanted, 30, f"{wanted} new events", p)
        time.sleep(rng.uniform(0.0, 1.5))
        before = wait_for(lambda: (lambda r: r if any(v["ended_at"] is None for v in r.values()) else None)(
            read_events(db)), 20, "an open event", p)
        p.kill()
        figures["kills"] += 1
        at_kill = read_events(db)
        logged = p.started_ids()
        lost = sorted((set(before) | set(logged)) - set(at_kill))
        figures["lost"] += len(lost)
        assert not lost, f"kill {i + 1}: committed events missing after SIGKILL: {lost}"
        for k, row in before.items():
            if row["ended_at"] is not None:
                assert at_kill[k] == row, f"kill {i + 1}: a closed event changed: {row} -> {at_kill[k]}"
            else:
                same = {c: v for c, v in row.items() if c not in ("ended_at", "peak_score", "last_seen")}
                assert {c: at_kill[k][c] for c in same} == same, (row, at_kill[k])
        open_now = {k: r for k, r in at_kill.items() if r["ended_at"] is None}
        crashed.update(open_now)
        figures["open_at_kill"].append(len(open_now))
    # -- a clean stop at the end: exit 0, every event closed, no note on the events that ended normally
    wait_for(lambda: len(read_events(db)) > max(crashed, default=0) + 1, 30, "events after the last restart", p)
    code = p.stop()
    assert code == 0, p.text[-4000:]
    final = read_events(db)
    assert all(r["ended_at"] is not None for r in final.values()), [r for r in final.values() if r["ended_at"] is None]
    noted = {k for k, r in final.items() if r["note"] is not None}
    assert noted == set(crashed), (f"crash note on {sorted(noted)}, open at the kills: {sorted(crashed)}")
    keys = [(r["camera"], r["rule"], r["started_at"]) for r in final.values()]
    figures["duplicates"] = len(keys) - len(set(keys))
    assert figures["duplicates"] == 0, "duplicate events"
    assert sorted(final) == list(range(1, len(final) + 1)), "ids not consecutive: an insert was lost or replayed"
    figures["events_committed"] = len(final)
    figures["closed_at_restart"] = len(closed_at_restart)
    print(f"\ncrash safety: {figures}")
    return figures
