"""What custom heads and class activation maps add to the per-frame time (part of `monitor bench classify`)."""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from monitor.inference.classifier import Classifier, top_k_predictions
from monitor.inference.heads import Head
from monitor.inference.heads.cam import pooled_features

HEADS = 3            # e.g. porch, garage door, driveway
CLASSES = 4


def _heads(dim: int) -> list[Head]:
    rng = np.random.default_rng(0)
    return [Head(f"h{i}", tuple(f"c{j}" for j in range(CLASSES)),
                 rng.normal(size=(CLASSES, dim)).astype(np.float32), np.zeros(CLASSES, np.float32), {})
            for i in range(HEADS)]


def heads_cost(clf: Classifier, frames: Sequence[np.ndarray], batch: int, repeat: int = 20) -> dict[str, float]:
    """Median ms/frame of the worker's inference step (preprocessing, network, top-k) and of what heads + maps
    add after it (activation map of the top class, pooled features, HEADS heads per frame), each timed on its
    own in the same run: the added step is a few numpy products, which a timing of the whole step would lose
    in the network's run-to-run noise on a loaded machine."""
    heads = _heads(clf.feature_dim)
    batches = [list(frames[i:i + batch]) for i in range(0, len(frames) - batch + 1, batch)]

    def extra(inf, tops) -> None:
        clf.class_maps(inf.feature_maps, [t[0].index for t in tops])
        pooled = pooled_features(inf.feature_maps)
        for h in heads:
            for row in range(len(tops)):      # per frame, as the worker does
                h.probabilities(pooled[row:row + 1])

    t_plain, t_extra = [], []
    for i, b in enumerate(batches):
        t = time.perf_counter()
        inf = clf.infer(b)
        tops = top_k_predictions(inf.probabilities, clf.labels, 3)
        if i >= 2:                            # warm-up
            t_plain.append(time.perf_counter() - t)
        for _ in range(repeat):
            t = time.perf_counter()
            extra(inf, tops)
            t_extra.append(time.perf_counter() - t)
    base = float(np.median(t_plain)) * 1000 / batch
    added = float(np.median(t_extra)) * 1000 / batch
    return {"batch": batch, "plain_ms": round(base, 3), "added_ms": round(added, 4),
            "overhead_percent": round(100.0 * added / base, 2), "heads": HEADS}
