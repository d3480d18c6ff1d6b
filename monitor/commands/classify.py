"""`monitor classify PATH...`: one-shot classification of image files and folders."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from monitor.inference.classifier import Classifier, Prediction
from monitor.capture.frames import IMAGE_SUFFIXES, FrameSourceError, expand_paths, read_image
from tqdm import tqdm

BATCH = 8


def _batches(files: Sequence[Path], errors: list[tuple[str, str]]) -> Iterator[list[tuple[Path, np.ndarray]]]:
    batch: list[tuple[Path, np.ndarray]] = []
    for f in files:
        try:
            batch.append((f, read_image(f)))
        except FrameSourceError as e:
            errors.append((str(f), str(e)))
            print(f"error: {e}", file=sys.stderr)
            continue
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def format_predictions(preds: Sequence[Prediction]) -> list[str]:
    width = max(len(p.label) for p in preds)
    return [f"  {rank}. {p.label:<{width}}  {p.probability * 100:6.2f}%" for rank, p in enumerate(preds, 1)]


def classify_main(paths: Sequence[str], weights: Path, top_k: int = 3, as_json: bool = False) -> int:
    clf = Classifier(weights)
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
    results = []
    with tqdm(desc="classifying", total=len(files), unit=" images",
              disable=None if len(files) > 2 * BATCH else True) as bar:
        for batch in _batches(files, errors):
            for (f, _), preds in zip(batch, clf.classify([img for _, img in batch], top_k=top_k)):
                results.append((str(f), preds))
                if not as_json:
                    print(f"{f}:")
                    print("\n".join(format_predictions(preds)))
            bar.update(len(batch))
    if as_json:
        json.dump({
            "model": {"name": clf.meta.name, "untrained": clf.untrained},
            "results": [{"file": f, "predictions": [
                {"rank": r, "label": p.label, "index": p.index, "probability": round(p.probability, 6)}
                for r, p in enumerate(preds, 1)]} for f, preds in results],
            "errors": [{"file": f, "error": e} for f, e in errors],
        }, sys.stdout, indent=2)
        print()
    return 1 if errors else 0
