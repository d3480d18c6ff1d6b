"""The 1000 ImageNet-1k class names, in the index order of torchvision's ResNet-18 checkpoints, and their
display names in each label language (labels.language: en | zh).

English names stay the machine names (API `label`, MQTT, webhook, events DB); a display name is what people
read (overlay, page, `display` fields) and never replaces the English one.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Literal

Language = Literal["en", "zh"]
LANGUAGES: tuple[str, ...] = ("en", "zh")


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    return _read_names("data/imagenet_classes.txt")


@lru_cache(maxsize=1)
def imagenet_classes_zh() -> tuple[str, ...]:
    """Simplified Chinese names (monitor/data/imagenet_classes_zh.txt), same order; all distinct."""
    names = _read_names("data/imagenet_classes_zh.txt", strict=True)
    if len(set(names)) != len(names):
        seen: set[str] = set()
        twice = sorted({n for n in names if n in seen or seen.add(n)})   # type: ignore[func-returns-value]
        raise RuntimeError(f"monitor/data/imagenet_classes_zh.txt names some classes alike: {', '.join(twice)}")
    return names


def class_names(language: str) -> tuple[str, ...]:
    """The 1000 display names in `language` ("en" or "zh")."""
    if language == "zh":
        return imagenet_classes_zh()
    if language == "en":
        return imagenet_classes()
    raise ValueError(f"unknown label language {language!r} (known: {', '.join(LANGUAGES)})")


def display_name(index: int, language: str) -> str:
    """The display name of ImageNet class `index` in `language`."""
    return class_names(language)[index]


def _read_names(path: str, strict: bool = False) -> tuple[str, ...]:
    text = resources.files("monitor").joinpath(path).read_text(encoding="utf-8")
    lines = text.splitlines()
    if strict:     # a translation is matched by line: a blank line would shift every later name
        blank = [i for i, line in enumerate(lines) if not line.strip()]
        if blank:
            raise RuntimeError(f"monitor/{path}: line {blank[0] + 1} is empty (one name per line, no gaps)")
    names = tuple(line.strip() for line in lines if line.strip())
    if len(names) != 1000:
        raise RuntimeError(f"monitor/{path} holds {len(names)} names, expected 1000")
    return names
