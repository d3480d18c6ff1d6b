"""A one-line progress bar on stderr; silent when stderr is not a terminal (logs, CI, systemd)."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int | None, unit: str = "", stream: TextIO | None = None,
                 enabled: bool | None = None) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self._last_draw = 0.0
        self._started = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last_draw > 0.1 or (self.total and self.done >= self.total)):
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._started, 1e-6)
        rate = self.done / elapsed
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            text = f"\r{self.label} [{bar:<30}] {frac:6.1%} {_human(self.done, self.unit)}/{_human(self.total, self.unit)}"
        else:
            text = f"\r{self.label} {_human(self.done, self.unit)}"
        self.stream.write(f"{text} {_human(rate, self.unit)}/s ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _human(n: float, unit: str) -> str:
    if unit != "B":
        return f"{n:.0f}{unit}" if isinstance(n, int) or n >= 10 else f"{n:.1f}{unit}"
    for prefix in ("", "k", "M", "G"):
        if n < 1024 or prefix == "G":
            return f"{n:.1f}{prefix}B" if prefix else f"{n:.0f}B"
        n /= 1024
    return f"{n}B"
