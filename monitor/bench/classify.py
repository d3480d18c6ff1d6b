"""`monitor bench classify`: preprocessing + inference per frame: the seeds' PIL + FP32 path, the torch INT8
artifact and the OpenVINO INT8 artifact, timed in one run; peak RSS of a process running each artifact; start of
`monitor run` to its first classification.

Each runtime is timed alone in its own process, in turns (torch, OpenVINO, OpenVINO, torch, ...): in one process
the two runtimes' thread pools disturb each other (OpenMP and TBB workers spin for a while after a call, taking
the cores from whichever runs next), which is a cost no daemon pays since it loads one runtime only."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from monitor.bench.common import SeedsBaseline, footage, read_frames
from monitor.inference.classifier import Classifier, configure_threads, select_artifact
from monitor.inference.locate import resolve_weights

Run = Callable[[Sequence[np.ndarray]], object]


def _time_batches(run: Run, frames: Sequence[np.ndarray], batch: int, rounds: int | None = None,
                  warmup: int = 3) -> float:
    """Median ms per frame of `run` over the frames in batches (the runtimes are timed in processes of their own:
    _time_in_processes)."""
    batches = [frames[i:i + batch] for i in range(0, len(frames) - batch + 1, batch)][:rounds]
    for b in batches[:warmup]:
        run(b)
    times = []
    for b in batches:
        t = time.perf_counter()
        run(b)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1000.0 / batch


# A process that loads one artifact and times it on the frames in an .npz: what a daemon running it pays.
_TIME_PROBE = """
import sys, time, numpy as np
from monitor.inference.classifier import Classifier
path, threads, runtime, frames_file, batch, warmup = sys.argv[1:7]
batch, warmup = int(batch), int(warmup)
with np.load(frames_file) as data:
    frames = [data[k] for k in sorted(data.files, key=lambda k: int(k[1:]))]
c = Classifier(path, threads=int(threads), runtime=runtime)
batches = [frames[i:i + batch] for i in range(0, len(frames) - batch + 1, batch)]
for b in batches[:warmup]:
    c.probabilities(b)
times = []
for b in batches:
    t = time.perf_counter()
    c.probabilities(b)
    times.append(time.perf_counter() - t)
