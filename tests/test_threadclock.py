"""The worker's batch-time split (issue 22): on a core, runnable, blocked (the GIL or a lock)."""
from __future__ import annotations

import threading
import time

from monitor.core.threadclock import Stopwatch, thread_times


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_thread_waiting_for_a_lock_is_blocked_not_running() -> None:
    lock = threading.Lock()
    lock.acquire()
    threading.Timer(0.3, lock.release).start()
    watch = Stopwatch()
    watch.start()
    lock.acquire()
    split = watch.split()
    assert split.wall >= 0.29
    assert split.blocked >= 0.25 and split.on_cpu < 0.05, split


def test_a_busy_thread_is_on_a_core() -> None:
    watch = Stopwatch()
    watch.start()
    spin(0.3)
    split = watch.split()
    # on a loaded machine part of it is run-queue time; none of it is blocked
    assert split.on_cpu + split.runnable >= 0.9 * split.wall and split.blocked < 0.05 * split.wall + 0.01, split


def test_python_threads_sharing_the_gil_show_blocked_time() -> None:
    """Two threads of pure Python: each holds the GIL part of the time and waits for it the rest."""
    stop = threading.Event()

    def other() -> None:
        while not stop.is_set():
            sum(range(1000))

    t = threading.Thread(target=other, daemon=True)
    t.start()
    try:
        watch = Stopwatch()
        watch.start()
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:
            sum(range(1000))
        split = watch.split()
    finally:
        stop.set()
        t.join()
    assert split.blocked >= 0.15 * split.wall, split


def test_thread_times_only_grow() -> None:
    a = thread_times()
    spin(0.02)
    b = thread_times()
    assert b.on_cpu > a.on_cpu and b.runnable >= a.runnable
