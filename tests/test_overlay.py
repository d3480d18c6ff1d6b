"""draw_overlay: a new image, the shared frame untouched, red banner while an event is active."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from monitor.render.overlay import BANNER_COLOR, banner_height, draw_overlay


class Pred(NamedTuple):     # same fields as monitor.inference.classifier.Prediction
    label: str
    index: int
    probability: float


PREDS = [Pred("golden retriever", 207, 0.81), Pred("Labrador retriever", 208, 0.12), Pred("tennis ball", 852, 0.03)]


def frame(h: int = 432, w: int = 768) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(60, 200, size=(h, w, 3), dtype=np.uint8)


def test_returns_a_new_image_and_leaves_the_input_untouched() -> None:
    img = frame()
    before = img.copy()
    out = draw_overlay(img, "yard", PREDS, 5.0, [], False, when=1_700_000_000.0)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out is not img and not np.shares_memory(out, img)
    assert np.array_equal(img, before)
    assert not np.array_equal(out, img)                   # something was drawn
    assert np.array_equal(out[-50:, 400:], img[-50:, 400:])   # away from panel and banner: nothing drawn


def test_banner_is_red_only_while_an_event_is_active() -> None:
    img = frame()
    bh = banner_height(img.shape[1])
    active = draw_overlay(img, "yard", PREDS, 5.0, ["dog"], False)
    strip = active[-bh:, -40:]                            # right end of the banner, clear of its text
    assert (strip == np.array(BANNER_COLOR, np.uint8)).all()
    assert (strip[..., 2] == 255).all() and (strip[..., :2] == 0).all()
    idle = draw_overlay(img, "yard", PREDS, 5.0, [], False)
    assert np.array_equal(idle[-bh:, -40:], img[-bh:, -40:])
    assert active[img.shape[0] - bh - 1, -1].tolist() == img[img.shape[0] - bh - 1, -1].tolist()  # banner only


def test_untrained_marker_top_right() -> None:
    img = frame()
    plain = draw_overlay(img, "yard", PREDS, None, [], False, when=0.0)
    marked = draw_overlay(img, "yard", PREDS, None, [], True, when=0.0)
    region = (slice(0, 30), slice(-150, None))
    assert np.array_equal(plain[region], img[region]) and not np.array_equal(marked[region], img[region])


def test_panel_is_dimmed_and_bar_grows_with_probability() -> None:
    img = np.full((432, 768, 3), 200, np.uint8)
    low = draw_overlay(img, "yard", [Pred("dog", 1, 0.05)], None, [], False)
    high = draw_overlay(img, "yard", [Pred("dog", 1, 0.95)], None, [], False)
    green = lambda o: int(((o[..., 1] > 150) & (o[..., 0] < 120) & (o[..., 2] < 120)).sum())  # noqa: E731
    assert green(high) > 5 * max(1, green(low))
    assert low[2, 2].tolist() != [200, 200, 200] and max(low[2, 2].tolist()) < 120   # translucent dark panel


@pytest.mark.parametrize("shape", [(24, 32, 3), (1080, 1920, 3), (100, 3000, 3)])
def test_any_size_works(shape: tuple[int, int, int]) -> None:
    img = np.zeros(shape, np.uint8)
    out = draw_overlay(img, "a-camera-with-a-long-name", PREDS, 12.5, ["dog", "cat", "dog"], True)
    assert out.shape == shape and not img.any()


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="BGR uint8"):
        draw_overlay(np.zeros((10, 10), np.uint8), "a", [], None, [], False)
    with pytest.raises(ValueError, match="float32"):
        draw_overlay(np.zeros((10, 10, 3), np.float32), "a", [], None, [], False)
