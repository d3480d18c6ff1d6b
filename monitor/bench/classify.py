"""`monitor bench classify`: preprocessing + inference per frame, the seeds' PIL + FP32 path vs the INT8 artifact."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Callable, Sequence

import numpy as np
import torch

from monitor.bench.common import SeedsBaseline, footage, median_ms_per_frame, read_frames
from monitor.inference.classifier import Classifier, configure_threads
from monitor.inference.weights import resolve_weights


def _time(run: Callable[[Sequence[np.ndarray]], object], frames: Sequence[np.ndarray], batch: int,
          warmup: int = 3) -> list[float]:
    batches = [frames[i:i + batch] for i in range(0, len(frames) - batch + 1, batch)]
    for b in batches[:warmup]:
        run(b)
    times = []
    for b in batches:
        t = time.perf_counter()
        run(b)
        times.append(time.perf_counter() - t)
    return times


_RSS_PROBE = """
import sys, numpy as np
from monitor.bench.common import peak_rss_mb
from monitor.inference.classifier import Classifier
c = Classifier(sys.argv[1], threads=int(sys.argv[2]))
c.classify([np.zeros((432, 768, 3), np.uint8)] * 4)
print(peak_rss_mb())
"""


def runtime_peak_rss_mb(weights: str, threads: int) -> float:
    """Peak RSS of a fresh process that only loads the artifact and classifies: what the daemon pays."""
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, weights, str(threads)], capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_classify(args: argparse.Namespace) -> int:
    weights = resolve_weights(args.weights, args.config)
    threads = configure_threads(None)
    frames = read_frames(footage(args.video), args.frames)
    clf = Classifier(weights)
    baseline = SeedsBaseline()
    rows = []
    for batch in (1, 4):
        base = median_ms_per_frame(_time(baseline, frames[: max(8 * batch, len(frames) // 4)], batch), batch)
        ours = median_ms_per_frame(_time(lambda b: clf.probabilities(b), frames, batch), batch)
        prep = median_ms_per_frame(_time(lambda b: clf.prepare(b), frames, batch), batch)
        rows.append({"batch": batch, "baseline_ms": round(base, 2), "int8_ms": round(ours, 2),
                     "int8_preprocess_ms": round(prep, 3), "speedup": round(base / ours, 1)})
    from monitor.bench.heads_cost import heads_cost
    heads_rows = [heads_cost(clf, frames, batch) for batch in (1, 4)]
    result = {"frames": len(frames), "threads": threads, "torch": torch.__version__, "weights": str(weights),
              "model": clf.meta.name, "engine": clf.meta.engine, "rows": rows, "heads": heads_rows,
              "runtime_peak_rss_mb": round(runtime_peak_rss_mb(str(weights), threads), 1)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"monitor bench classify: {len(frames)} real frames, {threads} threads, torch {torch.__version__}, "
          f"{clf.meta.name} ({clf.meta.engine})")
    print("baseline = seeds' path: PIL Resize(256)/CenterCrop(224)/ToTensor/Normalize + FP32 eager ResNet-18")
    print(f"{'batch':>5} | {'baseline ms/frame':>17} | {'INT8 ms/frame':>13} | {'of which preprocess':>19} | speedup")
    for r in rows:
        print(f"{r['batch']:>5} | {r['baseline_ms']:>17.2f} | {r['int8_ms']:>13.2f} | "
              f"{r['int8_preprocess_ms']:>19.3f} | {r['speedup']:>6.1f}x")
    for r in heads_rows:
        print(f"batch {r['batch']}: {r['heads']} custom heads + class activation map add {r['added_ms']:.3f} ms "
              f"to {r['plain_ms']:.2f} ms per frame: {r['overhead_percent']:.2f} %")
    print(f"peak RSS of a process that loads the INT8 artifact and classifies: {result['runtime_peak_rss_mb']:.0f} MB")
    return 0
