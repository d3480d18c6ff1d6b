"""`monitor bench smoothing`: how many events one rule produces on real footage, without and with smoothing.

Every video is sampled at the camera rate (--fps) on its own timeline; one classification pass feeds two alert
engines that differ only in the rule's `smoothing`, on a clock that follows the video time, so the figures do
not depend on how fast this machine classifies.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from monitor.alerts.engine import AlertEngine
from monitor.bench.common import footage
from monitor.config.types import RuleConfig, SmoothingConfig
from monitor.core import groups
from monitor.core.metrics import Metrics
from monitor.inference.classifier import Classifier, top_k_predictions
from monitor.inference.heads import load_head
from monitor.inference.heads.cam import pooled_features
from monitor.inference.results import CustomResult, Result
from monitor.inference.locate import resolve_weights

BATCH = 8
PERCENTILES = (50, 75, 90, 95, 98, 99)


class _Frame:                       # what the engine reads of a capture Frame
    __slots__ = ("image", "seq", "captured_at", "captured_mono")

    def __init__(self, image: np.ndarray, seq: int, t: float) -> None:
        self.image, self.seq, self.captured_at, self.captured_mono = image, seq, t, t


def sampled(video: Path, fps: float) -> Iterator[tuple[float, np.ndarray]]:
    """(video time, frame) at `fps` per second of video."""
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise SystemExit(f"monitor bench smoothing: cannot open {video}")
    src_fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    step = max(1, round(src_fps / fps))
    index = 0
    try:
        while cap.grab():
            if index % step == 0:
                ok, frame = cap.retrieve()
                if ok:
                    yield index / src_fps, frame
            index += 1
    finally:
        cap.release()


class _Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def bench_smoothing(args: argparse.Namespace) -> int:
    clf = Classifier(resolve_weights(args.weights, args.config))
    head = load_head(args.head, clf.backbone_id) if args.head else None
    videos = footage(args.video)
    # One pass: (video, time, probabilities, custom) per sampled frame.
    rows: list[tuple[str, float, np.ndarray, dict]] = []
    for video in videos:
        pending: list[tuple[float, np.ndarray]] = []
        for item in list(sampled(video, args.fps)) + [None]:  # type: ignore[list-item]
            if item is not None:
                pending.append(item)
            if pending and (item is None or len(pending) == BATCH):
                inf = clf.infer([f for _, f in pending])
                for (t, _), p, feats in zip(pending, inf.probabilities, pooled_features(inf.feature_maps)):
                    custom = {}
                    if head is not None:
                        custom[head.name] = CustomResult(head.name, head.classes, head.probabilities(feats[None])[0])
                    rows.append((video.name, t, p, custom))
                pending = []
    entries, label = _entries(args, clf, head, rows)
    scores = _scores(entries, rows)
    if args.min_score is not None:
        thresholds = [(None, args.min_score)]
    else:
        # From "the class is there half of the time" to "rare spikes": smoothing helps against the latter
        # and can split events in the former; both are shown.
        thresholds = [(q, float(np.percentile(scores, q))) for q in PERCENTILES]
    smoothed_name = f"{args.method}-{args.window}"
    table = []
    for q, min_score in thresholds:
        row = {"percentile": q, "min_score": round(min_score, 4)}
        for name, smoothing in (("none", None), (smoothed_name, SmoothingConfig(window=args.window, method=args.method))):
            rule = RuleConfig(name="bench", classes=tuple(n for n, _ in entries), indices=entries,
                              min_score=min_score, min_frames=args.min_frames, end_after=args.end_after,
                              cooldown=args.cooldown, smoothing=smoothing)
            row[name] = _count_events(rule, rows)
        row["hit_frames"] = int((scores >= min_score).sum())
        table.append(row)
    result = {"videos": [v.name for v in videos], "frames": len(rows), "fps": args.fps, "rule": label,
              "min_frames": args.min_frames, "end_after": args.end_after, "cooldown": args.cooldown,
              "smoothing": smoothed_name, "rows": table, "model": clf.meta.name}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"monitor bench smoothing: {len(rows)} frames sampled at {args.fps:g} fps from "
          f"{', '.join(result['videos'])} ({clf.meta.name})")
    print(f"rule: {label}, min_frames {args.min_frames}, end_after {args.end_after:g} s, cooldown {args.cooldown:g} s")
    print(f"{'min_score':>18} | {'frames >= it':>12} | {'events, no smoothing':>20} | {'events, ' + smoothed_name:>20}")
    for row in table:
        where = f"{row['min_score']:.3f}" + (f" (p{row['percentile']})" if row["percentile"] is not None else "")
        print(f"{where:>18} | {row['hit_frames']:>12} | {sum(row['none'].values()):>20} | "
              f"{sum(row[smoothed_name].values()):>20}")
    return 0


def _entries(args: argparse.Namespace, clf: Classifier, head, rows) -> tuple[tuple, str]:
    if args.classes:
        out = []
        for name in args.classes:
            if ":" in name:
                out.append((name, ()))
            else:
                out.append(groups.lookup(name))
        return tuple(out), ", ".join(args.classes)
    # Default: the class the model names most often on this footage, at a threshold where it comes and goes.
    tops = top_k_predictions(np.stack([r[2] for r in rows]), clf.labels, 1)
    label, _ = Counter((p[0].label, p[0].index) for p in tops).most_common(1)[0]
    return ((label[0], (label[1],)),), f"{label[0]} (most frequent top-1 class)"


def _scores(entries, rows) -> np.ndarray:
    """Per frame, the rule's best entry score (unsmoothed)."""
    out = np.zeros(len(rows))
    for name, ix in entries:
        if ":" in name:
            h, cls = name.split(":", 1)
            s = np.array([r[3][h].score(cls) if h in r[3] else 0.0 for r in rows])
        else:
            s = np.array([float(r[2][list(ix)].sum()) for r in rows])
        out = np.maximum(out, s)
    return out


def _count_events(rule: RuleConfig, rows: Sequence[tuple[str, float, np.ndarray, dict]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for video in dict.fromkeys(r[0] for r in rows):
        clock = _Clock()
        metrics = Metrics()
        engine = AlertEngine([rule], None, None, metrics, clock=clock, persist_every=None)
        for seq, (v, t, p, custom) in enumerate(r for r in rows if r[0] == video):
            clock.t = t
            engine.observe(Result(camera="bench", frame=_Frame(np.empty((1, 1, 3), np.uint8), seq, t),  # type: ignore[arg-type]
                                  predictions=[], probabilities=p, classified_at=t, latency=0.0, custom=custom))
        engine.close_all()
        counts[video] = int(sum(s.value for m in metrics.registry.collect() if m.name == "monitor_alerts"
                                for s in m.samples if s.name == "monitor_alerts_total"))
    return counts
