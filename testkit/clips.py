"""Clip crash-safety tooling shared by tests/test_clips.py and scripts/clips_sigkill.py.

`python -m testkit.clips URL STATE_DIR` runs the real clip stage (a PyAV Camera with its PacketRing, the
EventStore, ClipManager with its recorders) on one RTSP camera, without the classifier: an event every few
seconds, started and ended by the script itself, so a SIGKILL can be aimed at a clip being written. It prints
"ready", "event N started", "event N ended" and "clip N <state>" lines. `--recover` runs the start-up recovery
only and exits (what a restarted daemon does first).

check_clips(state_dir) reads the result as any other process would: every row's clip state against the files.
"""
from __future__ import annotations

import argparse
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any


def clip_config(url: str, state: Path, pre: float = 2.0, post: float = 1.0) -> Any:
    from monitor.config.loader import parse_config
    return parse_config({"model": {"weights": str(state / "none.pt")},
                         "cameras": [{"name": "cam", "source": url, "backend": "pyav", "frame_size": [320, 180]}],
                         "clips": {"enabled": True, "pre": pre, "post": post, "min_free_bytes": 1},
                         "events": {"database": str(state / "events.db")}}, state)


def main(argv: list[str] | None = None) -> int:
    from monitor.alerts.event import Event
    from monitor.alerts.events import EventStore
    from monitor.capture.camera import Camera
    from monitor.clips.manager import ClipManager
    from monitor.core.metrics import Metrics

    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("state", type=Path)
    ap.add_argument("--recover", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    config = clip_config(args.url, args.state)
    metrics = Metrics()
    store = EventStore(config.events.database, metrics)
    camera = Camera(config.cameras[0], metrics)
    manager = ClipManager(config, store, metrics, lambda: {"cam": camera})
    manager.add_listener(lambda ev: print(f"clip {ev.id} {ev.clip_state}", flush=True))
    if args.recover:
        manager.root.mkdir(parents=True, exist_ok=True)
        print(f"recovered {manager.recover()}", flush=True)
        store.close()
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    manager.start()
    camera.start()
    print(f"recovered {manager.recovered}", flush=True)
    while camera.packets is not None and camera.packets.held_seconds() < 1.0:
        time.sleep(0.1)
    print("ready", flush=True)
    while True:
        ev = store.insert(Event(camera="cam", rule="r", label="x", score=1.0, peak_score=1.0, started_at=time.time()))
        manager.on_event("start", ev)
        print(f"event {ev.id} started", flush=True)
        time.sleep(rng.uniform(0.5, 2.5))
        ev = replace(ev, ended_at=time.time())
        store.end_event(ev.id, ev.ended_at, 1.0)
        manager.on_event("end", ev)
        print(f"event {ev.id} ended", flush=True)
        time.sleep(rng.uniform(0.2, 1.0))


def playable(path: Path) -> str:
    """'' when ffmpeg reads the file to its end without an error (demux of every packet), else its complaint."""
    run = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0", "-c", "copy", "-f", "null", "-"],
                         capture_output=True, text=True, timeout=60)
    return run.stderr.strip() or ("" if run.returncode == 0 else f"exit {run.returncode}")


def check_clips(state: Path) -> dict[str, Any]:
    """Rows and files after a (restarted) run: {states: {state: n}, problems: [...], parts: [...]}."""
    db = sqlite3.connect(f"file:{state / 'events.db'}?mode=ro", uri=True)
    rows = db.execute("SELECT id, clip, clip_seconds, clip_state FROM events").fetchall()
    db.close()
    root = state / "clips"
    states: dict[str, int] = {}
    problems: list[str] = []
    named = set()
    for event_id, clip, seconds, clip_state in rows:
        states[clip_state] = states.get(clip_state, 0) + 1
        if clip_state == "complete":
            path = root / clip
            named.add(path)
            if not path.is_file():
                problems.append(f"event {event_id}: row complete, file {clip} missing")
            elif (why := playable(path)):
                problems.append(f"event {event_id}: {clip} does not play to its end: {why}")
            elif not seconds or seconds <= 0:
                problems.append(f"event {event_id}: complete without a duration")
        elif clip_state == "recording":
            problems.append(f"event {event_id}: still 'recording' after the restart")
        elif clip is not None:
            problems.append(f"event {event_id}: {clip_state} but names {clip}")
    parts = sorted(str(p) for p in root.rglob("*.part")) if root.is_dir() else []
    return {"rows": len(rows), "states": states, "problems": problems, "parts": parts}


REPO = Path(__file__).resolve().parents[1]


def _wait_line(proc: subprocess.Popen, prefix: str, timeout: float) -> str:
    """The next stdout line starting with `prefix` (the reader blocks; a silent process fails at the deadline)."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)        # type: ignore[arg-type]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(max(0.0, deadline - time.monotonic())):
            line = proc.stdout.readline()                   # type: ignore[union-attr]
            if not line:
                break
            if line.startswith(prefix):
                return line.strip()
    raise TimeoutError(f"no line {prefix!r} within {timeout:g} s")


def kill_cycles(url: str, state: Path, kills: int, rng: random.Random, start_timeout: float = 60.0) -> dict[str, Any]:
    """`kills` times: start the clip process, let it record, SIGKILL it while a clip is being written (a random
    moment into an event). Then the start-up recovery, and check_clips(). Returns the check plus what was
    recording at each kill."""
    import os
    recording_at_kill: list[int] = []
    for k in range(kills):
        proc = subprocess.Popen([sys.executable, "-m", "testkit.clips", url, str(state), "--seed", str(k)],
                                cwd=REPO, stdout=subprocess.PIPE, text=True, bufsize=1)
        try:
            _wait_line(proc, "ready", start_timeout)
            for _ in range(rng.randint(0, 2)):          # some cycles first let clips complete
                _wait_line(proc, "event", 30)
            _wait_line(proc, "event", 30)
            time.sleep(rng.uniform(0.2, 1.5))
            db = sqlite3.connect(f"file:{state / 'events.db'}?mode=ro", uri=True)
            recording_at_kill.append(db.execute("SELECT COUNT(*) FROM events WHERE clip_state = 'recording'")
                                     .fetchone()[0])
            db.close()
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
    subprocess.run([sys.executable, "-m", "testkit.clips", url, str(state), "--recover"], cwd=REPO, check=True,
                   timeout=start_timeout, capture_output=True)
    result = check_clips(state)
    result["recording_at_kill"] = recording_at_kill
    return result


if __name__ == "__main__":
    sys.exit(main())
