"""Per-thread CPU priority: capture threads yield the CPU to the inference worker when the cores are busy.

Linux schedules threads, not processes: setpriority(PRIO_PROCESS, 0, ...) and sched_setscheduler(0, ...) change
only the calling thread (unlike POSIX's per-process nice), so the capture threads can run below the worker
without touching the rest of the process. Lowering one's own priority needs no privilege. No library wraps
this; the os module is the whole job.
"""
from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

MAX_NICE = 19
PRIORITIES = ("normal", "low", "idle")


def lower_this_thread(priority: str) -> str:
    """Run the calling thread at `priority`: "normal" (unchanged), "low" (nice 19: still a share of a busy CPU)
    or "idle" (SCHED_IDLE: only what the normal threads leave). Returns what the thread got."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
    if priority == "normal":
        return "normal"
    got = "normal"
    try:
        os.setpriority(os.PRIO_PROCESS, 0, MAX_NICE)    # also what an idle thread keeps if SCHED_IDLE is refused
        got = "low"
        if priority == "idle":
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            got = "idle"
    except (OSError, AttributeError) as e:     # not Linux, or a sandbox that forbids it
        log.warning("cannot lower the CPU priority of thread %s to %s: %s; it runs at %s",
                    threading.current_thread().name, priority, e, got)
    return got
