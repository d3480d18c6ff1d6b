"""Shared pieces of the daemon tests: fixtures that always stop what a test started, and small waits."""
from __future__ import annotations

import logging
from typing import Iterator

import pytest

from monitor.daemon import Daemon
from testkit.process import DaemonProcess


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test starts; every one is stopped at teardown, whatever the test did."""
    started: list[Daemon] = []
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield started
    for d in started:
        if d._started:
            d.stop()
    # Daemon.reload() sets up the CLI's logging (a stderr handler on the root logger): undo it.
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def daemon_processes() -> Iterator[list[DaemonProcess]]:
    """`python -m monitor run` processes a test starts (testkit.process); every one is killed at teardown."""
    started: list[DaemonProcess] = []
    yield started
    for p in started:
        p.kill()


def classified(d: Daemon, camera: str) -> float:
    return d.metrics.registry.get_sample_value("monitor_frames_classified_total", {"camera": camera}) or 0.0
