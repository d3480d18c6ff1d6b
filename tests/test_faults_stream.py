"""Camera streams failing under a running daemon, on real parts: the GStreamer RTSP server SIGKILLed and restarted
at random (seeded) moments; TCP servers on 127.0.0.1 that speak a bit of RTSP and then send random bytes, close
in the middle of an answer, or send noise from the first byte; a server that accepts and never answers; MP4 files
cut short as `head -c` would (one still holding its index, one cut inside it).

What must hold: no crash (the worker and every capture thread alive, no exception escaping a thread, no ERROR
logged), the cameras that work keep being classified, broken cameras keep retrying, and after stop() the threads
and open file descriptors of the process are back to what they were before the daemon was made.

The CI subset kills the RTSP server 5 times; `-m slow` runs the 20-kill version, and scripts/stream_faults.py
prints the figures of a longer run. The scenarios live in testkit/stream_scenarios.py.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from monitor.daemon import Daemon
from testkit.faults import HangServer
from testkit.rtsp import RtspServer
from testkit.stream_scenarios import bad_sources, build, kill_restart


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        if d._started:
            d.stop()


# ---------------------------------------------------------------------------------------------------------


def test_rtsp_server_killed_at_random_moments(tmp_path: Path, demo_weights: Path, videos_dir: Path,
                                              rtsp_server: Callable[..., RtspServer],
                                              daemons: list[Daemon]) -> None:
    server = rtsp_server(["car-detection"], minutes=1)
    kill_restart(tmp_path, demo_weights, videos_dir, server, 5, daemons)


@pytest.mark.slow
def test_rtsp_server_killed_20_times(tmp_path: Path, demo_weights: Path, videos_dir: Path,
                                     rtsp_server: Callable[..., RtspServer], daemons: list[Daemon]) -> None:
    server = rtsp_server(["car-detection"], minutes=3)
    kill_restart(tmp_path, demo_weights, videos_dir, server, 20, daemons)


def test_garbage_truncated_and_hung_sources(tmp_path: Path, demo_weights: Path, videos_dir: Path,
                                            daemons: list[Daemon]) -> None:
    bad_sources(tmp_path, demo_weights, videos_dir, daemons)


def test_stop_with_several_cameras_hung_in_open_takes_one_join_not_one_each(
        tmp_path: Path, demo_weights: Path, daemons: list[Daemon]) -> None:
    """stop() signals every camera first so that they wind down in parallel. Cameras blocked in OpenCV's open
    cannot wind down; each gets a join of at most 1 s. Those joins must share one deadline: waiting 1 s per hung
    camera in turn eats the whole stop budget (4 s) with four of them, and leaves the worker and the sinks 0.1 s."""
    hung = [HangServer().start() for _ in range(4)]
    try:
        d = Daemon(build(tmp_path, demo_weights, [
            {"name": f"hung{i}", "source": s.url(), "open_timeout": 20} for i, s in enumerate(hung)]))
        daemons.append(d)
        d.start(web=False)
        assert any(s.accepted.wait(10) for s in hung), "no camera connected to its hung server"
        time.sleep(0.3)
        assert all(c.status()["state"] == "connecting" for c in d.cameras.values())
        t0 = time.monotonic()
        d.stop()
        took = time.monotonic() - t0
    finally:
        for s in hung:
            s.stop()
    print(f"\nstop() with 4 cameras hung in open: {took:.2f} s")
    assert took < 2.5, f"stop() took {took:.2f} s with 4 cameras hung in open"
