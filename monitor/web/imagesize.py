"""Image dimensions from the header alone, for every format this OpenCV build decodes.

Written by hand because nothing maintained does it without a decoder: PIL (not a dependency of the daemon)
opens lazily but registers dozens of plugins and still allocates per format; OpenCV has no header-only API in
Python. An upload is sized before it is decoded so that a small file promising a huge image (a "decompression
bomb") is refused instead of allocating gigabytes. A format not listed here is refused, not decoded.
"""
from __future__ import annotations

import re
import struct
from typing import NamedTuple


class ImageHeader(NamedTuple):
    format: str
    width: int
    height: int
    # Bytes per pixel the decoder holds at its peak (planes, wide samples), counting the 3-byte BGR result:
    # the pixel budget is scaled by 3 / this so that every format fits the same memory.
    decode_bytes_per_pixel: int = 3

    @property
    def pixels(self) -> int:
        return self.width * self.height


FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP", "TIFF", "PNM", "PFM", "Sun raster", "Radiance HDR",
           "JPEG 2000", "AVIF")


def image_header(data: bytes) -> ImageHeader | None:
    """The format and size an image's header promises; None if the format is not one of FORMATS or the header
    is cut short or inconsistent."""
    try:
        return _sniff(data)
    except (struct.error, IndexError, ValueError):
        return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header; None when it cannot be told."""
    header = image_header(data)
    return None if header is None else (header.width, header.height)


def _sniff(data: bytes) -> ImageHeader | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if data[12:16] != b"IHDR":
            return None
        w, h = struct.unpack(">II", data[16:24])
        depth = data[24]
        return ImageHeader("PNG", w, h, 6 if depth == 16 else 3)
    if data[:2] == b"\xff\xd8":
        return _jpeg(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(data)
    if data[:2] == b"BM":
        w, h = struct.unpack("<ii", data[18:26])
        return ImageHeader("BMP", abs(w), abs(h))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff(data)
    if data[:4] in (b"II+\x00", b"MM\x00+"):
        return _bigtiff(data)
    if data[:2] in (b"PF", b"Pf"):
        w, h = _pnm_numbers(data, 2, 2)
        return ImageHeader("PFM", w, h, 15)
    if data[:1] == b"P" and data[1:2] in b"123456" and len(data) > 2:
        w, h = _pnm_numbers(data, 2, 2)
        return ImageHeader("PNM", w, h, 6)
    if data[:3] == b"P7\n":
        return _pam(data)
    if data[:4] == b"\x59\xa6\x6a\x95":
        w, h = struct.unpack(">II", data[4:12])
        return ImageHeader("Sun raster", w, h)
    if data[:2] == b"#?":
        return _radiance(data)
    if data[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":
        return _jp2(data)
    if data[:4] == b"\xff\x4f\xff\x51":                   # raw JPEG 2000 codestream: SIZ right after SOC
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", data[8:24])
        return ImageHeader("JPEG 2000", xsiz - xo, ysiz - yo, 15)
    if data[4:8] == b"ftyp" and (b"avif" in data[8:40] or b"avis" in data[8:40]):
        return _avif(data)
    return None


def _jpeg(data: bytes) -> ImageHeader | None:
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:                                # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
            return ImageHeader("JPEG", w, h)
        if marker == 0xDA or length < 2:                  # scan data before any frame header
            return None
        pos += 2 + length
    return None


def _gif(data: bytes) -> ImageHeader:
    # The logical screen; a frame larger than the screen is sized too (decoders allocate the union).
    w, h = struct.unpack("<HH", data[6:10])
    flags = data[10]
    pos = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
    while pos < len(data):
        block = data[pos]
        if block == 0x2C:                                 # image descriptor
            left, top, fw, fh = struct.unpack("<HHHH", data[pos + 1:pos + 9])
            return ImageHeader("GIF", max(w, left + fw), max(h, top + fh))
        if block == 0x21:                                 # extension: label, then sub-blocks
            pos += 2
            while pos < len(data) and data[pos]:
                pos += data[pos] + 1
            pos += 1
            continue
        break
    return ImageHeader("GIF", w, h)


def _webp(data: bytes) -> ImageHeader | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader("WebP", w, h, 4)
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return ImageHeader("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 4)
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return ImageHeader("WebP", w & 0x3FFF, h & 0x3FFF, 4)
    return None


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}


def _tiff(data: bytes) -> ImageHeader | None:
    e = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(e + "I", data[4:8])
    (count,) = struct.unpack(e + "H", data[ifd:ifd + 2])
    return _tiff_entries(data, e, ifd + 2, count, 12, "I", 4)


def _bigtiff(data: bytes) -> ImageHeader | None:
    e = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(e + "Q", data[8:16])
    (count,) = struct.unpack(e + "Q", data[ifd:ifd + 8])
    return _tiff_entries(data, e, ifd + 8, count, 20, "Q", 8)


def _tiff_entries(data: bytes, e: str, start: int, count: int, size: int, count_fmt: str,
                  count_len: int) -> ImageHeader | None:
    # The first IFD is the image cv2.imdecode reads. Samples wider than 8 bits are held at full width.
    tags: dict[int, int] = {}
    inline = count_len                                    # the value field is as wide as the count field
    for i in range(min(count, 512)):
        pos = start + i * size
        tag, kind = struct.unpack(e + "HH", data[pos:pos + 4])
        if tag in (256, 257, 258, 277) and kind in _TIFF_TYPES:
            fmt, width = _TIFF_TYPES[kind]
            (n,) = struct.unpack(e + count_fmt, data[pos + 4:pos + 4 + count_len])
            at = pos + 4 + count_len
            if n * width > inline:                        # the values live elsewhere: the field is an offset
                (at,) = struct.unpack(e + count_fmt, data[at:at + count_len])
            (tags[tag],) = struct.unpack(e + fmt, data[at:at + width])
    if 256 not in tags or 257 not in tags:
        return None
    bits, samples = tags.get(258, 8), max(1, tags.get(277, 1))
    bpp = max(3, samples * max(1, bits // 8) + 3)
    return ImageHeader("TIFF", tags[256], tags[257], bpp)


_NUMBER = re.compile(rb"(?:\s|#[^\n]*\n)*([0-9]{1,10})")


def _pnm_numbers(data: bytes, pos: int, n: int) -> tuple[int, ...]:
    out = []
    head = data[:4096]
    for _ in range(n):
        m = _NUMBER.match(head, pos)
        if m is None:
            raise ValueError("no number")
        out.append(int(m.group(1)))
        pos = m.end()
    return tuple(out)


def _pam(data: bytes) -> ImageHeader | None:
    head = data[:4096].split(b"ENDHDR", 1)[0]
    fields = dict(line.split(None, 1) for line in head.splitlines()[1:] if len(line.split(None, 1)) == 2)
    w, h = int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
    depth = int(fields.get(b"DEPTH", b"3"))
    return ImageHeader("PNM", w, h, max(3, 2 * depth + 3))


def _radiance(data: bytes) -> ImageHeader | None:
    # Text header lines, an empty line, then the resolution string: "-Y <height> +X <width>" (or a variant).
    head = data[:8192]
    end = head.find(b"\n\n")
    if end < 0:
        return None
    line = head[end + 2:].split(b"\n", 1)[0]
    m = re.fullmatch(rb"([-+])([XY]) ([0-9]{1,10}) ([-+])([XY]) ([0-9]{1,10})", line.strip())
    if m is None:
        return None
    first, second = int(m.group(3)), int(m.group(6))
    w, h = (second, first) if m.group(2) == b"Y" else (first, second)
    return ImageHeader("Radiance HDR", w, h, 15)


def _boxes(data: bytes, start: int, end: int):
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            (size,) = struct.unpack(">Q", data[pos + 8:pos + 16])
            header = 16
        elif size == 0:
            size = end - pos
        if size < header:
            return
        yield kind, pos + header, min(pos + size, end)
        pos += size


def _jp2(data: bytes) -> ImageHeader | None:
    for kind, start, end in _boxes(data, 0, len(data)):
        if kind == b"jp2h":
            for sub, s, _ in _boxes(data, start, end):
                if sub == b"ihdr":
                    h, w, comps = struct.unpack(">IIH", data[s:s + 10])
                    return ImageHeader("JPEG 2000", w, h, max(15, 4 * comps + 3))
    return None


def _avif(data: bytes) -> ImageHeader | None:
    # Every 'ispe' (image spatial extent) property in meta/iprp/ipco; the largest is what may be decoded.
    best: tuple[int, int] | None = None

    def walk(start: int, end: int, depth: int) -> None:
        nonlocal best
        for kind, s, e in _boxes(data, start, end):
            if kind == b"meta" and depth < 4:
                walk(s + 4, e, depth + 1)                 # meta is a full box: version + flags first
            elif kind in (b"iprp", b"ipco") and depth < 4:
                walk(s, e, depth + 1)
            elif kind == b"ispe":
                w, h = struct.unpack(">II", data[s + 4:s + 12])
                if best is None or w * h > best[0] * best[1]:
                    best = (w, h)

    walk(0, len(data), 0)
    return None if best is None else ImageHeader("AVIF", best[0], best[1], 12)
