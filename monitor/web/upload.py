"""The uploaded image of POST /api/classify: from a multipart field `file` or a raw image body, checked and decoded."""
from __future__ import annotations

import struct

import numpy as np

from monitor.capture.frames import FrameSourceError, decode_image
from monitor.web.api import ApiError
from monitor.web.multipart import MultipartError, parse_header_params, parse_multipart

# A 10 MB PNG can hold a 30000 x 30000 image (2.7 GB decoded): refuse by the header before decoding.
MAX_PIXELS = 40_000_000
FIELD = "file"


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG, GIF, BMP, WebP or JPEG; None if not recognised."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":
            w = int.from_bytes(data[24:27], "little") + 1
            h = int.from_bytes(data[27:30], "little") + 1
            return w, h
        if chunk == b"VP8L" and len(data) >= 25:
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        return None
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:                    # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
            return w, h
        if marker == 0xDA or length < 2:      # start of scan before any frame header: give up
            return None
        pos += 2 + length
    return None


def _check_and_decode(data: bytes, name: str) -> np.ndarray:
    if not data:
        raise ApiError(415, f"{name}: empty, not an image")
    size = image_size(data)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise ApiError(413, f"{name}: image is {size[0]}x{size[1]} pixels, more than {MAX_PIXELS // 1_000_000} "
                            f"megapixels")
    try:
        return decode_image(data, name)
    except FrameSourceError as e:
        raise ApiError(415, str(e)) from None


def image_from_body(content_type: str | None, body: bytes) -> np.ndarray:
    """Decode the uploaded image: 400 malformed multipart, 415 not an image / unsupported type, 413 too many pixels."""
    if not content_type:
        raise ApiError(415, "no Content-Type: send multipart/form-data with a field 'file', or an image/* body")
    try:
        kind, _ = parse_header_params(content_type)
    except MultipartError as e:
        raise ApiError(400, f"Content-Type: {e}") from None
    if kind == "multipart/form-data":
        try:
            parts = parse_multipart(body, content_type)
        except MultipartError as e:
            raise ApiError(400, f"malformed multipart body: {e}") from None
        part = next((p for p in parts if p.name == FIELD), None)
        if part is None:
            raise ApiError(400, f"multipart body has no field {FIELD!r} (fields: "
                                f"{', '.join(repr(p.name) for p in parts)})")
        return _check_and_decode(part.data, f"upload {part.filename or FIELD!r}"[:120])
    if kind.startswith("image/") or kind == "application/octet-stream":
        return _check_and_decode(body, f"upload ({kind})")
    raise ApiError(415, f"Content-Type {kind!r} is not accepted: send multipart/form-data with a field "
                        f"{FIELD!r}, or an image/* body")
