"""Config of custom classes and smoothed rules (the error corpus in tests/configs/bad/ covers the mistakes)."""
from __future__ import annotations

from pathlib import Path

from monitor.config.loader import parse_config


def test_custom_classes_and_smoothing_parse(tmp_path: Path) -> None:
    c = parse_config({
        "cameras": [{"name": "front", "source": 0}, {"name": "back", "source": 1}],
        "custom_classes": [{"name": "porch", "head": "heads/porch.head", "cameras": ["front"],
                            "crop": [10, 20, 300, 200]},
                           {"name": "door", "head": "/abs/door.head", "examples": "state/door"}],
        "watchlist": [{"name": "parcel", "classes": ["porch:package", "dog"],
                       "smoothing": {"window": 7, "method": "mean"}},
                      {"name": "plain", "classes": ["cat"], "smoothing": {}}],
    }, tmp_path)
    porch, door = c.custom_classes
    assert porch.head == tmp_path / "heads" / "porch.head" and porch.crop == (10, 20, 300, 200)
    assert porch.cameras == ("front",) and porch.examples is None
    assert door.cameras == () and door.crop is None and door.examples == tmp_path / "state" / "door"
    parcel, plain = c.watchlist
    assert parcel.indices[0] == ("porch:package", ()) and parcel.indices[1][0] == "dog" and parcel.indices[1][1]
    assert (parcel.smoothing.window, parcel.smoothing.method) == (7, "mean")
    assert (plain.smoothing.window, plain.smoothing.method) == (5, "median")
    assert parse_config({"cameras": [{"name": "a", "source": 0}]}).custom_classes == ()
