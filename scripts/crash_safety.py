#!/usr/bin/env python3
"""The long crash-safety run: `python -m monitor run` SIGKILLed --kills times (default 10) while events are being
written, restarted each time on the same SQLite file (tests/test_crash_safety.py does 2 in CI). Prints the events
committed, the open events closed at restart, lost and duplicate events (both must be 0).

    .venv/bin/python scripts/crash_safety.py [--kills 10] [--seed 8] [--weights FILE]
"""
from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import _setup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--weights", metavar="FILE", help="runtime artifact (default: demo weights built here)")
    args = parser.parse_args()

    from testkit.faults import clip, flicker_rule
    from testkit.crash import crash_cycles

    with tempfile.TemporaryDirectory(prefix="crash-safety.") as tmp:
        tmp_path = Path(tmp)
        weights = _setup.weights(args.weights, tmp_path)
        video = clip(_setup.VIDEOS / "car-detection.mp4", tmp_path / "cars-6s.mp4", 6)
        label, min_score = flicker_rule(weights, video)
        footage = (video, {"name": "watch", "classes": [label], "min_score": min_score, "min_frames": 1,
                           "end_after": 1.0, "cooldown": 0})
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        processes: list = []
        try:
            crash_cycles(run_dir, weights, footage, args.kills, processes, random.Random(args.seed))
        finally:
            for p in processes:
                p.kill()
    print("all checks passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
