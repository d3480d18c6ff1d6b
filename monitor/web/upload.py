"""POST /api/classify: receive the body (bounded in size, memory and time), take the image out of it (raw image
body, or the multipart field `file` through python-multipart), size it and cost it from its header, decode it
in a decoder process (monitor.web.decoders: bounded CPU time, killed at the deadline or when the client hangs
up) within a memory budget shared by all uploads, classify it."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import cv2
import numpy as np
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from monitor.web.errors import ApiError
from monitor.web.decoders import DecodeError, DecoderPool
from monitor.web.imagesize import FORMATS, ImageHeader, image_header

# python-multipart logs a warning for every malformed body: a client could fill the daemon's log with them.
# The refusal is answered (400, with the reason) and counted instead.
logging.getLogger("python_multipart").setLevel(logging.ERROR)

FIELD = "file"
CLASSIFY_SIDE = 1024                  # uploads are classified at most this large (short side) ...
CLASSIFY_MIN = 256                    # ... and decoded at reduced size only down to this
_REDUCED = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}
MAX_PARTS = 16
MAX_BOUNDARY = 70                     # RFC 2046 section 5.1.1
# Seconds of CPU one decode may take (its process is killed past it): every format at its memory budget (a
# 39-megapixel PNG, a 34-megapixel progressive JPEG, a 10-megapixel GIF) decodes in at most 0.25 s here.
DECODE_CPU_SECONDS = 2.0
# Decoder processes, i.e. decodes at once: hostile uploads hold at most two cores, DECODE_CPU_SECONDS each, and
# uploads beyond wait for one (UPLOADS_AT_ONCE of them are read and parsed meanwhile).
DECODERS = 2
ADDRESS_SPACE_MARGIN = 64 * 2**20     # see address_space()


# ---------------------------------------------------------------------------------------------- Content-Type


@dataclass(frozen=True)
class BodyKind:
    multipart: bool
    boundary: bytes = b""
    media_type: str = ""


def body_kind(content_type: str | None) -> BodyKind:
    """What the Content-Type announces: 415 for anything but multipart/form-data or an image; 400 when it is
    malformed."""
    if not content_type:
        raise ApiError(415, f"no Content-Type: send multipart/form-data with a field {FIELD!r}, or an image/* body")
    kind, params = parse_options_header(content_type)
    media = kind.decode("latin-1").lower()
    if media == "multipart/form-data":
        names = [p.split("=", 1)[0].strip().lower() for p in content_type.split(";")[1:]]
        if any(not n for n in names):
            raise ApiError(400, "Content-Type: empty parameter name")
        if names.count("boundary") > 1:
            raise ApiError(400, "Content-Type: parameter 'boundary' repeated")
        if "boundary" not in names:
            raise ApiError(400, "Content-Type: multipart/form-data with no boundary parameter")
        boundary = params.get(b"boundary", b"")
        if boundary.startswith(b'"'):
            raise ApiError(400, "Content-Type: unterminated quoted boundary")
        if not boundary or len(boundary) > MAX_BOUNDARY:
            raise ApiError(400, f"Content-Type: invalid multipart boundary (1 to {MAX_BOUNDARY} characters, "
                                f"got {len(boundary)})")
        return BodyKind(True, boundary, media)
    if media.startswith("image/") or media == "application/octet-stream":
        return BodyKind(False, media_type=media)
    raise ApiError(415, f"Content-Type {media[:80]!r} is not accepted: send multipart/form-data with a field "
                        f"{FIELD!r}, or an image/* body")


# ---------------------------------------------------------------------------------------------- multipart


@dataclass
class Part:
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    name: str | None = None
    filename: str | None = None

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def parse_multipart(body: bytes, boundary: bytes, max_parts: int = MAX_PARTS) -> list[Part]:
    """The parts of a multipart/form-data body (python-multipart does the parsing); ApiError 400 when the body
    is malformed or has more than `max_parts` parts."""
    parts: list[Part] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}
    ended = False

    def begin() -> None:
        if len(parts) >= max_parts:
            raise ApiError(400, f"malformed multipart body: more than {max_parts} parts")
        parts.append(Part())

    def header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def header_end() -> None:
        name = header["field"].decode("latin-1").strip().lower()
        parts[-1].headers[name] = header["value"].decode("utf-8", "replace").strip()
        header["field"] = header["value"] = b""

    def headers_done() -> None:
        part = parts[-1]
        disposition = part.headers.get("content-disposition")
        if disposition is None:
            raise ApiError(400, f"malformed multipart body: part {len(parts)} has no Content-Disposition")
        kind, params = parse_options_header(disposition)
        if kind.lower() != b"form-data" or b"name" not in params:
            raise ApiError(400, f"malformed multipart body: part {len(parts)} is not form-data with a name")
        if disposition.lower().count("name=") - disposition.lower().count("filename=") > 1:
            raise ApiError(400, f"malformed multipart body: parameter 'name' repeated in part {len(parts)}")
        part.name = params[b"name"].decode("utf-8", "replace")
        if b"filename" in params:
            part.filename = params[b"filename"].decode("utf-8", "replace")

    def part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].chunks.append(data[start:end])

    def end() -> None:
        nonlocal ended
        ended = True

    parser = MultipartParser(boundary, {
        "on_part_begin": begin, "on_header_field": header_field, "on_header_value": header_value,
        "on_header_end": header_end, "on_headers_finished": headers_done, "on_part_data": part_data,
        "on_end": end}, max_header_count=16)
    if b"--" + boundary not in body:
        raise ApiError(400, "malformed multipart body: it does not contain the multipart boundary")
    # RFC 2046 allows a preamble before the first delimiter, which python-multipart does not skip.
    first = body.find(b"--" + boundary)
    if first > 0:
        delimited = body.find(b"\r\n--" + boundary)
        first = delimited + 2 if delimited >= 0 else first
    try:
        parser.write(body[first:] if first > 0 else body)
        parser.finalize()
    except MultipartParseError as e:
        what = "malformed part header line" if "header" in str(e) else "bad delimiter"
        raise ApiError(400, f"malformed multipart body: {what} ({e})") from None
    if not parts:
        raise ApiError(400, "malformed multipart body: no parts")
    if not ended:
        raise ApiError(400, "malformed multipart body: not terminated by the closing boundary")
    return parts


def file_field(body: bytes, boundary: bytes) -> tuple[bytes, str]:
    """(data, filename or field name) of the field `file` of a multipart/form-data body; ApiError 400 when the
    body is malformed or has no such field."""
    parts = parse_multipart(body, boundary)
    part = next((p for p in parts if p.name == FIELD), None)
    if part is None:
        names = ", ".join(repr(p.name) for p in parts)
        raise ApiError(400, f"multipart body has no field {FIELD!r} (fields: {names})"[:300])
    return part.data, f"upload {part.filename or FIELD!r}"[:120]


# ---------------------------------------------------------------------------------------------- pixel budget


class PixelBudget:
    """Pixels being decoded at once, over all uploads: a decode waits until its image fits (one at the full
    budget, many small ones together), so decoded images never hold more than the budget in memory."""

    def __init__(self, pixels: int) -> None:
        self.pixels = int(pixels)
        self._used = 0
        self._cond = threading.Condition()

    def acquire(self, pixels: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._used + pixels <= self.pixels, timeout) and self._take(pixels)

    def _take(self, pixels: int) -> bool:
        self._used += pixels
        return True

    def release(self, pixels: int) -> None:
        with self._cond:
            self._used -= pixels
            self._cond.notify_all()


def checked_decode(data: bytes, name: str, budget: PixelBudget, decoders: DecoderPool, deadline: float,
                   cancelled: Callable[[], bool] | None = None,
                   prepare: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an uploaded image after sizing and costing it from its header: 415 when its format cannot be sized
    (or it is not an image), 413 when it promises more pixels, or needs more memory, than the budget; 422 when
    its structure would make decoding cost out of proportion (thousands of scans, pages, inflated text) or the
    decode runs past its CPU time; 503 when the budget or the decoders stay busy. ClientGone when `cancelled()`
    turns true during the decode. Returns the image scaled down to CLASSIFY_SIDE (short side) and its (width,
    height) as uploaded; with prepare=(size, resize), the network's input made from it in the decoder process."""
    if not data:
        raise ApiError(415, f"{name}: empty, not an image")
    header = image_header(data)
    if header is None:
        raise ApiError(415, f"{name}: not a readable image of a known size (accepted: {', '.join(FORMATS)})")
    if header.width == 0 or header.height == 0:
        raise ApiError(415, f"{name}: {header.format} header with an empty size ({header.width}x{header.height})")
    # OpenCV decodes at reduced size in one buffer (JPEG even scales while decoding); at full size it holds the
    # image twice. Formats whose decoders hold wide planes get a proportionally smaller budget: same memory.
    reduction = next((f for f in _REDUCED if min(header.width, header.height) // f >= CLASSIFY_MIN), None)
    limit = budget.pixels * 3 // max(3, header.decode_bytes_per_pixel) // (1 if reduction else 2)
    if header.pixels > limit:
        raise ApiError(413, f"{name}: {header.format} image is {header.width}x{header.height} pixels, more than "
                            f"the {limit:,} allowed for this format and shape (server.upload_max_pixels: "
                            f"{budget.pixels:,})")
    if header.excess:
        raise ApiError(422, f"{name}: {header.excess}: not decoded")
    need = decode_bytes(header, reduction)
    if need > budget.pixels * 3:
        held = f"; {header.held_for}: {header.held_bytes / 2**20:.0f} MB" if header.held_bytes else ""
        raise ApiError(413, f"{name}: {header.format} image {header.width}x{header.height} needs about "
                            f"{need / 2**20:.0f} MB to decode{held}; the budget is {budget.pixels * 3 / 2**20:.0f} MB "
                            f"(server.upload_max_pixels: {budget.pixels:,}, 3 bytes each)")
    cost = min(-(-need // 3), budget.pixels)
    if not budget.acquire(cost, max(0.1, deadline - time.monotonic())):
        raise ApiError(503, "too many large uploads being decoded, try again", {"Retry-After": "2"})
    try:
        flag = _REDUCED[reduction] if reduction else cv2.IMREAD_COLOR
        image = decoders.decode(data, flag, CLASSIFY_SIDE, address_space(need), deadline, cancelled, prepare)
    except DecodeError as e:
        raise _refusal(e, name, header) from None
    finally:
        budget.release(cost)
    return image, (header.width, header.height)


def decode_bytes(header: ImageHeader, reduction: int | None) -> int:
    """Bytes a decode holds at its peak: the picture at the size it is decoded (with the format's planes and
    wide samples), the scaled copy, and what the decoder holds beside it (header.held_bytes)."""
    if header.format == "JPEG" and reduction and not header.full_size:
        # libjpeg scales while decoding (the IDCT outputs 1/2, 1/4, 1/8): the picture is small from the start.
        picture = header.pixels * 3 // (reduction * reduction) * 2
    else:
        full = reduction is None or header.full_size
        picture = header.pixels * max(3, header.decode_bytes_per_pixel) * (2 if full else 1)
    return picture + header.held_bytes


def address_space(need: int) -> int:
    """The decoder process's address-space allowance for a decode charged `need` bytes (RLIMIT_AS above what it
    holds). Every format decoded at its budget here fits its charge + 16 MB; the margin is half the charge +
    ADDRESS_SPACE_MARGIN, so that a decode the header walk did not foresee stops at an allocation failure (415)
    instead of taking the machine's memory."""
    return need + need // 2 + ADDRESS_SPACE_MARGIN


def _refusal(e: DecodeError, name: str, header: ImageHeader) -> Exception:
    what = f"{name}: {header.format} image {header.width}x{header.height}"
    if e.kind == "unreadable":
        return ApiError(415, f"{name}: {e}")
    if e.kind == "cancelled":
        return ClientGone()
    if e.kind == "cpu":
        return ApiError(422, f"{what}: {e}: refused")
    if e.kind == "crashed":
        return ApiError(422, f"{what}: {e} decoding it: refused")
    if e.kind == "busy":
        return ApiError(503, "too many uploads being decoded, try again", {"Retry-After": "2"})
    if e.kind == "closed":
        return ApiError(503, "the server is stopping", {"Retry-After": "5"})
    if e.kind == "unavailable":
        return ApiError(503, f"no image decoder available ({e}; see the daemon's log)", {"Retry-After": "5"})
    return ApiError(503, f"{what}: {e} (the server is busy), try again", {"Retry-After": "2"})


# ---------------------------------------------------------------------------------------------- the body


class BodyBudget:
    """Bytes of upload bodies held in memory at once (event loop only, no lock). Slow clients hold only what
    they sent, so they cannot keep others out the way slots would."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


async def read_body(receive: Callable[[], Any], length: int | None, cap: int, deadline: float,
                    budget: BodyBudget) -> bytes:
    """The whole request body within `cap` bytes and by `deadline` (time.monotonic()): 413 past the cap, 408
    past the deadline, 503 when all uploads together would exceed the memory budget. Raises ClientGone when
    the client hangs up. The body's bytes stay taken from `budget` until the caller gives them back."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + max(0.0, deadline - time.monotonic())):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                if chunk:
                    if size + len(chunk) > cap:
                        raise ApiError(413, f"upload larger than server.upload_max_bytes ({cap} bytes)")
                    if not budget.take(len(chunk)):
                        raise ApiError(503, "uploads in progress fill the upload memory, try again",
                                       {"Retry-After": "2"})
                    size += len(chunk)
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        budget.give(size)
        expected = f" of {length}" if length is not None else ""
        raise ApiError(408, f"upload body not received within the deadline ({size}{expected} bytes arrived)",
                       {"Connection": "close"}) from None
    except BaseException:
        budget.give(size)
        raise
    return b"".join(chunks)


class ClientGone(Exception):
    """The client hung up before its request was read: nobody to answer."""
