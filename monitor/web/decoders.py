"""Upload decoding in a few worker processes, each decode bounded in CPU time, memory and wall time.

Why processes, not the request's thread: a decode inside libjpeg, libpng, libtiff or libwebp cannot be
interrupted from Python, a thread cannot be killed, RLIMIT_CPU would count the whole daemon, and some files
cost far more CPU than their pixels suggest (a 714 KB progressive JPEG with 20,000 scans: 16 to 22 s of CPU,
and it went on after the client had hung up). The header walk in monitor.web.imagesize refuses the shapes
known to be costly; whatever it does not foresee (any format, any decoder bug) is bounded here: the parent
reads the worker's CPU time every POLL seconds and kills it past `cpu_seconds` (it sets RLIMIT_CPU on itself as
a floor), at the upload's deadline, or when the client hangs up. A killed worker is replaced at once, so the
next upload does not wait for a start.

What it costs (measured in tests/test_upload_bombs.py, both ways in the same run, printed with -s): a worker is
about 45 MB resident, 19 MB of it its own, and 0.15 s of CPU to start; a decode in a warm worker adds 2 to 3 ms
to an upload (the data goes down a pipe, the scaled-down picture, at most CLASSIFY_SIDE on its short side,
comes back). Workers start when the first upload needs one (a daemon nobody uploads to pays nothing) and stay;
at most `size` of them: more decodes at once would only share the same cores.
"""
from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from monitor.web import decode_worker as protocol

log = logging.getLogger(__name__)

WORKER = Path(protocol.__file__)
POLL = 0.02                   # seconds between looks at a busy worker's CPU time (its clock ticks are 10 ms)
START_TIMEOUT = 20.0          # seconds a new worker may take to answer (imports cv2 and numpy)
# A worker whose resident memory stays above this after a decode is retired (glibc keeps freed heap pages).
RETIRE_RSS = 256 * 2**20
# Environment of a worker: one malloc arena and frame-sized blocks mmapped (a freed image leaves the process,
# as in the daemon's systemd unit), no BLAS or OpenMP threads, OpenCV quiet.
_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "262144", "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1", "OPENCV_LOG_LEVEL": "ERROR", "OPENCV_FOR_THREADS_NUM": "1"}
_TICK = os.sysconf("SC_CLK_TCK")
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class DecodeError(Exception):
    """A decode that gave no picture; `kind` says why: "unreadable" (the decoder refused the data), "cpu" (killed
    past its CPU time), "deadline" (killed at the upload's deadline), "cancelled" (the client hung up), "busy"
    (no worker free before the deadline), "crashed" (the worker died on its own), "unavailable" (no worker could
    start), "closed" (the pool stopped)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class DecodeStats:
    """One decode as the parent saw it (for tests and benchmarks)."""
    pid: int
    cpu_seconds: float        # the worker's CPU time for this decode
    peak_bytes: int           # the worker's resident peak during this decode, above its resident size before
    wall_seconds: float
    outcome: str              # "ok" or a DecodeError kind


class _Worker:
    def __init__(self) -> None:
        env = {**os.environ, **_ENV}
        # -I: no PYTHONPATH, no user site, and the script's folder (monitor/web, whose module names could shadow
        # the standard library's) not on sys.path. The worker imports nothing of the daemon.
        self.proc = subprocess.Popen([sys.executable, "-I", str(WORKER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True,
                                     bufsize=0)
        self.pid = self.proc.pid
        self.requests = self.proc.stdin.fileno()
        self.answers = self.proc.stdout.fileno()
        self.ready = False                            # READY read: cv2 imported, CPU from here is decoding
        for pipe in (self.requests, self.answers):
            try:                                      # 1 MB pipes: a picture comes back in a few reads
                fcntl.fcntl(pipe, _F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass
        self._poll = select.poll()                    # (not select(): descriptors past 1023 are normal here)
        self._poll.register(self.answers, select.POLLIN)

    def wait(self, seconds: float) -> bool:
        """True when there is something to read (or the worker is gone) within `seconds`."""
        return bool(self._poll.poll(max(0, int(seconds * 1000))))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / _TICK       # utime, stime
        except (OSError, IndexError, ValueError):
            return 0.0

    def memory(self, field: bytes) -> int:
        try:
            with open(f"/proc/{self.pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(field):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close_pipes()

    def stop(self, timeout: float) -> None:
        """Close its request pipe (it exits when idle), kill it if it has not within `timeout`."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass

    def death(self) -> str:
        code = self.proc.wait()
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with status {code}"


