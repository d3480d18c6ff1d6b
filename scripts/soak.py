"""`scripts/soak.py`: the daemon on N real RTSP streams for M minutes; memory, latency and alert bookkeeping over
time.

Starts the GStreamer RTSP test server (../shared/tools/rtsp_serve.py, under the system Python) with --minutes
covering the run, points N cameras at it (round robin over the sample videos), watches the demo model's top class
on the car video at a min_score where it flickers, and prints:
- RSS after the warm-up and at the end (growth should stay under 5 %), and the peak;
- capture-to-result latency p50/p99/max per window (default 5 minutes; p99 should stay flat);
- events started as counted from the log ("event N started" lines) against rows in SQLite (must be equal);
- frames classified, reconnects, ERROR lines logged.
Exit status 1 when one of those criteria fails, so a script can run it unattended.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import _setup
from monitor.bench.common import percentile
from testkit.faults import CrashWatch, EventLog, flicker_rule, read_events
from testkit.rtsp import RtspServer, free_port
from monitor.inference.locate import resolve_weights
from monitor.config.types import CameraConfig, Config, EventsConfig, ModelConfig, RuleConfig

VIDEOS = ("car-detection", "bottle-detection", "one-by-one-person-detection")
RSS_GROWTH_LIMIT = 0.05
P99_FLAT_LIMIT = 2.0                    # last window's p99 at most this many times the first one's


def rss_mb() -> float:
    """Resident set size now (not the peak), from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_soak(weights: Path, minutes: float, window: float, streams: int, fps: float = 5.0,
             warmup: float | None = None, progress: bool = True) -> dict[str, Any]:
    from monitor.daemon import Daemon
    from monitor.core.groups import lookup

    videos = [_setup.VIDEOS / f"{name}.mp4" for name in VIDEOS]
    missing = [str(v) for v in videos if not v.is_file()]
    if missing:
        raise SystemExit(f"scripts/soak.py: sample videos missing: {', '.join(missing)}")
    warmup = min(60.0, window) if warmup is None else warmup
    label, min_score = flicker_rule(weights, videos[0])
    canonical, indices = lookup(label)
    rule = RuleConfig(name="soak", classes=(label,), indices=((canonical, tuple(indices)),), min_score=min_score,
                      min_frames=2, end_after=2.0, cooldown=5.0)

    def say(text: str) -> None:
        if progress:
            print(text, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="monitor-soak.") as tmp, \
            RtspServer(free_port(), videos, minutes=minutes + warmup / 60 + 2) as server:
        db = Path(tmp) / "events.db"
        cameras = tuple(CameraConfig(name=f"cam{i}", source=server.url(videos[i % len(videos)].stem), fps=fps)
                        for i in range(streams))
        config = Config(model=ModelConfig(weights=weights, threads=2, top_k=3), cameras=cameras, watchlist=(rule,),
                        events=EventsConfig(database=db))
        with EventLog() as events, CrashWatch() as crashes:
            daemon = Daemon(config)
            daemon.start(web=False)
            rss_started = rss_mb()
            say(f"soak: {streams} RTSP streams at {fps:g} fps, rule {label!r} >= {min_score:.3f}; warm-up "
                f"{warmup:g} s, then {minutes:g} min in windows of {window:g} s")
            worker = daemon.worker
            try:
                time.sleep(warmup)
                latencies: deque[float] = deque(maxlen=100_000)
                worker.latency_observer = latencies.append
                rss_start = rss_mb()
                rss_peak = rss_start
                windows: list[dict[str, Any]] = []
                end = time.monotonic() + minutes * 60
                while time.monotonic() < end - 0.5:
                    w_end = min(end, time.monotonic() + window)
                    lat: list[float] = []
                    n0, t0 = worker.classified, time.monotonic()
                    rec0 = sum(c.status()["reconnects"] for c in daemon.cameras.values())
                    while time.monotonic() < w_end:
                        time.sleep(min(0.5, max(0.0, w_end - time.monotonic())))
                        while latencies:
                            lat.append(latencies.popleft())
                        rss_peak = max(rss_peak, rss_mb())
                    elapsed = time.monotonic() - t0
                    w = {
                        "window": len(windows) + 1, "seconds": round(elapsed, 1),
                        "classified": worker.classified - n0,
                        "frames_per_second": round((worker.classified - n0) / elapsed, 2),
                        "latency_p50_ms": round(percentile(lat, 50) * 1000, 1),
                        "latency_p99_ms": round(percentile(lat, 99) * 1000, 1),
                        "latency_max_ms": round(max(lat) * 1000, 1) if lat else None,
                        "reconnects": sum(c.status()["reconnects"] for c in daemon.cameras.values()) - rec0,
                        "rss_mb": round(rss_mb(), 1),
                        "events_logged": len(events.started),
                    }
                    windows.append(w)
                    say(f"  window {w['window']}: {w['frames_per_second']} frames/s, latency p50 "
                        f"{w['latency_p50_ms']} ms p99 {w['latency_p99_ms']} ms, RSS {w['rss_mb']} MB, "
                        f"reconnects {w['reconnects']}, events so far {w['events_logged']}")
                rss_end = rss_mb()
                cameras_up = sum(1 for c in daemon.cameras.values() if c.status()["state"] == "up")
            finally:
                daemon.stop()
        rows = read_events(db)
    logged = [i for i in events.started if i is not None]
    p99 = [w["latency_p99_ms"] for w in windows if w["classified"]]
    figures = {
        "streams": streams, "fps_per_stream": fps, "minutes": minutes, "window_s": window, "warmup_s": warmup,
        "rule": {"label": label, "min_score": round(min_score, 4)},
        "rss_mb_after_start": round(rss_started, 1), "rss_mb_start": round(rss_start, 1),
        "rss_mb_end": round(rss_end, 1), "rss_mb_peak": round(rss_peak, 1),
        "rss_growth": round((rss_end - rss_start) / rss_start, 4),
        "latency_p99_ms_per_window": p99,
        "latency_p99_last_over_first": round(p99[-1] / p99[0], 3) if len(p99) >= 2 and p99[0] else None,
        "latency_p99_max_over_min": round(max(p99) / min(p99), 3) if p99 and min(p99) else None,
        "classified": sum(w["classified"] for w in windows),
        "reconnects": sum(w["reconnects"] for w in windows),
        "cameras_up_at_end": cameras_up,
        "events_logged": len(events.started), "events_logged_with_id": len(logged), "events_in_sqlite": len(rows),
        "errors_logged": crashes.crashes,
        "windows": windows,
    }
    figures["checks"] = {
        "rss_growth_under_5pct": figures["rss_growth"] < RSS_GROWTH_LIMIT,
        "latency_p99_flat": (figures["latency_p99_last_over_first"] or 0) <= P99_FLAT_LIMIT,
        "events_log_equals_sqlite": len(events.started) == len(rows) and sorted(logged) == sorted(rows),
        "no_errors_logged": crashes.crashes == 0,
    }
    figures["error_lines"] = crashes.report()[:10]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="measured duration (default 30)")
    parser.add_argument("--window", type=float, default=300.0, metavar="S", help="latency window in seconds (default 300)")
    parser.add_argument("--streams", type=int, default=4, help="RTSP cameras (default 4)")
    parser.add_argument("--fps", type=float, default=5.0, help="classifications per second per camera (default 5)")
    parser.add_argument("--warmup", type=float, default=None, metavar="S",
                        help="seconds before the first window, not measured (default: the window, at most 60)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--weights", metavar="FILE", help="runtime artifact (default: demo weights built here)")
    parser.add_argument("-c", "--config", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-weights.") as tmp:
        args.weights = str(_setup.weights(args.weights, Path(tmp)))
        return bench_soak(args)


def bench_soak(args: argparse.Namespace) -> int:
    weights = resolve_weights(args.weights, args.config)
    if not weights.is_file():
        raise SystemExit(f"scripts/soak.py: weights not found: {weights} (pass --weights FILE, or build the "
                         f"demo network: monitor weights demo --out {weights})")
    if args.minutes <= 0 or args.window <= 0 or args.streams < 1:
        raise SystemExit("scripts/soak.py: --minutes and --window must be > 0, --streams >= 1")
    root = logging.getLogger()
    if not root.handlers:
        # Warnings and errors on stderr; the INFO lines (counted by the run) stay out of the figures.
        handler = logging.StreamHandler()
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
        root.addHandler(handler)
    figures = run_soak(weights, args.minutes, args.window, args.streams, fps=args.fps, warmup=args.warmup,
                       progress=not args.json)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        f = figures
        print(f"soak: {f['streams']} RTSP streams x {f['fps_per_stream']:g} fps for {f['minutes']:g} min "
              f"(windows of {f['window_s']:g} s after {f['warmup_s']:g} s warm-up); {f['classified']} frames "
              f"classified, {f['reconnects']} reconnects, {f['cameras_up_at_end']}/{f['streams']} cameras up at the end")
        print(f"  RSS: {f['rss_mb_start']} MB after warm-up -> {f['rss_mb_end']} MB at the end "
              f"({f['rss_growth']:+.1%}), peak {f['rss_mb_peak']} MB")
        print(f"  latency p99 per window (ms): {f['latency_p99_ms_per_window']} "
              f"(last/first {f['latency_p99_last_over_first']}, max/min {f['latency_p99_max_over_min']})")
        print(f"  events: {f['events_logged']} 'event started' log lines ({f['events_logged_with_id']} with an id), "
              f"{f['events_in_sqlite']} rows in SQLite; ERROR lines logged: {f['errors_logged']}")
        for name, ok in f["checks"].items():
            print(f"  {'ok  ' if ok else 'FAIL'} {name}")
        for line in f["error_lines"]:
            print(f"    {line}")
    return 0 if all(figures["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