print(float(np.median(times)) * 1000.0 / batch, "torch" in sys.modules)
"""


def _time_in_processes(paths: dict[str, Path], frames: Sequence[np.ndarray], batch: int, threads: int,
                       rounds: int = 3) -> dict[str, float]:
    """Median over `rounds` of each runtime's median ms per frame, each round a fresh process per runtime, the
    order turning every round so that neither always follows the other."""
    names = list(paths)
    times: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="monitor-bench-") as tmp:
        frames_file = Path(tmp) / "frames.npz"
        np.savez(frames_file, **{f"f{i}": f for i, f in enumerate(frames)})
        for r in range(rounds):
            for n in (names if r % 2 == 0 else names[::-1]):
                out = subprocess.run([sys.executable, "-c", _TIME_PROBE, str(paths[n]), str(threads), n,
                                      str(frames_file), str(batch), "3"], capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f"monitor bench: timing {n} failed: {out.stderr.strip()[-500:]}")
                times[n].append(float(out.stdout.split()[0]))
    return {n: float(np.median(v)) for n, v in times.items()}


# Imports only what the daemon's inference path imports (monitor.bench.common would pull in torch).
_RSS_PROBE = """
import sys, numpy as np
from monitor.inference.classifier import Classifier
c = Classifier(sys.argv[1], threads=int(sys.argv[2]), runtime=sys.argv[3])
c.classify([np.zeros((432, 768, 3), np.uint8)] * 4)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(hwm / 1024.0, "torch" in sys.modules)
"""


def runtime_peak_rss_mb(weights: str, threads: int, runtime: str = "auto") -> float:
    """Peak RSS of a fresh process that only loads the artifact and classifies: what the daemon pays."""
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, weights, str(threads), runtime], capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1].split()[0])


def first_classification_seconds(weights: Path, runtime: str, video: Path, threads: int) -> float:
    """Seconds from starting `monitor run` (a new process, one camera on a file) to its first classification,
    polled on /metrics every 10 ms."""
    with tempfile.TemporaryDirectory(prefix="monitor-bench-") as tmp:
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        config = Path(tmp) / "config.yaml"
        config.write_text(f"server: {{host: 127.0.0.1, port: {port}}}\n"
                          f"model: {{weights: {weights.resolve()}, runtime: {runtime}, threads: {threads}}}\n"
                          f"cameras:\n  - {{name: cam, source: {video.resolve()}, loop: true, fps: 5}}\n"
                          f"events: {{database: {tmp}/events.db}}\nlogging: {{level: warning}}\n")
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "-c", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while time.monotonic() - started < 120:
                try:
                    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                    m = re.search(r'monitor_frames_classified_total\{camera="cam"\} ([0-9.e+]+)', text)
                    if m and float(m.group(1)) >= 1:
                        return time.monotonic() - started
                except OSError:
                    pass
                if proc.poll() is not None:
                    raise SystemExit(f"monitor bench: `monitor run` exited with {proc.returncode}")
                time.sleep(0.01)
            raise SystemExit("monitor bench: no classification within 120 s")
        finally:
            proc.terminate()
            proc.wait(10)


def bench_classify(args: argparse.Namespace) -> int:
    weights = resolve_weights(args.weights, args.config)
    threads = configure_threads(None)
    videos = footage(args.video)
    frames = read_frames(videos, args.frames)
    torch_path, ov_path = select_artifact(weights, "torch"), select_artifact(weights, "openvino")
    if not ov_path.is_file():
        raise SystemExit(f"monitor bench: {ov_path} missing: rebuild with `monitor weights ...` (it writes both)")
    ov = Classifier(ov_path, threads=threads, runtime="openvino")
    baseline = SeedsBaseline()
    rows = []
    for batch in (1, 4):
        ms = _time_in_processes({"torch": torch_path, "openvino": ov_path}, frames, batch, threads)
        ms["preprocess"] = _time_batches(ov.prepare, frames, batch)
        base = {"baseline": _time_batches(baseline, frames, batch, rounds=max(8, len(frames) // (4 * batch)))}
        rows.append({"batch": batch, "baseline_ms": round(base["baseline"], 2), "torch_int8_ms": round(ms["torch"], 2),
                     "openvino_int8_ms": round(ms["openvino"], 2), "preprocess_ms": round(ms["preprocess"], 3),
                     "openvino_vs_torch": round(ms["torch"] / ms["openvino"], 2),
                     "openvino_vs_baseline": round(base["baseline"] / ms["openvino"], 1)})
    rss = {r: round(runtime_peak_rss_mb(str(p), threads, r), 1) for r, p in (("torch", torch_path),
                                                                              ("openvino", ov_path))}
    start: dict[str, list[float]] = {}
    if not args.no_start:
        cache = ov_path.resolve().parent / "openvino-cache"
        if cache.is_dir():  # a cold start first, then warm ones from OpenVINO's cache
            for f in cache.iterdir():
                f.unlink()
        for _ in range(3):
            for runtime in ("openvino", "torch"):
                start.setdefault(runtime, []).append(round(first_classification_seconds(weights, runtime, videos[0],
                                                                                      threads), 2))
    from monitor.bench.heads_cost import heads_cost
    heads_rows = [heads_cost(ov, frames, batch) for batch in (1, 4)]  # on the daemon's runtime
    result = {"frames": len(frames), "threads": threads, "weights": str(weights), "model": ov.meta.name,
              "rows": rows, "heads": heads_rows, "peak_rss_mb": rss, "start_to_first_classification_s": start}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"monitor bench classify: {len(frames)} real frames, {threads} threads, {ov.meta.name}; one run, "
          f"each runtime alone in its own process, 3 rounds in turns (shared machine: compare the ratios)")
    print("baseline = seeds' path: PIL Resize(256)/CenterCrop(224)/ToTensor/Normalize + FP32 eager ResNet-18")
    print(f"{'batch':>5} | {'baseline':>9} | {'torch INT8':>10} | {'OpenVINO INT8':>13} | {'preprocess':>10} | "
          f"OV vs torch | OV vs baseline   (ms per frame)")
    for r in rows:
        print(f"{r['batch']:>5} | {r['baseline_ms']:>9.2f} | {r['torch_int8_ms']:>10.2f} | {r['openvino_int8_ms']:>13.2f}"
              f" | {r['preprocess_ms']:>10.3f} | {r['openvino_vs_torch']:>10.2f}x | {r['openvino_vs_baseline']:>13.1f}x")
    print(f"peak RSS of a process that loads the artifact and classifies: torch {rss['torch']:.0f} MB, "
          f"OpenVINO {rss['openvino']:.0f} MB ({rss['torch'] / rss['openvino']:.2f}x less)")
    if start:
        print("`monitor run` start to first classification (s; OpenVINO: cold cache, then warm): "
              + "; ".join(f"{k} {', '.join(f'{v:.2f}' for v in vs)}" for k, vs in start.items()))
    for r in heads_rows:
        print(f"batch {r['batch']}: {r['heads']} custom heads + class activation map add {r['added_ms']:.3f} ms "
              f"to {r['plain_ms']:.2f} ms per frame (OpenVINO): {r['overhead_percent']:.2f} %")
    return 0
