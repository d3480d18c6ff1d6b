"""`monitor classes train NAME EXAMPLES_DIR` and `monitor classes show HEAD`: custom classes from examples."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from monitor.inference.heads import HeadError, load_head, save_head
from monitor.inference.heads.examples import ExamplesError


def default_head_path(name: str) -> Path:
    return Path("heads") / f"{name}.head"


def train_main(name: str, examples_dir: str, weights: Path, out: str | None = None, crop: str = "center",
               frames_per_video: int = 40, folds: int = 5, as_json: bool = False) -> int:
    from monitor.inference.classifier import Classifier
    from monitor.inference.heads.training import train_head

    target = Path(out) if out else default_head_path(name)
    clf = Classifier(weights)
    started = time.monotonic()
    try:
        head, report = train_head(clf, name, examples_dir, crop=crop, frames_per_video=frames_per_video,
                                  folds=folds)
    except ExamplesError as e:
        print(f"monitor: {e}", file=sys.stderr)
        return 1
    save_head(head, target)
    seconds = time.monotonic() - started
    if as_json:
        print(json.dumps({"head": str(target), "seconds": round(seconds, 2), **report.to_json()}, indent=2))
        return 0
    print(f"trained head {name!r} on {clf.meta.name} ({clf.backbone_id[:12]}) in {seconds:.1f} s: "
          f"{', '.join(head.classes)}")
    for line in report.lines():
        print(line)
    if "none" not in head.classes:
        print("note: no 'none' class: every frame will be called one of the classes above", file=sys.stderr)
    if clf.untrained:
        print("warning: trained on the UNTRAINED demo backbone: retrain after `monitor weights fetch`",
              file=sys.stderr)
    print(f"wrote {target}; use it with custom_classes: [{{name: {name}, head: {target}}}]")
    return 0


def show_main(path: str, weights: Path | None = None) -> int:
    try:
        head = load_head(path)
        if weights is not None:
            from monitor.inference.artifact import read
            from monitor.inference.classifier import select_artifact
            meta, _, sha = read(select_artifact(weights))  # the artifact a Classifier loads (auto: .ov next to it)
            head.check_backbone(meta.backbone or sha)
    except HeadError as e:
        print(f"monitor: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"name": head.name, "classes": list(head.classes), "backbone": head.backbone,
                      "crop": head.crop, "summary": head.summary}, indent=2))
    return 0
