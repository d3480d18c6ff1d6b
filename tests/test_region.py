"""Region.clip_to: the one bounds check of a crop, used by config validation, the camera, preprocessing and
labelling (each of them checked it its own way before: the config and the camera refused a box crossing the
frame's edge, preprocessing cut it down to a smaller box)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monitor.config.loader import ConfigError, parse_config
from monitor.core.region import CENTER, FULL, Region, RegionError
from monitor.inference.heads.labelling import ExampleStore, LabelError
from monitor.inference.preprocess import crop_box


def test_center_and_full_are_placed_in_any_frame() -> None:
    # the ImageNet centre crop: 224/256 of the shorter side, centred
    assert CENTER.clip_to(768, 432) == (195, 27, 378, 378)
    assert CENTER.clip_to(432, 768) == (27, 195, 378, 378)
    assert CENTER.clip_to(1, 1) == (0, 0, 1, 1)
    assert FULL.clip_to(768, 432) == (0, 0, 768, 432)
    assert Region.of("CENTER") is CENTER and Region.of("full") is FULL


@pytest.mark.parametrize("box", [(0, 0, 768, 432), (668, 332, 100, 100), (0, 0, 1, 1), (767, 431, 1, 1)])
def test_a_box_inside_the_frame_is_itself(box: tuple[int, int, int, int]) -> None:
    assert Region.of(list(box)).clip_to(768, 432) == box
    assert Region.of(box).clip_to(768, 432) == box


@pytest.mark.parametrize("box", [
    (700, 400, 100, 100),     # crosses the right and bottom edges
    (669, 0, 100, 100),       # one pixel past the right edge
    (0, 333, 100, 100),       # one pixel past the bottom edge
    (800, 100, 200, 200),     # wholly outside
    (-1, 0, 100, 100),        # left of the frame
    (0, -5, 100, 100),        # above it
    (10, 10, 0, 100),         # no width
    (10, 10, 100, -3),        # negative height
])
def test_a_box_not_wholly_inside_is_refused_never_cut_down(box: tuple[int, int, int, int]) -> None:
    with pytest.raises(RegionError) as info:
        Region.of(box).clip_to(768, 432)
    x, y, w, h = box
    assert str(info.value) == (f"crop [{x}, {y}, {w}, {h}] does not fit the 768x432 frame "
                               f"(needs x+w <= 768, y+h <= 432)")


def test_nothing_fits_an_empty_frame_and_a_malformed_region_is_named() -> None:
    for region in (CENTER, FULL, Region.of((0, 0, 1, 1))):
        with pytest.raises(RegionError, match="empty 0x0 frame"):
            region.clip_to(0, 0)
    for bad in ("left", (1, 2, 3), ("a", 0, 1, 1), None):
        with pytest.raises(RegionError, match="crop must be center, full or"):
            Region.of(bad)      # type: ignore[arg-type]
    assert str(Region.of((1, 2, 3, 4))) == "[1, 2, 3, 4]" and Region.of((1, 2, 3, 4)).to_json() == [1, 2, 3, 4]
    assert CENTER.to_json() == "center" and str(FULL) == "full"


def test_config_preprocessing_and_labelling_answer_with_the_same_check(tmp_path: Path) -> None:
    """The three former checks now give the same verdict, in the same words, for the same box."""
    box = [600, 0, 100, 100]
    with pytest.raises(ConfigError) as info:
        parse_config({"model": {"weights": str(tmp_path / "w.pt")},
                      "cameras": [{"name": "a", "source": str(tmp_path / "a.mp4"), "backend": "pyav",
                                   "crop": box, "frame_size": [640, 360]}]}, tmp_path)
    assert ("cameras[0].frame_size: crop [600, 0, 100, 100] does not fit the 640x360 frame_size "
            "(needs x+w <= 640, y+h <= 360)") in info.value.errors
    frame = np.zeros((360, 640, 3), np.uint8)
    with pytest.raises(RegionError, match=r"^crop \[600, 0, 100, 100\] does not fit the 640x360 frame "):
        crop_box(360, 640, box)
    with pytest.raises(LabelError, match=r"crop \[600, 0, 100, 100\] does not fit the 640x360 frame"):
        ExampleStore(tmp_path / "examples").save("cars", frame, box, "a")
    assert not (tmp_path / "examples").exists()          # nothing filed
    assert crop_box(360, 640, [540, 0, 100, 100]) == (540, 0, 100, 100)
