"""Image dimensions from the header alone, for every format this OpenCV build decodes, and what decoding will
cost beyond the pixels.

Written by hand because nothing maintained does it without a decoder: PIL (not a dependency of the daemon)
opens lazily but registers dozens of plugins and still allocates per format; OpenCV has no header-only API in
Python. An upload is sized before it is decoded so that a small file promising a huge image (a "decompression
bomb") is refused instead of allocating gigabytes. A format not listed here is refused, not decoded.

Pixels are not the whole cost. The structure walks below (JPEG markers, PNG chunks, TIFF directories) also
report what a decoder holds whatever the output size (`held_bytes`: a progressive JPEG's DCT coefficients, a
TIFF's tile buffers) and refuse structures whose decoding work is out of proportion to any picture (`excess`:
thousands of JPEG scans, PNG text that inflates to gigabytes, a million TIFF pages). Each walk is bounded: it
reads at most a few thousand structures and answers in milliseconds whatever the file.
"""
from __future__ import annotations

import re
import struct
import zlib
from typing import NamedTuple


class ImageHeader(NamedTuple):
    format: str
    width: int
    height: int
    # Bytes per pixel the decoder holds at its peak (planes, wide samples), counting the 3-byte BGR result:
    # the pixel budget is scaled by 3 / this so that every format fits the same memory. Measured with this
    # OpenCV build (peak RSS of a decode at IMREAD_REDUCED_COLOR_4, 4 and 12 megapixels).
    decode_bytes_per_pixel: int = 3
    # Bytes the decoder holds on top of the picture whatever size it is decoded at, and what they are.
    held_bytes: int = 0
    held_for: str = ""
    # Decoded at full size even when a reduced size is asked for (lossless JPEG: libjpeg cannot scale it).
    full_size: bool = False
    # Why decoding would cost out of proportion to the picture (too many scans, pages, inflated text); None = no.
    excess: str | None = None
    # JPEG: the scans libjpeg decodes and their work in block visits (see _jpeg_scan_work).
    scans: int = 0
    work: int = 0

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
        return _png(data)
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
        return ImageHeader("PFM", w, h, 24)
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
        return _j2k_tiles(ImageHeader("JPEG 2000", xsiz - xo, ysiz - yo, 16), data, 0)
    if data[4:8] == b"ftyp" and (b"avif" in data[8:40] or b"avis" in data[8:40]):
        return _avif(data)
    return None


# PNG text and ICC profile chunks that libpng inflates on reading whatever the picture (up to 8 MB each): it
# inflates at about 4 ns a byte here and a 7 KB chunk holds 7 MB, so 1,400 of them in an upload cost 40 s.
# The walk inflates them too (zlib, up to the limit) since only that tells a profile from a bomb.
# A photo's profile inflates to a few KB, its XMP is usually not compressed at all.
PNG_MAX_INFLATE = 16 * 1024 * 1024     # counting it costs up to 60 ms
PNG_MAX_CHUNKS = 20_000        # chunks walked; past it the walk stops (the decoder's own CPU limit still holds)
_PNG_INFLATED = {b"zTXt", b"iTXt", b"iCCP"}


