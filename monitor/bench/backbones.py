"""`monitor bench backbones`: per backbone (ResNet-18, ResNet-50, MobileNetV3-Large), one run: artifact sizes,
ms per frame at batch 1 and 4 for each runtime, peak RSS, `monitor run` start to first classification, and INT8
against FP32 top-1 agreement on real frames.

Official weights cannot be downloaded everywhere, so each backbone is a fitted demo network (`monitor weights demo
--arch A --fit VIDEO`): random-init body, last layer fitted to k-means groups of the footage so that top classes
win by real margins; its FP32 checkpoint is the agreement's reference. Speeds and sizes do not depend on the
weights' values. Timings reuse monitor/bench/classify.py's probes: each runtime alone in a fresh process, in
turns; ResNet-18 (the default backbone) is the same-run baseline of the ratios.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from monitor.bench.classify import _time_in_processes, first_classification_seconds, runtime_peak_rss_mb
from monitor.bench.common import footage, read_frames
from monitor.inference.archs import ARCHS
from monitor.inference.classifier import configure_threads


def _build(arch: str, folder: Path, videos: list[Path], frames: int) -> tuple[Path, float]:
    from monitor import weights

    out = folder / f"{arch}-demo-fitted.pt"
    started = time.monotonic()
    if not (out.is_file() and weights.openvino_path(out).is_file() and weights.fp32_checkpoint_path(out).is_file()):
        weights.demo(out, arch=arch, fit=[str(v) for v in videos], frames=frames, calibration_frames=frames)
    return out, time.monotonic() - started


def _row(arch: str, pt: Path, videos: list[Path], frames: list, count: int, threads: int,
         build_s: float) -> dict[str, Any]:
    from monitor import weights

    ov = weights.openvino_path(pt)
    paths = {"torch": pt, "openvino": ov}
    ms = {batch: _time_in_processes(paths, frames, batch, threads) for batch in (1, 4)}
    rss = {r: runtime_peak_rss_mb(str(p), threads, r) for r, p in paths.items()}
    # one cold start (OpenVINO compiles) then one warm (from its cache), as a daemon restart
    for f in (ov.resolve().parent / "openvino-cache").glob("*"):
        f.unlink()
    start = {r: [first_classification_seconds(pt, r, videos[0], threads) for _ in range(2 if r == "openvino" else 1)]
             for r in ("openvino", "torch")}
    agree = weights.agreement(pt, [str(v) for v in videos], count)
    return {"arch": arch, "title": ARCHS[arch].title, "build_s": round(build_s, 1),
            "size_mb": {"torch": round(pt.stat().st_size / 1e6, 1), "openvino": round(ov.stat().st_size / 1e6, 1)},
            "ms": {f"{r}_b{b}": round(ms[b][r], 2) for b in (1, 4) for r in paths},
            "peak_rss_mb": {r: round(v) for r, v in rss.items()},
            "start_s": {r: [round(v, 2) for v in vs] for r, vs in start.items()},
            "agreement": {k: agree[k] for k in ("frames", "openvino_vs_fp32", "torch_int8_vs_fp32",
                                                "openvino_vs_torch_int8", "distinct_top1") if k in agree}}


def bench_backbones(args: argparse.Namespace) -> int:
    threads = configure_threads(None)
    videos = footage(args.video)
    frames = read_frames(videos, args.frames)
    archs = list(dict.fromkeys(["resnet18", *args.arch]))   # ResNet-18 first: the ratios' baseline
    rows = []
    with tempfile.TemporaryDirectory(prefix="monitor-bench-backbones-") as tmp:
        folder = Path(args.dir) if args.dir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for arch in archs:
            pt, build_s = _build(arch, folder, videos, args.frames)
            rows.append(_row(arch, pt, videos, frames, args.frames, threads, build_s))
            # each row as it is measured (a run takes a while per backbone on a loaded machine)
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    base = rows[0]
    for r in rows:
        r["openvino_b1_vs_resnet18"] = round(r["ms"]["openvino_b1"] / base["ms"]["openvino_b1"], 2)
    result = {"frames": len(frames), "threads": threads, "videos": [v.name for v in videos], "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"monitor bench backbones: {len(frames)} real frames ({', '.join(v.name for v in videos)}), {threads} "
          f"threads; fitted demo networks (`weights demo --arch A --fit`), INT8; one run, each runtime alone in its "
          f"own process, 3 rounds in turns")
    print("| backbone | artifact MB (pt / ov) | torch ms b1 / b4 | OpenVINO ms b1 / b4 | OV b1 vs ResNet-18 | "
          "peak RSS MB (torch / OV) | start s (torch / OV cold, warm) | top-1 INT8 vs FP32 (OV / torch) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        m, a, s = r["ms"], r["agreement"], r["start_s"]
        print(f"| {r['title']} | {r['size_mb']['torch']} / {r['size_mb']['openvino']} | "
              f"{m['torch_b1']:.2f} / {m['torch_b4']:.2f} | {m['openvino_b1']:.2f} / {m['openvino_b4']:.2f} | "
              f"{r['openvino_b1_vs_resnet18']:.2f}x | {r['peak_rss_mb']['torch']} / {r['peak_rss_mb']['openvino']} | "
              f"{s['torch'][0]:.2f} / {s['openvino'][0]:.2f}, {s['openvino'][-1]:.2f} | "
              f"{a.get('openvino_vs_fp32', 0) * 100:.1f} % / {a.get('torch_int8_vs_fp32', 0) * 100:.1f} % |")
    return 0
