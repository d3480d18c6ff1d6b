"""EventPicture: the frame that started an event, drawn and JPEG-encoded once; every consumer gets the same bytes.

As picamera2 encodes a frame once and hands the same buffer to every output, the alert sinks render an event's
picture once (whichever sink needs it first) and the snapshot file and the MQTT snapshot topic carry identical
bytes. One quality for both: EVENT_JPEG_QUALITY.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from monitor.render.jpeg import encode_jpeg
from monitor.render.overlay import draw_overlay

if TYPE_CHECKING:
    from monitor.inference.classifier import Prediction

# The snapshot file is the event's record (kept for events.retention, shown by the web page): 90 keeps the
# overlay's text and the details of the frame; the MQTT topic carries the same bytes (it used 85 on its own).
EVENT_JPEG_QUALITY = 90


@dataclass(frozen=True)
class EventPicture:
    jpeg: bytes                  # the frame with the overlay: camera, time, predictions, "EVENT: <label>" banner
    clean_jpeg: bytes | None     # the frame as captured (custom-class events: labelling files it), else None
    width: int
    height: int


def render_event_picture(image: np.ndarray, camera: str, label: str, when: float | None,
                         predictions: Sequence[Prediction], untrained: bool, clean: bool = False,
                         quality: int = EVENT_JPEG_QUALITY, language: str = "en") -> EventPicture:
    """Draw the overlay on a copy of `image` (never modified: other readers share it) and encode it; with
    `clean` also encode the frame as it is. RuntimeError when OpenCV cannot encode, ValueError for a frame
    that is no BGR image. `language` zh: the class names and the banner in Chinese (labels.language)."""
    drawn = draw_overlay(image, camera, list(predictions), None, [label] if label else [], untrained, when=when,
                         language=language)
    h, w = image.shape[:2]
    return EventPicture(jpeg=encode_jpeg(drawn, quality), clean_jpeg=encode_jpeg(image, quality) if clean else None,
                        width=int(w), height=int(h))