def _png(data: bytes) -> ImageHeader | None:
    if data[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", data[16:24])
    depth = data[24]
    pos, n, chunks, inflated, largest = 8, len(data), 0, 0, 0
    while pos + 8 <= n and chunks < PNG_MAX_CHUNKS and inflated <= PNG_MAX_INFLATE:
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IEND":
            break
        if kind in _PNG_INFLATED:
            size = _png_inflated(kind, data[pos + 8:pos + 8 + length], PNG_MAX_INFLATE + 1 - inflated)
            inflated += size
            largest = max(largest, size)
        pos += 12 + length
        chunks += 1
    excess = None
    if inflated > PNG_MAX_INFLATE:
        excess = (f"PNG whose text and ICC profile chunks (zTXt, iTXt, iCCP) inflate to more than "
                  f"{PNG_MAX_INFLATE // 2**20} MB")
    return ImageHeader("PNG", w, h, 6 if depth == 16 else 3, largest, "PNG: an inflated text chunk" if largest else "",
                       excess=excess)


def _png_inflated(kind: bytes, body: bytes, limit: int) -> int:
    """Bytes the chunk's compressed part inflates to, counted up to `limit` (zlib stops there: bounded work)."""
    keyword = body.find(b"\0")
    if keyword < 0:
        return 0
    if kind == b"iTXt":
        if body[keyword + 1:keyword + 2] != b"\1":
            return 0                                      # not compressed
        language = body.find(b"\0", keyword + 3)
        translated = body.find(b"\0", language + 1) if language >= 0 else -1
        if translated < 0:
            return 0
        stream = body[translated + 1:]
    else:
        stream = body[keyword + 2:]
    inflater = zlib.decompressobj()
    total = 0
    try:
        while stream and total < limit and not inflater.eof:
            total += len(inflater.decompress(stream, min(1 << 20, limit - total)))
            stream = inflater.unconsumed_tail
    except zlib.error:
        pass                                              # libpng stops at the same error
    return total


# libjpeg-turbo decodes these frame types (SOF0-3, 9-10); it refuses the other SOFn.
_JPEG_FRAMES = {0xC0: "baseline", 0xC1: "sequential", 0xC2: "progressive", 0xC3: "lossless", 0xC9: "arithmetic",
                0xCA: "progressive arithmetic"}
# Where a scan's entropy-coded data ends: a marker, i.e. 0xFF followed by anything but a stuffed zero, a fill
# byte or a restart marker (libjpeg's bit reader stops at exactly these).
_JPEG_SCAN_END = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
# libjpeg's own progression (jpeg_simple_progression) writes 10 scans for a colour image and encoders that
# search for the smallest file rarely exceed 20; libtiff stops a JPEG inside a TIFF at 100 scans by default
# (LIBTIFF_JPEG_MAX_ALLOWED_SCAN_NUMBER), nvImageCodec at 256. libjpeg itself decodes every scan a file holds.
JPEG_MAX_SCANS = 100
# Block visits of all scans together (see _jpeg_scan_work): one visit costs 3 to 7 ns here (libjpeg-turbo 3.1,
# measured per scan kind with hand-made scans), so this is at most about 0.7 s of CPU. libjpeg's progression of a
# 40-megapixel 4:2:0 image needs 17 million.
JPEG_MAX_WORK = 100_000_000
JPEG_MAX_SEGMENTS = 4096       # marker segments walked (RSTn excluded); past it the walk gives up: refused


class _Frame(NamedTuple):
    marker: int
    width: int
    height: int
    components: tuple[tuple[int, int, int], ...]      # (id, horizontal, vertical sampling factor)


def _jpeg(data: bytes) -> ImageHeader | None:
    """Walk the markers the way libjpeg reads them: the frame header, then every scan libjpeg decodes (all of a
    progressive or multi-scan file, before it outputs a row), counting their work and the whole-image
    coefficient buffers such a file needs."""
    pos, n = 2, len(data)
    frame: _Frame | None = None
    restart = scans = work = segments = 0
    buffered = False
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            if not scans:
                return None                               # not a marker where one must be: not a JPEG
            m = _JPEG_SCAN_END.search(data, pos)          # libjpeg skips junk between scans up to a marker
            if m is None:
                break
            pos = m.start()
            continue
        marker = data[pos + 1]
        if marker == 0xFF:                                # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker == 0xD9:                                # EOI
            break
        segments += 1
        if segments > JPEG_MAX_SEGMENTS:
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if frame is not None:
                break                                     # a second frame: libjpeg stops with an error
            frame = _jpeg_frame(marker, data[pos + 4:pos + 2 + length])
            if marker not in _JPEG_FRAMES:
                break                                     # libjpeg refuses it: nothing more is decoded
        elif marker == 0xDD and length >= 4:
            (restart,) = struct.unpack(">H", data[pos + 4:pos + 6])
        elif marker == 0xDA:
            if frame is None:
                return None                               # scan data before any frame header
            ids = _jpeg_scan(data[pos + 4:pos + 2 + length], frame)
            if ids is None:
                break                                     # a scan libjpeg refuses: it stops there
            comps, ss, se, ah = ids
            scans += 1
            if scans == 1:
                buffered = frame.marker in (0xC2, 0xCA) or len(comps) < len(frame.components)
            work += _jpeg_scan_work(frame, comps, ss, se, ah, restart)
            if not buffered or scans > JPEG_MAX_SCANS or work > JPEG_MAX_WORK:
                break                                     # a one-scan image: libjpeg decodes that scan only
            m = _JPEG_SCAN_END.search(data, pos + 2 + length)
            if m is None:
                break
            pos = m.start()
            continue
        elif length < 2:
            break
        pos += 2 + length
    if frame is None:
        return None
    return _jpeg_header(frame, scans, work, segments, buffered)


def _jpeg_frame(marker: int, body: bytes) -> _Frame:
    h, w, count = struct.unpack(">HHB", body[1:6])
    try:
        comps = tuple((body[6 + 3 * i], body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(count))
    except IndexError:                                    # cut short: sized, but libjpeg decodes no scan of it
        comps = ()
    if any(not 1 <= hs <= 4 or not 1 <= vs <= 4 for _, hs, vs in comps):
        comps = ()                                        # libjpeg refuses such sampling factors
    return _Frame(marker, w, h, comps)


def _jpeg_scan(body: bytes, frame: _Frame) -> tuple[list[int], int, int, int] | None:
    count = body[0]
    ids = [body[1 + 2 * i] for i in range(count)]
    known = [c[0] for c in frame.components]
    if not 1 <= count <= 4 or any(i not in known for i in ids):
        return None
    ss, se, a = body[1 + 2 * count:4 + 2 * count]
    return [known.index(i) for i in ids], ss, se, a >> 4


def _jpeg_blocks(frame: _Frame, c: int) -> tuple[int, int]:
    """(width, height) of component c in blocks: 8x8 DCT blocks, or samples for lossless JPEG."""
    hmax = max(h for _, h, _ in frame.components)
    vmax = max(v for _, _, v in frame.components)
    _, h, v = frame.components[c]
    side = 1 if frame.marker == 0xC3 else 8
    return -(-(-(-frame.width * h // hmax)) // side), -(-(-(-frame.height * v // vmax)) // side)


def _jpeg_scan_work(frame: _Frame, comps: list[int], ss: int, se: int, ah: int, restart: int) -> int:
    """The work of one scan in block visits: libjpeg's entropy decoder visits every block of the scan's components
    whether or not the scan has data for it (an empty scan, or one end-of-band run covering them all, costs
    as much as a real one). Measured here per kind of scan, in ns per block: a Huffman scan 3 to 7 (one restart
    per block doubles it), an AC refinement scan 0.6 more per coefficient of its band (it walks the band of
    every block for earlier coefficients to correct), arithmetic coding about 5 times Huffman's, 0.5 per band
    coefficient on top; a lossless sample 2.3."""
    if len(comps) == 1:
        wb, hb = _jpeg_blocks(frame, comps[0])
        blocks = mcus = wb * hb                           # a one-component scan: one block per MCU
    else:
        side = 1 if frame.marker == 0xC3 else 8
        hmax = max(h for _, h, _ in frame.components)
        vmax = max(v for _, _, v in frame.components)
        mcus = -(-frame.width // (side * hmax)) * -(-frame.height // (side * vmax))
        blocks = mcus * sum(frame.components[c][1] * frame.components[c][2] for c in comps)
    band = max(1, se - ss + 1) if frame.marker in (0xC2, 0xCA) else 64
    if frame.marker == 0xC3:
        weight = 0.5
    elif frame.marker in (0xC9, 0xCA):
        weight = 6 + (band / 4 if ss > 0 or frame.marker == 0xC9 else 0)
    else:
        weight = 1 + (band / 8 if ah > 0 and ss > 0 else 0)
    return int(blocks * weight) + (mcus // restart if restart else 0)


def _jpeg_header(frame: _Frame, scans: int, work: int, segments: int, buffered: bool) -> ImageHeader:
    kind = _JPEG_FRAMES.get(frame.marker, f"SOF{frame.marker - 0xC0}")
    held = 0
    if buffered and frame.components:
        # libjpeg keeps every block of every component until the last scan: JCOEF (int16) x 64 per block, rows
        # and columns rounded up to the sampling factor (lossless: one 16-bit sample per sample).
        per = 2 if frame.marker == 0xC3 else 128
        for c, (_, h, v) in enumerate(frame.components):
            wb, hb = _jpeg_blocks(frame, c)
            held += -(-wb // h) * h * -(-hb // v) * v * per
    excess = None
    if segments > JPEG_MAX_SEGMENTS:
        excess = f"JPEG with more than {JPEG_MAX_SEGMENTS:,} marker segments"
    elif scans > JPEG_MAX_SCANS:
        excess = f"{kind} JPEG with more than {JPEG_MAX_SCANS} scans (an encoder writes about 10)"
    elif work > JPEG_MAX_WORK:
        excess = (f"{kind} JPEG whose first {scans} scans already make the decoder visit {work:,} blocks, more "
                  f"than the {JPEG_MAX_WORK:,} allowed")
    what = "DCT coefficients of every scan" if frame.marker != 0xC3 else "samples of every scan"
    return ImageHeader("JPEG", frame.width, frame.height, 3, held, f"{kind} JPEG: {what}" if held else "",
                       frame.marker == 0xC3, excess, scans, work)


_GIF_BYTES_PER_PIXEL = 12       # OpenCV's own GIF decoder: a 4-channel canvas, the frame, indices, the result


def _gif(data: bytes) -> ImageHeader:
    # The logical screen; a frame larger than the screen is sized too (decoders allocate the union).
    w, h = struct.unpack("<HH", data[6:10])
    flags = data[10]
    pos = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
    while pos < len(data):
        block = data[pos]
        if block == 0x2C:                                 # image descriptor
            left, top, fw, fh = struct.unpack("<HHHH", data[pos + 1:pos + 9])
            return ImageHeader("GIF", max(w, left + fw), max(h, top + fh), _GIF_BYTES_PER_PIXEL)
        if block == 0x21:                                 # extension: label, then sub-blocks
            pos += 2
            while pos < len(data) and data[pos]:
                pos += data[pos] + 1
            pos += 1
            continue
        break
    return ImageHeader("GIF", w, h, _GIF_BYTES_PER_PIXEL)


_WEBP_BYTES_PER_PIXEL = 7       # libwebp's ARGB planes and OpenCV's RGBA copy (lossless; lossy holds less)


def _webp(data: bytes) -> ImageHeader | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader("WebP", w, h, _WEBP_BYTES_PER_PIXEL)
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return ImageHeader("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, _WEBP_BYTES_PER_PIXEL)
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return ImageHeader("WebP", w & 0x3FFF, h & 0x3FFF, _WEBP_BYTES_PER_PIXEL)
    return None


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}


# OpenCV counts a TIFF's pages (libtiff follows the whole directory chain, up to a million, keeping about 100
# bytes for each to catch loops) before it decodes the first: 117 MB and 0.2 s of CPU for a 9 MB file of empty
# directories. A scanner's document has tens of pages.
TIFF_MAX_PAGES = 1024
# Strips or tiles of the first page: OpenCV reads them one by one, about 1 us each (a 1 x 1,000,000 image in
# one-row strips: 0.9 s). A 40-megapixel image in one-row strips has 6,000 or so.
TIFF_MAX_STRIPS = 65_536


def _tiff(data: bytes) -> ImageHeader | None:
    e = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(e + "I", data[4:8])
    (count,) = struct.unpack(e + "H", data[ifd:ifd + 2])
    header = _tiff_entries(data, e, ifd + 2, count, 12, "I", 4)
    return _tiff_pages(header, data, e, ifd, "H", 12, "I")


def _bigtiff(data: bytes) -> ImageHeader | None:
    e = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(e + "Q", data[8:16])
    (count,) = struct.unpack(e + "Q", data[ifd:ifd + 8])
    header = _tiff_entries(data, e, ifd + 8, count, 20, "Q", 8)
    return _tiff_pages(header, data, e, ifd, "Q", 20, "Q")


def _tiff_entries(data: bytes, e: str, start: int, count: int, size: int, count_fmt: str,
                  count_len: int) -> ImageHeader | None:
    # The first IFD is the image cv2.imdecode reads. Samples wider than 8 bits are held at full width.
    tags: dict[int, int] = {}
    inline = count_len                                    # the value field is as wide as the count field
    for i in range(min(count, 512)):
        pos = start + i * size
        tag, kind = struct.unpack(e + "HH", data[pos:pos + 4])
        if tag in (256, 257, 258, 277, 278, 322, 323) and kind in _TIFF_TYPES:
            fmt, width = _TIFF_TYPES[kind]
            (n,) = struct.unpack(e + count_fmt, data[pos + 4:pos + 4 + count_len])
            at = pos + 4 + count_len
            if n * width > inline:                        # the values live elsewhere: the field is an offset
                (at,) = struct.unpack(e + count_fmt, data[at:at + count_len])
            (tags[tag],) = struct.unpack(e + fmt, data[at:at + width])
    if 256 not in tags or 257 not in tags:
        return None
    w, h = tags[256], tags[257]
    bits, samples = tags.get(258, 8), max(1, tags.get(277, 1))
    bpp = max(3, samples * max(1, bits // 8) + 3)
    # OpenCV reads a tile (or a strip) at a time into an RGBA buffer of the tile's size, which the header sets
    # apart from the image's: a 16 x 16 image with 16384 x 16384 tiles fills 1 GB.
    if 322 in tags and 323 in tags and tags[322] and tags[323]:
        tile = tags[322] * tags[323]
        count = -(-w // tags[322]) * -(-h // tags[323])
    else:
        rows = tags.get(278, 0)
        rows = h if rows == 0 or rows >= h else rows
        tile, count = w * rows, -(-h // max(1, rows))
    excess = None
    if count > TIFF_MAX_STRIPS:
        excess = f"TIFF in {count:,} strips or tiles, more than {TIFF_MAX_STRIPS:,}"
    return ImageHeader("TIFF", w, h, bpp, 4 * tile, "TIFF: the RGBA buffer of one tile or strip", excess=excess)


def _tiff_pages(header: ImageHeader | None, data: bytes, e: str, ifd: int, count_fmt: str, entry: int,
                next_fmt: str) -> ImageHeader | None:
    if header is None:
        return None
    seen: set[int] = set()
    step = struct.calcsize(count_fmt)
    try:
        while ifd and ifd not in seen and len(seen) <= TIFF_MAX_PAGES:
            seen.add(ifd)
            (count,) = struct.unpack_from(e + count_fmt, data, ifd)
            (ifd,) = struct.unpack_from(e + next_fmt, data, ifd + step + count * entry)
    except struct.error:
        pass                                              # the chain ends in a bad offset: libtiff stops there
    if len(seen) > TIFF_MAX_PAGES and header.excess is None:
        return header._replace(excess=f"TIFF with more than {TIFF_MAX_PAGES:,} pages (OpenCV counts them all "
                                      f"before decoding the first)")
    return header


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
    header = None
    for kind, start, end in _boxes(data, 0, len(data)):
        if kind == b"jp2h":
            for sub, s, _ in _boxes(data, start, end):
                if sub == b"ihdr":
                    h, w, comps = struct.unpack(">IIH", data[s:s + 10])
                    header = ImageHeader("JPEG 2000", w, h, max(16, 4 * comps + 4))
        elif kind == b"jp2c" and header is not None:
            return _j2k_tiles(header, data, start)        # the codestream: its SIZ sets the tiles
    return header


# OpenJPEG sets up every tile the SIZ marker declares before decoding any: about 6.5 KB + 1.1 KB per component
# each (measured), so 65,535 tiles of 1 x 1 (its maximum) take 476 MB for a 67-byte file.
_J2K_TILE_BYTES, _J2K_COMPONENT_BYTES = 8192, 1536


def _j2k_tiles(header: ImageHeader, data: bytes, at: int) -> ImageHeader:
    if data[at:at + 4] != b"\xff\x4f\xff\x51":
        return header
    xsiz, ysiz, _, _, xt, yt, xto, yto, comps = struct.unpack(">IIIIIIIIH", data[at + 8:at + 42])
    if not xt or not yt:
        return header
    tiles = -(-max(0, xsiz - xto) // xt) * -(-max(0, ysiz - yto) // yt)
    return header._replace(held_bytes=tiles * (_J2K_TILE_BYTES + _J2K_COMPONENT_BYTES * comps),
                           held_for=f"JPEG 2000: the state of its {tiles:,} tile{'s' * (tiles != 1)}")


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
    return None if best is None else ImageHeader("AVIF", best[0], best[1], 18)
