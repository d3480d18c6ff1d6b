"""SIGKILL of the real daemon process (`python -m monitor run -c cfg.yaml`) while events are being written, then a
restart on the same SQLite file.

The camera plays a 6 s clip of a sample video in a loop with a rule on the demo model's top class at a min_score
where that class flickers (min_frames 1, end_after 0.5 s, no cooldown), so events start and end every second or
two. Each kill comes at a random (seeded) moment while an event is open. Checked with a separate sqlite3
connection (read-only, WAL), as any other process would read the file:
- no committed event is lost: every row read just before the kill, and every id the process logged as
  "event N started" (logged after the commit), is in the file afterwards, unchanged where it was closed;
- the restart opens the database and closes the events left open exactly once: at their last known time, with
  the crash note, and later restarts do not touch them again;
- no duplicate event: ids and (camera, rule, started_at) are unique, new events get new ids.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from testkit.faults import DaemonProcess, clip, flicker_rule, read_events
from monitor.alerts.events import CRASH_NOTE

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 60.0          # interpreter + torch + model load, on a busy 2-core machine
SEED = 7


@pytest.fixture(scope="module")
def footage(demo_weights: Path, videos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    video = clip(videos_dir / "car-detection.mp4", tmp_path_factory.mktemp("clip") / "cars-6s.mp4", 6)
    label, min_score = flicker_rule(demo_weights, video)
    return video, {"name": "watch", "classes": [label], "min_score": min_score, "min_frames": 1, "end_after": 0.5,
                   "cooldown": 0}


@pytest.fixture
def processes() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for p in started:
        p.kill()


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
        p = DaemonProcess(cfg, cwd=REPO)
        processes.append(p)
        p.wait_line(DaemonProcess.RUNNING, START_TIMEOUT)
        figures["start_s"].append(round(time.monotonic() - t0, 1))
        # -- the restart closed what the previous process left open: once, at the last known time
        rows = read_events(db)
        left_open = [k for k, r in crashed.items() if k not in closed_at_restart]
        if left_open:
            p.wait_line(rf"closed {len(left_open)} event\(s\) left open by a previous run", 5)
        for k in left_open:
            row = rows[k]
            assert row["ended_at"] is not None and row["note"] == CRASH_NOTE, row
            assert row["ended_at"] == pytest.approx(crashed[k]["last_seen"]), (row, crashed[k])
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


def test_sigkill_while_events_are_written_loses_nothing_and_closes_open_events_once(
        tmp_path: Path, demo_weights: Path, footage: tuple[Path, dict], processes: list[DaemonProcess]) -> None:
    figures = crash_cycles(tmp_path, demo_weights, footage, 2, processes, random.Random(SEED))
    assert figures["kills"] == 2 and sum(figures["open_at_kill"]) >= 2


@pytest.mark.slow
def test_ten_sigkills(tmp_path: Path, demo_weights: Path, footage: tuple[Path, dict],
                      processes: list[DaemonProcess]) -> None:
    figures = crash_cycles(tmp_path, demo_weights, footage, 10, processes, random.Random(SEED + 1))
    assert figures["kills"] == 10
