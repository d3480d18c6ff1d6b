"""The daemon as a real process, `python -m monitor run -c CONFIG`, for the tests and scripts that need the
CLI, signals, sd_notify or SIGKILL (tests/test_daemon_signals.py, tests/test_mqtt.py, testkit/crash.py)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# systemd's variables from the environment the tests run in would make the child talk to the wrong socket;
# a test that wants them passes its own in `env`.
_SYSTEMD_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class DaemonProcess:
    """One `python -m monitor run -c CONFIG` in a session of its own (a signal to the test's process group
    does not reach it); its stderr, the log, is read line by line into `lines` by a thread."""

    RUNNING = r"monitor \S+ running: "

    def __init__(self, config: Path | str, cwd: Path | str | None = REPO, env: Mapping[str, str] | None = None,
                 python: str | None = None) -> None:
        base = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARS}
        self.proc = subprocess.Popen([python or sys.executable, "-m", "monitor", "run", "-c", str(config)],
                                     cwd=str(cwd) if cwd else None, env={**base, **(env or {})},
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"stderr-{self.proc.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        self.proc.stderr.close()
        with self._cond:
            self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout: float, start: int = 0) -> int:
        """Index of the first stderr line from `start` on matching the regex; TimeoutError with the log when
        none comes within `timeout` or the log ends (the process closed stderr: it exited)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self.lines)):
                    if rx.search(self.lines[i]):
                        return i
                start = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._reader.is_alive():
                    raise TimeoutError(f"no log line matching {pattern!r} within {timeout:g} s (exit code "
                                       f"{self.proc.poll()}):\n" + "\n".join(self.lines[-60:]))
                self._cond.wait(min(remaining, 0.2))

    def started(self, timeout: float) -> int:
        """Wait for the "running" line (interpreter, imports and model load done); its index."""
        return self.wait_line(self.RUNNING, timeout)

    def started_ids(self) -> list[int]:
        """Ids of the "event N started" lines: each was logged after its row was committed."""
        rx = re.compile(r"\bevent (\d+) started: ")
        with self._cond:
            return [int(m.group(1)) for line in self.lines for m in [rx.search(line)] if m]

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit code once the process ended and its log was read to the end; TimeoutError (with the log)
        if it still runs after `timeout` (it is left running: kill() or the test's fixture ends it)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"process still running {timeout:g} s later:\n{self.text}") from None
        self._reader.join(5)
        return code

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait: the exit code. A process still running after `timeout` is killed (TimeoutError)."""
        if self.proc.poll() is None:
            self.send(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except TimeoutError:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL (no handler runs, nothing is flushed by the process) and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
