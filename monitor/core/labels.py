"""The 1000 ImageNet-1k class names, in the index order of torchvision's ResNet-18 checkpoints."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    text = resources.files("monitor").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 1000:
        raise RuntimeError(f"monitor/data/imagenet_classes.txt holds {len(names)} names, expected 1000")
    return names