class DecoderPool:
    """At most `size` worker processes, started when needed; decode() runs one decode in a free one."""

    def __init__(self, size: int, cpu_seconds: float) -> None:
        self.size = int(size)
        self.cpu_seconds = float(cpu_seconds)
        self.last: DecodeStats | None = None          # the latest decode (tests, benchmarks)
        self.started = 0                              # workers started, replacements included
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._busy = 0
        self._closed = False
        self._cond = threading.Condition()

    @property
    def busy(self) -> int:
        """Decodes running now."""
        return self._busy

    def pids(self) -> list[int]:
        with self._cond:
            return sorted(w.pid for w in self._all)

    def decode(self, data: bytes, flag: int, side: int, memory: int, deadline: float,
               cancelled: Callable[[], bool] | None = None, prepare: tuple[int, int] | None = None) -> np.ndarray:
        """The BGR picture of `data` decoded with cv2.imdecode(flag), scaled to at most `side` on its short side,
        in a worker allowed `memory` bytes more than it holds and self.cpu_seconds of CPU, killed at `deadline`
        (time.monotonic()) or as soon as `cancelled()` is true. With prepare=(size, resize), the network's input
        made from that picture in the worker (monitor.core.resample.center_prepared) instead. Raises DecodeError."""
        worker = self._take(deadline)
        outcome = "crashed"
        try:
            image, outcome = self._run(worker, data, flag, side, memory, deadline, cancelled, prepare or (0, 0))
            return image
        except DecodeError as e:
            outcome = e.kind
            raise
        finally:
            self._give(worker, outcome)

    def close(self, timeout: float = 1.0) -> None:
        """Stop every worker: idle ones exit when their pipe closes, busy ones are killed (their decode raises
        DecodeError("closed")). The pool decodes nothing after this."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = [w for w in self._all if w not in idle]
            self._all.clear()
            self._cond.notify_all()
        for w in busy:
            w.kill()
        end = time.monotonic() + timeout
        for w in idle:
            w.stop(max(0.05, end - time.monotonic()))

    # -- workers -----------------------------------------------------------------------------------------------

    def _take(self, deadline: float) -> _Worker:
        with self._cond:
            while not self._closed and not self._idle and self._busy >= self.size:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DecodeError("busy", "every decoder is busy")
                self._cond.wait(left)
            if self._closed:
                raise DecodeError("closed", "the server is stopping")
            self._busy += 1
            if self._idle:
                return self._idle.pop()
        try:
            return self._start()
        except BaseException:
            with self._cond:
                self._busy -= 1
                self._cond.notify()
            raise

    def _start(self) -> _Worker:
        try:
            worker = _Worker()
        except OSError as e:
            log.error("web: cannot start an upload decoder process: %s", e)
            raise DecodeError("unavailable", f"cannot start a decoder process ({e.strerror or e})") from None
        with self._cond:
            closed = self._closed
            if not closed:
                self._all.add(worker)
                self.started += 1
        if closed:
            worker.kill()
            raise DecodeError("closed", "the server is stopping")
        log.debug("web: upload decoder process %d started", worker.pid)
        return worker

    def _give(self, worker: _Worker, outcome: str) -> None:
        healthy = outcome in ("ok", "unreadable") and worker.alive()
        if healthy and worker.memory(b"VmRSS:") > RETIRE_RSS:
            log.debug("web: upload decoder process %d keeps %d MB: replaced", worker.pid,
                      worker.memory(b"VmRSS:") // 2**20)
            healthy = False
        with self._cond:
            if healthy and not self._closed:
                self._idle.append(worker)
                self._busy -= 1
                self._cond.notify()
                return
            self._all.discard(worker)
            closed = self._closed
        if worker.alive() and healthy:
            worker.stop(1.0)
        else:
            worker.kill()
        replacement = None
        if not closed:
            try:
                replacement = self._start()           # replaced now, by the upload that cost it
            except DecodeError:
                pass
        with self._cond:
            self._busy -= 1
            if replacement is not None:
                self._idle.append(replacement)
            self._cond.notify()

    # -- one decode --------------------------------------------------------------------------------------------

    def _run(self, worker: _Worker, data: bytes, flag: int, side: int, memory: int, deadline: float,
             cancelled: Callable[[], bool] | None, prepare: tuple[int, int]) -> tuple[np.ndarray, str]:
        t0 = time.monotonic()
        if not worker.ready:
            self._wait_ready(worker, min(deadline, t0 + START_TIMEOUT), cancelled)
        cpu0 = worker.cpu_seconds()
        rss0 = worker.memory(b"VmRSS:")

        def stats(kind: str, peak: int, cpu: float | None = None) -> None:
            cpu = worker.cpu_seconds() if cpu is None else cpu
            self.last = DecodeStats(worker.pid, max(0.0, cpu - cpu0), max(0, peak - rss0), time.monotonic() - t0,
                                    kind)

        try:
            _send(worker.requests, protocol.REQUEST.pack(protocol.MAGIC, len(data), flag, side, self.cpu_seconds,
                                                         memory, *prepare), data)
        except OSError:
            stats("crashed", 0)
            raise self._died(worker) from None
        # The answer: its header, then its payload read into one buffer of the announced size. The worker is what
        # parses hostile data, so the parent believes no size it sends beyond what the decode was charged.
        head = bytearray(protocol.ANSWER.size)
        payload: bytearray | None = None
        got, check = 0, 0.0
        while payload is None or got < len(payload):
            if time.monotonic() >= check:
                self._check(worker, deadline, cancelled, cpu0, stats)
                check = time.monotonic() + POLL
            if not worker.wait(min(POLL, max(0.0, deadline - time.monotonic()))):
                continue
            target = memoryview(head if payload is None else payload)[got:]
            n = os.readv(worker.answers, [target])
            if not n:
                stats("crashed", 0)
                raise self._died(worker)
            got += n
            if payload is None and got == len(head):
                status, length = protocol.ANSWER.unpack(head)
                if length > memory + (1 << 20):
                    stats("crashed", worker.memory(b"VmHWM:"))
                    worker.kill()
                    raise DecodeError("crashed", f"the decoder process announced a {length}-byte answer")
                payload, got = bytearray(length), 0
        if status != protocol.OK:
            stats("unreadable", worker.memory(b"VmHWM:"))
            raise DecodeError("unreadable", payload.decode("utf-8", "replace"))
        h, w, c = protocol.IMAGE.unpack_from(payload)
        if h * w * c != len(payload) - protocol.IMAGE.size:
            stats("crashed", worker.memory(b"VmHWM:"))
            worker.kill()
            raise DecodeError("crashed", "the decoder process sent a picture of the wrong size")
        image = np.frombuffer(payload, np.uint8, h * w * c, protocol.IMAGE.size)
        stats("ok", worker.memory(b"VmHWM:"))
        return image.reshape(h, w, c), "ok"

    def _check(self, worker: _Worker, deadline: float, cancelled: Callable[[], bool] | None, cpu0: float,
               stats: Callable[..., None]) -> None:
        """Kill the worker (DecodeError) past the deadline, once the client is gone, or past its CPU time."""
        if time.monotonic() >= deadline:
            kind, message = "deadline", "decoding took past the upload's deadline"
        elif cancelled is not None and cancelled():
            kind, message = "cancelled", "the client hung up"
        elif worker.cpu_seconds() - cpu0 > self.cpu_seconds:
            kind, message = "cpu", f"decoding took more than {self.cpu_seconds:g} s of CPU"
        else:
            return
        peak, cpu = worker.memory(b"VmHWM:"), worker.cpu_seconds()
        worker.kill()
        stats(kind, peak, cpu)
        log.debug("web: upload decoder process %d killed: %s", worker.pid, message)
        raise DecodeError(kind, message)

    def _wait_ready(self, worker: _Worker, until: float, cancelled: Callable[[], bool] | None) -> None:
        while not worker.wait(min(POLL, max(0.0, until - time.monotonic()))):
            if time.monotonic() >= until or (cancelled is not None and cancelled()):
                worker.kill()
                raise DecodeError("deadline", "no decoder process started in time")
        if os.read(worker.answers, 1) != protocol.READY:
            death = worker.death()
            log.error("web: an upload decoder process %s before it was ready (%s %s)", death, sys.executable, WORKER)
            raise DecodeError("unavailable", f"the decoder process {death} as it started")
        worker.ready = True

    def _died(self, worker: _Worker) -> DecodeError:
        death = worker.death()
        if self._closed:
            return DecodeError("closed", "the server is stopping")
        if "SIGXCPU" in death:
            return DecodeError("cpu", f"decoding took more than {self.cpu_seconds:g} s of CPU")
        log.warning("web: an upload decoder process %s", death)
        return DecodeError("crashed", f"the decoder process {death}")


def _send(fd: int, head: bytes, data: bytes) -> None:
    for block in (head, data):
        view = memoryview(block)
        while view:
            view = view[os.write(fd, view[:1 << 20]):]
