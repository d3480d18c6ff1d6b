"""The sample clip shipped in the package, so that a first run shows a live, classified picture anywhere.

`source: sample` in a camera's config names it: the example config works from a fresh clone and from an
installed package alike (a relative path would break once the config is copied to /etc/monitor).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

SAMPLE_SOURCE = "sample"          # the config keyword
_CLIP = "data/sample-cars.mp4"    # 24.5 s of Intel's car-detection.mp4 (CC BY 4.0): see data/ATTRIBUTION.md


def sample_clip() -> Path:
    """Path of the packaged clip (package data is installed as plain files, never zipped)."""
    return Path(str(resources.files("monitor").joinpath(_CLIP)))
