#!/usr/bin/env python3
"""The long sink-fault run: the three scenarios of tests/test_faults_sinks.py (testkit/sink_scenarios.py) (webhook timeout / 500 / closed
socket; hung command, unwritable snapshot directory, snapshots on a full tmpfs; SQLite locked by another
connection) with longer windows (default 10 s instead of 3 s). Prints, per fault, the classification rate against
the healthy windows on either side, the events started in the window, and the failure/drop counters that moved.

    .venv/bin/python scripts/sink_faults.py [--window 10] [--weights FILE]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import _setup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=10.0, help="seconds per window (default 10)")
    parser.add_argument("--weights", metavar="FILE", help="runtime artifact (default: demo weights built here)")
    args = parser.parse_args()
    _setup.quiet_logging()

    from testkit import sink_scenarios as suite
    from testkit.faults import clip, flicker_rule
    from testkit.webhook import Receiver

    with tempfile.TemporaryDirectory(prefix="sink-faults.") as tmp:
        tmp_path = Path(tmp)
        weights = _setup.weights(args.weights, tmp_path)
        video = clip(_setup.VIDEOS / "car-detection.mp4", tmp_path / "cars-6s.mp4", 6)
        label, min_score = flicker_rule(weights, video)
        footage = (video, {"name": "watch", "classes": [label], "min_score": min_score, "min_frames": 1,
                           "end_after": 0.05, "cooldown": 0})
        for test in (suite.webhook_faults, suite.command_and_snapshot_faults, suite.sqlite_lock_faults):
            run_dir = tmp_path / test.__name__
            run_dir.mkdir()
            root = logging.getLogger()
            handlers, level = list(root.handlers), root.level
            with Receiver("ok") as hook:
                setup = suite.Setup(run_dir, weights, footage, hook.url, window=args.window)
                setup.hook = hook
                print(f"\n== {test.__name__}", flush=True)
                try:
                    test(setup)
                finally:
                    if setup.daemon is not None and setup.daemon._started:
                        setup.daemon.stop()
                    root.handlers[:] = handlers
                    root.setLevel(level)
    print("all checks passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
