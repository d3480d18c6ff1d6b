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
from pathlib import Path

import pytest

from testkit.crash import crash_cycles
from testkit.faults import clip, flicker_rule
from testkit.process import DaemonProcess

SEED = 7


@pytest.fixture(scope="module")
def footage(demo_weights: Path, videos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    video = clip(videos_dir / "car-detection.mp4", tmp_path_factory.mktemp("clip") / "cars-6s.mp4", 6)
    label, min_score = flicker_rule(demo_weights, video)
    return video, {"name": "watch", "classes": [label], "min_score": min_score, "min_frames": 1, "end_after": 0.5,
                   "cooldown": 0}


def test_sigkill_while_events_are_written_loses_nothing_and_closes_open_events_once(
        tmp_path: Path, demo_weights: Path, footage: tuple[Path, dict], daemon_processes: list[DaemonProcess]) -> None:
    figures = crash_cycles(tmp_path, demo_weights, footage, 2, daemon_processes, random.Random(SEED))
    assert figures["kills"] == 2 and sum(figures["open_at_kill"]) >= 2


@pytest.mark.slow
def test_ten_sigkills(tmp_path: Path, demo_weights: Path, footage: tuple[Path, dict],
                      daemon_processes: list[DaemonProcess]) -> None:
    figures = crash_cycles(tmp_path, demo_weights, footage, 10, daemon_processes, random.Random(SEED + 1))
    assert figures["kills"] == 10
