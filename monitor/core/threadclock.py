"""Where a thread's time goes: on a CPU, runnable but waiting for one, or blocked.

Linux's /proc/thread-self/schedstat gives the calling thread's time on a CPU and its time spent runnable on a
run queue, in nanoseconds. Over a stretch of work that neither sleeps nor does I/O (the worker's batch: numpy,
OpenVINO on the calling thread, our own code), the rest of the wall time is time the thread was blocked: in a
CPython process that is waiting for the GIL (or a lock another thread holds), which is what issue 22 asks to
measure. No library reads these counters; the file is the interface. Where the file is missing (not Linux, a
kernel without schedstats) the CPU time comes from time.thread_time() and run-queue time counts as 0.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

_SCHEDSTAT = "/proc/thread-self/schedstat"


@dataclass(frozen=True, slots=True)
class ThreadTimes:
    """Seconds of the calling thread since it started: on a CPU, and runnable waiting for a CPU."""
    on_cpu: float
    runnable: float


def _from_schedstat() -> ThreadTimes:
    with open(_SCHEDSTAT, "rb") as f:
        on_cpu, runnable, _ = f.read().split()
    return ThreadTimes(int(on_cpu) / 1e9, int(runnable) / 1e9)


def _from_thread_time() -> ThreadTimes:
    return ThreadTimes(time.thread_time(), 0.0)


def _pick() -> Callable[[], ThreadTimes]:
    try:
        _from_schedstat()
        return _from_schedstat
    except (OSError, ValueError):
        return _from_thread_time


thread_times: Callable[[], ThreadTimes] = _pick()    # the calling thread's ThreadTimes (about 10 us)


@dataclass(frozen=True, slots=True)
class Split:
    """One stretch of a thread's work split by where its wall time went (seconds)."""
    wall: float
    on_cpu: float
    runnable: float

    @property
    def blocked(self) -> float:
        """Neither running nor runnable: waiting for the GIL or a lock (the stretch does no I/O)."""
        return max(0.0, self.wall - self.on_cpu - self.runnable)


class Stopwatch:
    """Wall, CPU and run-queue time of the calling thread between start() and split()."""

    __slots__ = ("_wall", "_times")

    def __init__(self) -> None:
        self._wall = 0.0
        self._times = ThreadTimes(0.0, 0.0)

    def start(self) -> None:
        self._times = thread_times()
        self._wall = time.perf_counter()

    def split(self) -> Split:
        wall = time.perf_counter() - self._wall
        now = thread_times()
        return Split(wall, now.on_cpu - self._times.on_cpu, now.runnable - self._times.runnable)
