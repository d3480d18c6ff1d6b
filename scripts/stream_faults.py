#!/usr/bin/env python3
"""The long stream-fault run (the CI subset of tests/test_faults_stream.py does 5 kills):

1. the real RTSP server (GStreamer) SIGKILLed and restarted --kills times (default 20) at random, seeded moments
   under a running daemon with a second, file camera as witness: reconnects seen, time to resume p50/p99,
   crashes, threads and fds before / during / after;
2. with --bad-sources, the garbage / truncated / hung sources of the suite, once.

Same checks as the tests (an AssertionError names what failed); the figures are printed before the checks.

    .venv/bin/python scripts/stream_faults.py [--kills 20] [--seed 2] [--bad-sources] [--weights FILE]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import _setup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="length of the served stream (default: enough for the kills)")
    parser.add_argument("--bad-sources", action="store_true", help="also run the garbage/truncated/hung sources")
    parser.add_argument("--weights", metavar="FILE", help="runtime artifact (default: demo weights built here)")
    args = parser.parse_args()
    _setup.quiet_logging()

    from testkit import stream_scenarios as suite
    from testkit.rtsp import RtspServer, free_port

    with tempfile.TemporaryDirectory(prefix="stream-faults.") as tmp:
        tmp_path = Path(tmp)
        weights = _setup.weights(args.weights, tmp_path)
        daemons: list = []
        # a stream that outlasts the run: each cycle is at most ~10 s
        server = RtspServer(free_port(), ["car-detection"], minutes=args.minutes or max(1.0, args.kills * 10 / 60))
        server.start()
        try:
            run_dir = tmp_path / "kills"
            run_dir.mkdir()
            suite.kill_restart(run_dir, weights, _setup.VIDEOS, server, args.kills, daemons, seed=args.seed)
            if args.bad_sources:
                bad_dir = tmp_path / "bad"
                bad_dir.mkdir()
                suite.bad_sources(bad_dir, weights, _setup.VIDEOS, daemons)
        finally:
            for d in daemons:
                if d._started:
                    d.stop()
            server.kill()
    print("all checks passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
