"""`monitor bench pipeline`: the real pipeline (capture threads + worker) vs the seeds' naive loop."""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import cv2

from monitor.bench.common import SeedsBaseline, peak_rss_mb, percentile
from monitor.inference.locate import resolve_weights
from monitor.config.types import CameraConfig, Config, EventsConfig, ModelConfig
from monitor.core.redact import redact_url


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_pipeline(sources: list[str], weights: Path, seconds: float, native_rate: bool,
                 warmup: float = 2.0) -> dict:
    from monitor.daemon import Daemon

    cameras = tuple(CameraConfig(name=f"cam{i}", source=s, fps=0, loop=not s.startswith(("rtsp:", "http")))
                    for i, s in enumerate(sources))
    with tempfile.TemporaryDirectory(prefix="monitor-bench.") as tmp:
        config = Config(model=ModelConfig(weights=weights, threads=2, top_k=3), cameras=cameras,
                        events=EventsConfig(database=Path(tmp) / "events.db"))
        daemon = Daemon(config, pace=native_rate)
        daemon.start(web=False)
        try:
            time.sleep(warmup)
            worker = daemon.worker
            n0, cpu0, t0 = worker.classified, _cpu_seconds(), time.monotonic()
            latencies: list[float] = []
            worker.latency_observer = latencies.append      # list.append: atomic under the GIL
            time.sleep(seconds)
            n1, cpu1, t1 = worker.classified, _cpu_seconds(), time.monotonic()
            worker.latency_observer = None
            captured = sum(c.status()["frames"] for c in daemon.cameras.values())
        finally:
            daemon.stop()
    classified = n1 - n0
    return {
        "streams": len(sources), "native_rate": native_rate, "seconds": round(t1 - t0, 1),
        "classified": classified, "frames_per_second": round(classified / (t1 - t0), 1),
        "latency_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "latency_p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "cpu_seconds_per_frame": round((cpu1 - cpu0) / max(classified, 1), 4),
        "frames_captured": captured,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def run_naive(source: str, seconds: float) -> dict:
    """The seeds' loop: read a frame, PIL preprocessing, FP32 model, one thread, over and over."""
    baseline = SeedsBaseline()
    cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise SystemExit(f"monitor bench: cannot open {redact_url(source)}")
    count, latencies = 0, []
    cpu0, start = _cpu_seconds(), time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            ok, frame = cap.read()
            t = time.monotonic()
            if not ok:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                continue
            baseline([frame])
            latencies.append(time.monotonic() - t)
            count += 1
    finally:
        cap.release()
    elapsed = time.monotonic() - start
    return {"classified": count, "frames_per_second": round(count / elapsed, 1),
            "latency_p50_ms": round(percentile(latencies, 50) * 1000, 1),
            "latency_p99_ms": round(percentile(latencies, 99) * 1000, 1),
            "cpu_seconds_per_frame": round((_cpu_seconds() - cpu0) / max(count, 1), 4)}


def bench_pipeline(args: argparse.Namespace) -> int:
    weights = resolve_weights(args.weights, args.config)
    sources = [str(Path(s).resolve()) if "://" not in s else s for s in args.sources]
    ours = run_pipeline(sources, weights, args.seconds, args.native_rate)
    naive = None if args.no_baseline else run_naive(sources[0], min(args.seconds, 15.0))
    result = {"sources": [redact_url(s) for s in sources], "pipeline": ours, "naive": naive,
              "speedup": round(ours["frames_per_second"] / naive["frames_per_second"], 1) if naive else None}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    mode = "native rate" if args.native_rate else "files read as fast as the pipeline takes them"
    print(f"monitor bench pipeline: {len(sources)} source(s), every frame due, {mode}, {ours['seconds']} s")
    print(f"{'':>24} | {'frames/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'CPU s/frame':>11}")
    rows = [("pipeline (INT8, threads)", ours)] + ([("naive loop (PIL + FP32)", naive)] if naive else [])
    for name, r in rows:
        print(f"{name:>24} | {r['frames_per_second']:>8.1f} | {r['latency_p50_ms']:>7.1f} | "
              f"{r['latency_p99_ms']:>7.1f} | {r['cpu_seconds_per_frame']:>11.4f}")
    if naive:
        print(f"speedup: {result['speedup']}x frames/s over the naive loop on {Path(sources[0]).name}")
    print(f"peak RSS of the pipeline: {ours['peak_rss_mb']:.0f} MB (measured before the baseline loaded)")
    return 0
