"""Region: the part of a frame that is classified ("center", "full" or a box in pixels), and the one bounds check
that places it in a frame of a given size (config validation, the camera, preprocessing and labelling all call it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

from monitor.core.resample import center_box

Box = tuple[int, int, int, int]     # x, y, width, height in pixels of one frame

# "center": the ImageNet convention, a shorter side resized to 256 then a centre crop of 224, i.e. the centred
# square of 224/256 = 7/8 of the shorter side.
CENTER_SHARE = 224 / 256


class RegionError(ValueError):
    """A region that is no region ("left"), or a box that does not lie wholly inside the frame; the message
    names the region and the frame size."""


@dataclass(frozen=True)
class Region:
    kind: str                       # "center" | "full" | "box"
    box: Box | None = None          # kind "box" only

    @classmethod
    def of(cls, crop: Union[Region, str, Sequence[Any]]) -> Region:
        """From a config value: "center", "full" (any case) or [x, y, width, height] (list or tuple)."""
        if isinstance(crop, Region):
            return crop
        if isinstance(crop, str) and crop.lower() in ("center", "full"):
            return CENTER if crop.lower() == "center" else FULL
        if isinstance(crop, (list, tuple)) and len(crop) == 4:
            try:
                return cls("box", tuple(int(v) for v in crop))        # type: ignore[arg-type]
            except (TypeError, ValueError):
                pass
        raise RegionError(f"crop must be center, full or [x, y, width, height], got {crop!r}")

    def clip_to(self, width: int, height: int, what: str = "frame", center_share: float = CENTER_SHARE) -> Box:
        """The pixel box (x, y, w, h) of this region in a `width` x `height` frame. A box must lie wholly inside
        the frame (RegionError otherwise, never a silently smaller box): what is classified, filed as an example
        or drawn is then exactly the box the user wrote. `what` names the frame in the message ("frame_size")."""
        width, height = int(width), int(height)
        if width <= 0 or height <= 0:
            raise RegionError(f"crop {self} cannot be placed in an empty {width}x{height} {what}")
        if self.kind == "full":
            return 0, 0, width, height
        if self.kind == "center":
            return center_box(width, height, center_share)
        assert self.box is not None
        x, y, w, h = self.box
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > width or y + h > height:
            raise RegionError(f"crop {self} does not fit the {width}x{height} {what} "
                              f"(needs x+w <= {width}, y+h <= {height})")
        return self.box

    def to_json(self) -> Union[str, list[int]]:
        """As the config writes it: "center", "full" or [x, y, w, h]."""
        return list(self.box) if self.box is not None else self.kind

    def __str__(self) -> str:
        return f"[{', '.join(str(v) for v in self.box)}]" if self.box is not None else self.kind


CENTER = Region("center")
FULL = Region("full")
