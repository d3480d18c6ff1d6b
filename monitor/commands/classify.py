"""`monitor classify PATH...`: one-shot classification of image files and folders."""
from __future__ import annotations

import functools
import json
import sys
import unicodedata
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from monitor.core.labels import class_names
from monitor.inference.classifier import Classifier, Prediction
from monitor.inference.prefetch import BATCH, STREAMS, WORKERS, Outcome, classify_ahead
from monitor.inference.preprocess import prepare_batch
from monitor.capture.frames import IMAGE_SUFFIXES, expand_paths, read_image
from tqdm import tqdm

# Loads (read + decode + prepare) run on threads: OpenCV's decoder and resize release the GIL, and a thread
# needs no start nor a copy of its result (`monitor bench batch` measures threads against processes).
POOL = "thread"


def load_file(path: Path, size: int, resize: int) -> tuple[np.ndarray, None]:
    """The network's input for an image file (FrameSourceError names the file); module-level so that a process
    pool can run it."""
    return prepare_batch([read_image(path)], None, size, resize)[0], None


def classify_files(clf: Classifier, files: Sequence[Path], top_k: int = 3, workers: int = WORKERS,
                   pool: str = POOL) -> Iterator[Outcome[Path]]:
    """Every file's Outcome, in order; the next files are loaded while the network runs (workers=0: one after
    the other, no overlap)."""
    load = functools.partial(load_file, size=int(clf.meta.preprocess.get("crop", 224)),
                             resize=int(clf.meta.preprocess.get("resize", 256)))
    return classify_ahead(clf, files, load, top_k=top_k, batch=BATCH, workers=workers, pool=pool)


def format_predictions(preds: Sequence[Prediction], language: str = "en") -> list[str]:
    """One line per prediction; with language zh the Chinese name first, the English (machine) name after it."""
    names = class_names(language)
    shown = [p.label if language == "en" else f"{names[p.index]} ({p.label})" for p in preds]
    width = max(_columns(s) for s in shown)
    return [f"  {rank}. {s}{' ' * (width - _columns(s))}  {p.probability * 100:6.2f}%"
            for rank, (s, p) in enumerate(zip(shown, preds), 1)]


def _columns(text: str) -> int:
    """Terminal columns `text` takes: East Asian wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def classify_main(paths: Sequence[str], weights: Path, top_k: int = 3, as_json: bool = False,
                  language: str = "en") -> int:
    # The runtime's own threads (all cores): with the prefetch beside them they gave 1.02-1.09x the images/s of
    # no prefetch, where 1 inference thread + the prefetch gave 0.73-0.76x on a quiet machine (`monitor bench batch`).
    clf = Classifier(weights, streams=STREAMS)
    if clf.untrained:
        print(f"warning: {weights} is the untrained demo model: its predictions are meaningless", file=sys.stderr)
    errors: list[tuple[str, str]] = []
    files: list[Path] = []
    for p in paths:
        if Path(p).is_dir():
            found = expand_paths([p], IMAGE_SUFFIXES)
            if not found:
                errors.append((p, f"{p}: no image files in folder"))
                print(f"error: {p}: no image files in folder", file=sys.stderr)
            files.extend(found)
        else:
            files.append(Path(p))
    results: list[tuple[str, Any]] = []
    with tqdm(desc="classifying", total=len(files), unit=" images",
              disable=None if len(files) > 2 * BATCH else True) as bar:
        for outcome in classify_files(clf, files, top_k):
            f = outcome.item
            if outcome.predictions is None:
                errors.append((str(f), str(outcome.error)))
                print(f"error: {outcome.error}", file=sys.stderr)
            else:
                results.append((str(f), outcome.predictions))
                if not as_json:
                    print(f"{f}:")
                    print("\n".join(format_predictions(outcome.predictions, language)))
            bar.update(1)
    if as_json:
        json.dump({
            "model": {"name": clf.meta.name, "untrained": clf.untrained},
            "results": [{"file": f, "predictions": [
                {"rank": r, "label": p.label, "index": p.index, "probability": round(p.probability, 6),
                 "display": class_names(language)[p.index]}
                for r, p in enumerate(preds, 1)]} for f, preds in results],
            "errors": [{"file": f, "error": e} for f, e in errors],
        }, sys.stdout, indent=2)
        print()
    return 1 if errors else 0
