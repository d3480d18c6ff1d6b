#!/usr/bin/env python3
"""What one notification costs the daemon, against the webhook as the baseline of the same run: the CPU time of
the sink's own thread per event (so the receivers, running in this process too, and other load on the machine do
not enter the figure) and the wall time per event of a burst, for

  - webhook: the JSON POST of the event (baseline);
  - notify json://: Apprise's JSON service to a local HTTP receiver, the snapshot JPEG attached (base64);
  - notify mailto://: Apprise's e-mail to a local aiosmtpd server, the JPEG attached (MIME).

Apprise spaces the requests of one URL of most services (e-mail included, not json:// or Telegram) by its own
`request_rate_per_sec` (5.5 s): the mail runs send --mail-events events only, and their wall time per event is that
throttle. Every event carries a 768x432 frame; the notify sinks render and encode its picture (the snapshot sink would do
it otherwise, once for all sinks), the webhook does not. Rounds alternate; medians and ratios.

    .venv/bin/python scripts/notify_cost.py [--events 100] [--mail-events 4] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import _setup  # noqa: F401 (the repository on sys.path)

import numpy as np

from monitor.alerts.event import Event
from monitor.alerts.notify import notify_sinks
from monitor.alerts.sinks import SinkSet
from monitor.config.types import AlertsConfig, NotifyConfig
from monitor.core.metrics import Metrics
from testkit.smtp import SmtpReceiver
from testkit.webhook import Receiver

CLOCK = os.sysconf("SC_CLK_TCK")


def thread_cpu(native_id: int) -> float:
    """utime + stime of one thread of this process, in seconds."""
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK


def run(kind: str, n: int, frame: np.ndarray) -> tuple[float, float]:
    """(CPU seconds of the sink thread per event, wall seconds per event) for a burst of n event starts."""
    with Receiver("ok") as hook, Receiver("ok", path="/json") as js, SmtpReceiver() as smtp:
        if kind == "webhook":
            cfg = AlertsConfig.model_validate({"webhook": {"url": hook.url}, "queue_size": n})
            extra, done = [], lambda: hook.hits >= n
        else:
            url = (f"json://127.0.0.1:{js.port}/json" if kind == "json" else
                   f"mailto://127.0.0.1:{smtp.port}?from=monitor@example.com&to=me@example.com")
            cfg = AlertsConfig.model_validate({"queue_size": n})
            extra = notify_sinks([NotifyConfig.model_validate({"urls": [url], "retry_for": 0})], None)
            done = (lambda: js.hits >= n) if kind == "json" else (lambda: len(smtp.messages) >= n)
        sinks = SinkSet(cfg, Metrics(), None, extra=extra)
        sinks.start()
        sink = next(s for s in sinks._sinks if s.name in ("webhook", "notify"))
        tid = sink.thread.native_id
        cpu0, t0 = thread_cpu(tid), time.perf_counter()
        for i in range(n):
            ev = Event(id=i + 1, camera="cam", rule="r", label="car", score=0.9, peak_score=0.9,
                       started_at=time.time())
            sinks.emit("start", ev, frame)
        while not done():
            time.sleep(0.005)
        wall, cpu = time.perf_counter() - t0, thread_cpu(tid) - cpu0
        sinks.stop(2.0)
    return cpu / n, wall / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100)
    ap.add_argument("--mail-events", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 255, (432, 768, 3), dtype=np.uint8)
    kinds = ("webhook", "json", "mail")
    figures: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds if r % 2 == 0 else reversed(kinds):
            figures[kind].append(run(kind, args.mail_events if kind == "mail" else args.events, frame))
    base_cpu = statistics.median(c for c, _ in figures["webhook"])
    base_wall = statistics.median(w for _, w in figures["webhook"])
    print(f"{args.events} event starts per run ({args.mail_events} for mail), {args.rounds} rounds, medians")
    print(f"{'sink':10} {'CPU ms/event':>13} {'x webhook':>10} {'wall ms/event':>14} {'x webhook':>10}")
    for kind in kinds:
        cpu = statistics.median(c for c, _ in figures[kind])
        wall = statistics.median(w for _, w in figures[kind])
        print(f"{kind:10} {cpu * 1000:13.2f} {cpu / base_cpu:10.1f} {wall * 1000:14.2f} {wall / base_wall:10.1f}")


if __name__ == "__main__":
    main()
