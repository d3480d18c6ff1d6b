#!/usr/bin/env python3
"""Clips under SIGKILL: the real clip stage (PyAV camera on a real RTSP stream, packet ring, recorders, SQLite)
killed --kills times (default 10) while a clip is being written, restarted each time on the same folder, then the
start-up recovery. Prints how many clips were being written at each kill, the rows' clip states, and every
problem: a row "complete" whose file is missing or does not play to its end (ffmpeg reads every packet), a row
still "recording", a `.part` left behind. tests/test_clips.py does 3 in CI.

    .venv/bin/python scripts/clips_sigkill.py [--kills 10] [--seed 19]
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import _setup  # noqa: F401  (the repository on sys.path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()

    from testkit.clips import kill_cycles
    from testkit.rtsp import RtspServer, free_port

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clips-sigkill.") as tmp, \
            RtspServer(free_port(), ["car-detection"], minutes=2) as server:
        result = kill_cycles(server.url("car-detection"), Path(tmp), args.kills, random.Random(args.seed))
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=1))
    ok = not result["problems"] and not result["parts"] and sum(result["recording_at_kill"]) >= args.kills
    print(f"{args.kills} kills, {sum(result['recording_at_kill'])} with a clip being written; rows: "
          f"{result['states']}; problems: {len(result['problems'])}; .part left: {len(result['parts'])} -> "
          f"{'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
