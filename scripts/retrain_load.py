#!/usr/bin/env python3
"""What back-to-back retraining costs the live cameras: capture-to-result latency of a daemon (two file cameras at
5 fps, one custom head) in windows without retraining and with a retrain always running, the trainer thread at
each CPU priority (normal, low = nice 19, idle = SCHED_IDLE), the windows alternating in one run so machine noise
hits every mode alike. retrain_interval is 0 here: this is the load the interval exists to bound.

    .venv/bin/python scripts/retrain_load.py [--window 15] [--rounds 3] [--examples 16] [--weights FILE]
        [--modes none,normal:8,low:8,low:2,idle:2]   (normal:8 = the trainer before issue 17)
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import _setup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=15.0, help="seconds per window (default 15)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of windows, one per mode")
    parser.add_argument("--examples", type=int, default=16, help="examples per class (3 classes; default 16)")
    parser.add_argument("--modes", default="none,normal:8,low:8,low:2,idle:2",
                        help="comma-separated PRIORITY[:FRAMES] (frames per inference call of the trainer, "
                             "default the daemon's, 2); none = no retraining")
    parser.add_argument("--weights", metavar="FILE", help="runtime artifact (default: demo weights built here)")
    args = parser.parse_args()
    _setup.quiet_logging()

    import cv2

    from monitor.config.loader import parse_config
    from monitor.daemon import Daemon
    from monitor.inference.classifier import Classifier
    from monitor.inference.heads import save_head
    from monitor.inference.heads.retrain import FRAMES_PER_CALL
    from monitor.inference.heads.training import train_head
    from monitor.weights import synthetic_batches
    from testkit.footage import read_video_frames

    with tempfile.TemporaryDirectory(prefix="retrain-load.") as tmp:
        root = Path(tmp)
        weights = _setup.weights(args.weights, root)
        n = args.examples
        examples = root / "state" / "examples" / "scene"
        for cls, frames in (("cars", read_video_frames("car-detection", n, stride=max(1, 360 // n))),
                            ("bottles", read_video_frames("bottle-detection", n, stride=max(1, 1100 // n))),
                            ("none", list(next(iter(synthetic_batches(n, batch=n, seed=3)))))):
            (examples / cls).mkdir(parents=True)
            for i, f in enumerate(frames):
                cv2.imwrite(str(examples / cls / f"{i:03d}.jpg"), f)
        head, _ = train_head(Classifier(weights), "scene", examples, progress=False)
        save_head(head, root / "scene.head")
        config = parse_config({
            "model": {"weights": str(weights)},
            "cameras": [{"name": "street", "source": str(_setup.VIDEOS / "car-detection.mp4"), "loop": True,
                         "fps": 5},
                        {"name": "shelf", "source": str(_setup.VIDEOS / "bottle-detection.mp4"), "loop": True,
                         "fps": 5}],
            "custom_classes": [{"name": "scene", "head": str(root / "scene.head"), "retrain_interval": 0}],
            "events": {"database": str(root / "state" / "events.db")},
        }, root)
        daemon = Daemon(config)
        daemon.start(web=False)
        trainer = daemon.custom.trainer
        seen: list[float] = []
        daemon.worker.latency_observer = seen.append
        results: dict[str, list[tuple[float, float, int, float]]] = {}
        try:
            time.sleep(3)          # cameras open, first batches
            for _ in range(args.rounds):
                for mode in args.modes.split(","):
                    if mode != "none":
                        trainer.stop(60)
                        priority, _, frames = mode.partition(":")
                        trainer.priority = priority
                        trainer.frames_per_call = int(frames or FRAMES_PER_CALL)
                        trainer.start()
                    seen.clear()
                    jobs, busy = 0, 0.0
                    end = time.monotonic() + args.window
                    while time.monotonic() < end:
                        if mode == "none":
                            time.sleep(0.2)
                            continue
                        daemon.custom.retrain("scene")
                        while trainer.status("scene")["state"] in ("queued", "training"):
                            time.sleep(0.05)
                        st = trainer.status("scene")
                        if st["state"] != "done":
                            raise SystemExit(f"retrain failed: {st}")
                        jobs += 1
                        busy += st["seconds"]
                    got = sorted(seen)
                    results.setdefault(mode, []).append(
                        (statistics.fmean(got) * 1000, got[int(0.95 * (len(got) - 1))] * 1000, jobs,
                         busy / jobs if jobs else 0.0))
                    print(f"{mode:>6}: {len(got)} frames, mean {statistics.fmean(got) * 1000:6.1f} ms, "
                          f"p95 {got[int(0.95 * (len(got) - 1))] * 1000:6.1f} ms, {jobs} retrains "
                          f"({busy / jobs if jobs else 0:.2f} s each)", flush=True)
        finally:
            daemon.worker.latency_observer = None
            daemon.stop()
        base = statistics.fmean(r[0] for r in results.get("none", [(float("nan"), 0, 0, 0)]))
        print(f"\n{len(next(iter(results.values())))} rounds of {args.window:g} s windows, {3 * n} examples x 4 "
              f"augmentations per retrain, model.threads {config.model.threads}, {daemon.classifier.runtime}")
        print("| trainer priority | mean capture-to-result | p95 | vs no retraining | retrains | s per retrain |")
        print("| --- | --- | --- | --- | --- | --- |")
        for mode, rows in results.items():
            mean = statistics.fmean(r[0] for r in rows)
            p95 = statistics.fmean(r[1] for r in rows)
            jobs = sum(r[2] for r in rows)
            per = statistics.fmean(r[3] for r in rows if r[2]) if jobs else 0.0
            print(f"| {'no retraining' if mode == 'none' else mode.replace(':', ', frames per call ')} | {mean:.1f} ms | {p95:.1f} ms | "
                  f"{mean / base:.2f}x | {jobs} | {per:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
