"""Issue 17, upload decoding: files whose decode costs far more CPU or memory than their pixels promise.

The finding: a 714 KB 4000x4000 progressive JPEG whose one tiny AC scan is repeated 20,000 times cost 16 s of
CPU (and went on after the client had hung up); a 466 KB 6300x6300 4:4:4 progressive JPEG raised the peak by
235 MB against a budget of 120. Each hostile file here is made by hand (JPEG markers and scans, PNG chunks, TIFF
directories) and sent to a running server's port; the answer must come quickly, and the CPU and the peak memory
of the request, the daemon's and its decoder process's together, stay within about 2 s and 150 MB.

With -s the tests print their figures; the last one prints the table for the README, "before" measured on the
code before the decoder processes (git archive of that commit, in a subprocess, its CPU capped at
BEFORE_CPU_SECONDS) in the same run. MONITOR_BOMBS_BEFORE=0 leaves the "before" column out.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import pytest

from monitor.web import decode_worker, imagesize
from monitor.web.imagesize import image_header
from tests.webapp import Served, demo_weights, file_camera, make_config, request

ROOT = Path(__file__).resolve().parents[1]
CPU_LIMIT = 2.0                 # the done criterion: no upload costs more than about 2 s of CPU ...
PEAK_LIMIT_MB = 150             # ... or 150 MB
BEFORE_CPU_SECONDS = float(os.environ.get("MONITOR_BOMBS_BEFORE_CPU", "3"))
FIGURES: dict[str, "Cost"] = {}


# ---------------------------------------------------------------------------------------------- JPEG by hand


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


class _Bits:
    """An entropy-coded segment: bits MSB first, 0xFF stuffed with 0x00, padded with 1s."""

    def __init__(self) -> None:
        self.acc, self.n, self.out = 0, 0, bytearray()

    def put(self, value: int, nbits: int) -> None:
        for i in range(nbits - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.out += b"\xff\x00" if self.acc == 0xFF else bytes([self.acc])
                self.acc, self.n = 0, 0

    def done(self) -> bytes:
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)
        return bytes(self.out)


# Huffman tables: DC, one 1-bit code for "difference 0"; AC, EOB14 (a run of 16384-32767 blocks) as '0' and
# EOB0..EOB13 as 5-bit codes. With them a scan's data can say "nothing in any of these blocks" in a few bytes.
_DC_TABLE = [(1, 0x00)]
_AC_TABLE = [(1, 0xE0)] + [(5, k << 4) for k in range(14)]


def _codes(table: list[tuple[int, int]]) -> dict[int, tuple[int, int]]:
    codes, code, last = {}, 0, 0
    for length, symbol in table:
        code <<= length - last
        last = length
        codes[symbol] = (code, length)
        code += 1
    return codes


_AC_CODES = _codes(_AC_TABLE)


def _dht(table_class_id: int, table: list[tuple[int, int]]) -> bytes:
    counts = [0] * 16
    for length, _ in table:
        counts[length - 1] += 1
    return _segment(0xC4, bytes([table_class_id]) + bytes(counts) + bytes(s for _, s in table))


def _end_of_band_runs(count: int) -> bytes:
    """AC scan data: each of `count` blocks ends its band at once (end-of-band runs of up to 32767 blocks)."""
    bits = _Bits()
    while count >= 16384:
        run = min(count, 32767)
        bits.put(0, 1)                                    # EOB14: a run of 16384 + the next 14 bits
        bits.put(run - 16384, 14)
        count -= run
    if count:
        k = count.bit_length() - 1                        # EOBk: a run of 2^k + the next k bits
        code, length = _AC_CODES[k << 4]
        bits.put(code, length)
        bits.put(count - (1 << k), k)
    return bits.done()


def _dc_zero(count: int) -> bytes:
    """DC scan data: difference 0 for each of `count` blocks (one bit each)."""
    return bytes(count // 8) + (bytes([(1 << (8 - count % 8)) - 1]) if count % 8 else b"")


@dataclass(frozen=True)
class Scan:
    components: tuple[int, ...]
    ss: int = 0
    se: int = 0
    ah: int = 0
    al: int = 0
    data: bytes = b""


def jpeg(width: int, height: int, sampling: list[tuple[int, int]], scans: list[Scan], sof: int = 0xC2,
         restart: int = 0, extra: bytes = b"") -> bytes:
    """A JPEG of hand-made scans: one quantisation table, the tables above (Huffman frames), a frame of
    len(sampling) components with these (h, v) factors, optional DRI, `extra` segments, the scans as given."""
    frame = struct.pack(">BHHB", 8, height, width, len(sampling))
    for i, (h, v) in enumerate(sampling):
        frame += bytes([i + 1, (h << 4) | v, 0])
    out = b"\xff\xd8" + _segment(0xDB, b"\x00" + bytes([1] * 64)) + _segment(sof, frame)
    if sof not in (0xC9, 0xCA):
        out += _dht(0x00, _DC_TABLE) + _dht(0x10, _AC_TABLE)
    if restart:
        out += _segment(0xDD, struct.pack(">H", restart))
    parts = [out, extra]
    for s in scans:
        head = bytes([len(s.components)]) + b"".join(bytes([c + 1, 0x00]) for c in s.components)
        parts.append(_segment(0xDA, head + bytes([s.ss, s.se, (s.ah << 4) | s.al])) + s.data)
    return b"".join(parts) + b"\xff\xd9"


def blocks(width: int, height: int, sampling: list[tuple[int, int]], c: int) -> int:
    hmax, vmax = max(h for h, _ in sampling), max(v for _, v in sampling)
    h, v = sampling[c]
    return -(-(-(-width * h // hmax)) // 8) * -(-(-(-height * v // vmax)) // 8)


S444 = [(1, 1)] * 3
S420 = [(2, 2), (1, 1), (1, 1)]


def dc_first(width: int, height: int, sampling: list[tuple[int, int]]) -> Scan:
    """The DC scan of all components (interleaved: whole MCUs), with data: difference 0 everywhere."""
    hmax, vmax = max(h for h, _ in sampling), max(v for _, v in sampling)
    mcus = -(-width // (8 * hmax)) * -(-height // (8 * vmax))
    return Scan(tuple(range(len(sampling))), data=_dc_zero(mcus * sum(h * v for h, v in sampling)))


def scan_bomb(width: int = 4000, height: int = 4000, repeats: int = 20_000) -> bytes:
    """The finding: one tiny AC scan (coefficient 1 of Y, an end-of-band run over every block: 15 bytes)
    repeated. Each repeat makes libjpeg walk all 250,000 blocks of Y again."""
    y = blocks(width, height, S444, 0)
    return jpeg(width, height, S444, [dc_first(width, height, S444)]
                + [Scan((0,), 1, 1, data=_end_of_band_runs(y))] * repeats)


def coefficient_bomb(width: int, height: int, sampling: list[tuple[int, int]], sof: int = 0xC2,
                     ac_scans: int = 3) -> bytes:
    """A progressive (or multi-scan) JPEG of a flat picture: small file, whole-image coefficient buffers."""
    scans = [dc_first(width, height, sampling)] if sof == 0xC2 else []
    if sof == 0xC2:
        scans += [Scan((c,), 1, 63, data=_end_of_band_runs(blocks(width, height, sampling, c)))
                  for c in range(min(ac_scans, len(sampling)))]
    else:                                                 # sequential, one scan per component (non-interleaved)
        scans += [Scan((c,), 0, 63) for c in range(len(sampling))]
    return jpeg(width, height, sampling, scans, sof=sof)


# ---------------------------------------------------------------------------------------------- PNG, TIFF, GIF


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_text_bomb(chunks: int = 1000, each: int = 7_000_000) -> bytes:
    """A 16 x 16 PNG with `chunks` zTXt comments of `each` zero bytes (7 KB compressed each): libpng inflates
    every one of them while reading the picture."""
    raw = b"".join(b"\0" + bytes(16 * 3) for _ in range(16))
    text = _chunk(b"zTXt", b"Comment\0\0" + zlib.compress(bytes(each), 9))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)) + text * chunks
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def _tiff(entries: list[tuple[int, int, int, int]], tail: bytes, next_ifd: int = 0) -> bytes:
    """A little-endian TIFF: the first directory at 8 (entries: tag, type, count, value), then `tail`."""
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3
                                                         else struct.pack("<I", value))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", next_ifd) + tail


def tiff_tile_bomb(tile: int = 8192) -> bytes:
    """A 16 x 16 TIFF whose one tile is tile x tile (deflated zeros): OpenCV reads it into an RGBA buffer of the
    tile's size."""
    data = zlib.compress(bytes(tile * tile * 3), 9)
    at = 8 + 2 + 12 * 11 + 4
    return _tiff([(256, 4, 1, 16), (257, 4, 1, 16), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 2), (277, 3, 1, 3),
                  (284, 3, 1, 1), (322, 4, 1, tile), (323, 4, 1, tile), (324, 4, 1, at), (325, 4, 1, len(data))],
                 data)


def tiff_pages_bomb(pages: int = 1_000_000) -> bytes:
    """A 1 x 1 TIFF followed by `pages` empty directories (6 bytes each): libtiff follows the whole chain."""
    pixel = 8 + 2 + 12 * 9 + 4
    first = pixel + 2
    chain = b"".join(struct.pack("<HI", 0, first + 6 * (i + 1) if i < pages - 1 else 0) for i in range(pages))
    return _tiff([(256, 3, 1, 1), (257, 3, 1, 1), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
                  (273, 4, 1, pixel), (277, 3, 1, 1), (278, 3, 1, 1), (279, 4, 1, 1)], b"\x80\x00" + chain, first)


def tiff_strip_flood(height: int = 1_000_000) -> bytes:
    """A 1 x height TIFF in one-row strips: OpenCV reads a million strips one by one."""
    pixels = 8 + 2 + 12 * 10 + 4
    offsets, counts = pixels + height, pixels + 5 * height
    return _tiff([(256, 4, 1, 1), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
                  (273, 4, height, offsets), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, height, counts), (284, 3, 1, 1)],
                 bytes(height) + struct.pack(f"<{height}I", *range(pixels, pixels + height))
                 + struct.pack(f"<{height}I", *[1] * height))


def j2k_tile_bomb(side: int = 255) -> bytes:
    """A JPEG 2000 codestream of side x side pixels in 1 x 1 tiles (67 bytes): OpenJPEG sets up every tile."""
    def seg(marker: int, payload: bytes) -> bytes:
        return struct.pack(">HH", marker, len(payload) + 2) + payload
    siz = struct.pack(">HIIIIIIIIH", 0, side, side, 0, 0, 1, 1, 0, 0, 1) + bytes([7, 1, 1])
    return (b"\xff\x4f" + seg(0xFF51, siz) + seg(0xFF52, bytes([0, 0, 0, 1, 0, 0, 4, 4, 0, 0]))
            + seg(0xFF5C, bytes([0x40, 0x40])) + b"\xff\xd9")


def flat(width: int, height: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.dstack([(xx * 0.05) % 256, (yy * 0.07) % 256, ((xx + yy) * 0.03) % 256]).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("bombs")
    cfg = make_config(tmp, demo_weights(tmp_path_factory.getbasetemp()), [file_camera(videos_dir, "cam1")],
                      server={"upload_timeout": "30s"})
    # No camera runs (the daemon is built, not started): the process's CPU time is the requests'.
    with Served(cfg, start_daemon=False) as s:
        yield s


def _status_kb(field: str, pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class Cost:
    status: int
    error: str
    seconds: float               # wall time of the request
    daemon_cpu: float            # CPU time of the daemon's process during the request
    decoder_cpu: float           # CPU time of the decoder process (0 when refused before decoding)
    daemon_peak_mb: float        # the daemon process's peak RSS during the request, above where it was
    decoder_peak_mb: float       # the decoder process's, above where it was

    @property
    def cpu(self) -> float:
        return self.daemon_cpu + self.decoder_cpu

    @property
    def peak_mb(self) -> float:
        return self.daemon_peak_mb + self.decoder_peak_mb


def post(served: Served, data: bytes, ctype: str = "application/octet-stream") -> Cost:
    """POST the file and measure the request: wall time, the CPU time of this process (the daemon runs in it)
    and of the decoder process, and both processes' peak RSS (VmHWM after a reset)."""
    pool = served.web.decoders
    last = pool.last
    Path("/proc/self/clear_refs").write_text("5")
    rss0 = _status_kb("VmRSS")
    cpu0, t0 = time.process_time(), time.monotonic()
    r = request(served.port, "POST", "/api/classify", data, {"Content-Type": ctype}, timeout=60)
    seconds, cpu = time.monotonic() - t0, time.process_time() - cpu0
    peak = (_status_kb("VmHWM") - rss0) / 1024
    decoded = pool.last if pool.last is not last else None
    error = r.json().get("error", "") if r.status != 200 else ""
    return Cost(r.status, error, seconds, cpu, decoded.cpu_seconds if decoded else 0.0, max(0.0, peak),
                decoded.peak_bytes / 2**20 if decoded else 0.0)


def _print(name: str, cost: Cost) -> None:
    FIGURES[name] = cost
    print(f"\n{name}: {cost.status} in {cost.seconds * 1000:.0f} ms; CPU {cost.daemon_cpu:.3f} s daemon + "
          f"{cost.decoder_cpu:.3f} s decoder; peak +{cost.daemon_peak_mb:.1f} MB daemon, "
          f"+{cost.decoder_peak_mb:.1f} MB "
          f"decoder; {cost.error[:150]}")


def _bounded(cost: Cost) -> None:
    assert cost.cpu < CPU_LIMIT + 0.3, cost
    assert cost.peak_mb < PEAK_LIMIT_MB, cost


# ---------------------------------------------------------------------------------------------- the finding


def test_the_scan_bomb_of_the_finding_is_refused_from_its_header(served: Served) -> None:
    """20,000 repeats of a 15-byte AC scan over a 4000 x 4000 picture (16 s of CPU before): 422 naming the scans,
    in milliseconds, without a decode."""
    bomb = scan_bomb()
    assert 500_000 < len(bomb) < 800_000
    header = image_header(bomb)
    assert header is not None and (header.width, header.height) == (4000, 4000)
    assert header.scans == imagesize.JPEG_MAX_SCANS + 1          # the walk stops counting past the limit
    cost = post(served, bomb, "image/jpeg")
    _print("progressive JPEG, 20,000 tiny AC scans", cost)
    assert cost.status == 422 and "scans" in cost.error and cost.decoder_cpu == 0, cost
    assert cost.seconds < 1.0 and cost.cpu < 0.3
    _bounded(cost)


def test_the_coefficient_bomb_of_the_finding_is_charged_its_coefficients(served: Served) -> None:
    """6300 x 6300 4:4:4 progressive: libjpeg keeps 3 x 6300 x 6300 x 2 bytes of coefficients (238 MB) whatever
    the output scale. 413 naming them, before any decode."""
    bomb = coefficient_bomb(6300, 6300, S444)
    header = image_header(bomb)
    assert header.held_bytes == 3 * 788 * 788 * 128
    cost = post(served, bomb, "image/jpeg")
    _print("progressive JPEG 6300x6300 4:4:4", cost)
    assert cost.status == 413 and "DCT coefficients" in cost.error and "6300x6300" in cost.error, cost
    assert cost.decoder_cpu == 0 and cost.seconds < 1.0
    _bounded(cost)


# ---------------------------------------------------------------------------------------------- the class


def _y(width: int, height: int, sampling: list[tuple[int, int]] = S444) -> int:
    return blocks(width, height, sampling, 0)


# (name, file maker, answers allowed, a word the refusal names). Made when the test runs: some take a second.
VARIANTS: list[tuple[str, Callable[[], bytes], set[int], str]] = [
    ("DC-only scans x 5,000", lambda: jpeg(4000, 4000, S444, [dc_first(4000, 4000, S444)]
                                           + [Scan((0, 1, 2), 0, 0, 1, 0)] * 5000), {422}, "scans"),
    ("AC refinement scans 1-63 x 60 (under the scan limit)",
     lambda: jpeg(4000, 4000, S444, [dc_first(4000, 4000, S444)]
                  + [Scan((0,), 1, 63, 1, 0, _end_of_band_runs(_y(4000, 4000)))] * 60), {422}, "blocks"),
    ("restart interval 1, AC scans x 99",
     lambda: jpeg(6000, 6000, [(1, 1)], [dc_first(6000, 6000, [(1, 1)])]
                  + [Scan((0,), 1, 1, data=_end_of_band_runs(_y(6000, 6000)))] * 99, restart=1), {422}, "blocks"),
    ("arithmetic progressive, AC refinement x 60",
     lambda: jpeg(4000, 4000, S444, [Scan((0, 1, 2))] + [Scan((0,), 1, 63, 1, 0)] * 60, sof=0xCA), {422}, "blocks"),
    ("arithmetic sequential, non-interleaved x 40",
     lambda: jpeg(4000, 4000, S444, [Scan((c,), 0, 63) for c in range(3)] + [Scan((0,), 0, 63)] * 40, sof=0xC9),
     {422}, "blocks"),
    ("baseline non-interleaved 6300x6300", lambda: coefficient_bomb(6300, 6300, S444, sof=0xC0), {413},
     "coefficients"),
    ("baseline non-interleaved scans x 5,000",
     lambda: jpeg(2000, 2000, S444, [Scan((c,), 0, 63) for c in range(3)] + [Scan((0,), 0, 63)] * 5000, sof=0xC0),
     {422}, "scans"),
    ("progressive 6300x6300 4:2:0", lambda: coefficient_bomb(6300, 6300, S420), {413}, "coefficients"),
    ("progressive CMYK 5000x5000", lambda: coefficient_bomb(5000, 5000, S444 + [(1, 1)]), {413}, "coefficients"),
    ("100,000 DQT segments", lambda: jpeg(1000, 1000, S444, [Scan((0, 1, 2), 0, 63)], sof=0xC0,
                                          extra=_segment(0xDB, b"\x00" + bytes([1] * 64)) * 100_000),
     {422}, "segments"),
    ("PNG, 1,000 zTXt chunks of 7 MB", png_text_bomb, {422}, "inflate"),
    ("TIFF 16x16, one 8192x8192 tile", tiff_tile_bomb, {413}, "tile"),
    ("TIFF, 1,000,000 pages", tiff_pages_bomb, {422}, "pages"),
    ("TIFF 1x1,000,000 in one-row strips", tiff_strip_flood, {422}, "strips"),
    ("JPEG 2000 255x255 in 1x1 tiles", j2k_tile_bomb, {413}, "tiles"),
    ("GIF 4000x3000", lambda: cv2.imencode(".gif", flat(4000, 3000))[1].tobytes(), {413}, "4000x3000"),
]
FILES: dict[str, Callable[[], bytes]] = {
    "progressive JPEG, 20,000 tiny AC scans": scan_bomb,
    "progressive JPEG 6300x6300 4:4:4": lambda: coefficient_bomb(6300, 6300, S444),
    **{name: make for name, make, _, _ in VARIANTS},
}


@pytest.mark.parametrize("name,make,answers,word", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_hostile_variant_is_refused_within_the_bounds(served: Served, name: str, make: Callable[[], bytes],
                                                      answers: set[int], word: str) -> None:
    """Scans of every kind (DC, AC first, AC refinement, arithmetic, sequential non-interleaved), restart tricks,
    marker floods, 4:2:0, CMYK, and the other formats' own bombs: refused, naming why, within the bounds."""
    data = make()
    assert len(data) < served.web.upload_max_bytes
    cost = post(served, data)
    _print(name, cost)
    assert cost.status in answers and word in cost.error, cost
    _bounded(cost)


def test_legitimate_progressive_jpegs_are_still_decoded(served: Served) -> None:
    """A camera-sized progressive JPEG (OpenCV's encoder, 10 scans), one at 34 megapixels 4:2:0 (102 MB of
    coefficients, within the budget), and a hand-made one with 90 scans: classified, within the bounds."""
    twelve = cv2.imencode(".jpg", flat(4000, 3000), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    big = cv2.imencode(".jpg", flat(6700, 5100), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    y = blocks(2000, 2000, S444, 0)
    many = jpeg(2000, 2000, S444, [dc_first(2000, 2000, S444)]
                + [Scan((0,), k, k, data=_end_of_band_runs(y)) for k in range(1, 64)]
                + [Scan((c,), 1, 63, data=_end_of_band_runs(y)) for c in (1, 2)] + [Scan((0,), 1, 63, 1, 0)] * 25)
    for name, data in (("progressive JPEG 12 MP (legitimate)", twelve),
                       ("progressive JPEG 34 MP 4:2:0 (legitimate)", big),
                       ("progressive JPEG with 91 scans (legitimate)", many)):
        FILES[name] = lambda data=data: data
        cost = post(served, data, "image/jpeg")
        _print(name, cost)
        assert cost.status == 200, cost
        _bounded(cost)
    assert image_header(many).scans == 91


# ---------------------------------------------------------------------------------------------- the backstop


@pytest.fixture
def low_limits(served: Served, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The scan and work limits off, so that a scan bomb reaches the decoder process."""
    monkeypatch.setattr(imagesize, "JPEG_MAX_SCANS", 10**9)
    monkeypatch.setattr(imagesize, "JPEG_MAX_WORK", 10**15)
    yield


def test_a_decode_past_its_cpu_time_is_killed_and_the_process_replaced(served: Served, low_limits: None,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """What the header walk does not foresee is bounded by the decoder process: with the walk's limits off, the
    scan bomb runs into the process's CPU limit (lowered to 0.5 s here); 422 naming it, and the next upload is
    decoded by a fresh process."""
    pool = served.web.decoders
    monkeypatch.setattr(pool, "cpu_seconds", 0.5)
    cost = post(served, scan_bomb(repeats=3000), "image/jpeg")
    _print("scan bomb with the header limits off (decoder CPU limit 0.5 s)", cost)
    assert cost.status == 422 and "CPU" in cost.error, cost
    assert pool.last.outcome == "cpu" and 0.5 <= cost.decoder_cpu < 1.2, pool.last
    killed = pool.last.pid
    assert not Path(f"/proc/{killed}").exists()
    r = request(served.port, "POST", "/api/classify", cv2.imencode(".jpg", flat(640, 480))[1].tobytes(),
                {"Content-Type": "image/jpeg"})
    assert r.status == 200 and pool.last.pid != killed and pool.last.outcome == "ok", (r, pool.last)
    assert len(pool.pids()) <= pool.size


def test_a_decode_past_its_memory_allowance_fails_in_the_decoder(served: Served,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory the header walk does not foresee is bounded too: with JPEG 2000's tiles not charged, the 67-byte
    tile bomb (476 MB of OpenJPEG tile state before) reaches the decoder process, whose address space is limited
    to the decode's charge plus a margin: the allocation fails, 415, and the process stays within the margin."""
    monkeypatch.setattr(imagesize, "_J2K_TILE_BYTES", 0)
    monkeypatch.setattr(imagesize, "_J2K_COMPONENT_BYTES", 0)
    cost = post(served, j2k_tile_bomb())
    _print("JPEG 2000 tile bomb with its tiles not charged", cost)
    assert cost.status == 415 and cost.decoder_peak_mb < 100, cost
    assert served.web.decoders.last.outcome == "unreadable"
    _bounded(cost)


def test_a_client_hanging_up_stops_its_decode(served: Served, low_limits: None) -> None:
    """The finding's bomb kept a core busy after its client had gone: now the decoder process is killed when
    the connection is reset, well before its CPU limit."""
    pool = served.web.decoders
    bomb = scan_bomb(repeats=3000)
    s = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    s.sendall(f"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\nContent-Type: image/jpeg\r\n"
              f"Content-Length: {len(bomb)}\r\n\r\n".encode() + bomb)
    last = pool.last
    deadline = time.monotonic() + 10
    while not pool.busy and time.monotonic() < deadline:        # the decode has started
        time.sleep(0.01)
    time.sleep(0.3)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()                                                   # a reset: the client is gone
    while pool.last is last and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = pool.last
    print(f"\nclient hung up after 0.3 s: decoder {stats.outcome} after {stats.cpu_seconds:.2f} s of CPU")
    assert stats.outcome == "cancelled" and stats.cpu_seconds < 1.0, stats


def test_stop_ends_the_decoder_processes(tmp_path: Path, videos_dir: Path) -> None:
    cfg = make_config(tmp_path, demo_weights(tmp_path.parent), [file_camera(videos_dir, "cam1")])
    with Served(cfg, start_daemon=False) as s:
        assert s.web.decoders.pids() == []                      # started by the first upload, not before
        r = request(s.port, "POST", "/api/classify", cv2.imencode(".png", flat(64, 48))[1].tobytes(),
                    {"Content-Type": "image/png"})
        assert r.status == 200
        pids = s.web.decoders.pids()
        assert len(pids) == 1
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


_TRACED = """
import sys, time
import cv2
from monitor.web.decoders import DecodeError, DecoderPool
pool = DecoderPool(1, 0.3)
for path in sys.argv[1:]:
    try:
        pool.decode(open(path, "rb").read(), cv2.IMREAD_REDUCED_COLOR_2, 1024, 2**28, time.monotonic() + 30)
    except DecodeError as e:
        print(path, e.kind)
pool.close()
"""


@pytest.mark.skipif(shutil.which("strace") is None or shutil.which("systemd-analyze") is None,
                    reason="needs Debian packages strace and systemd")
def test_the_systemd_unit_allows_every_call_of_a_decoder_process(tmp_path: Path) -> None:
    """Under the unit's seccomp filter a forbidden call fails (EPERM): the decoder processes, traced while they
    start, decode a PNG and a JPEG, are killed past their CPU time and replaced, make only calls the unit
    allows (setting RLIMIT_CPU and RLIMIT_AS goes through prlimit64, which @default allows; setrlimit is not)."""
    from tests.test_readme import _syscalls
    files = []
    for name, data in (("a.png", cv2.imencode(".png", flat(640, 480))[1].tobytes()),
                       ("b.jpg", cv2.imencode(".jpg", flat(640, 480))[1].tobytes()),
                       ("bomb.jpg", scan_bomb(repeats=2000)),
                       ("c.png", cv2.imencode(".png", flat(64, 48))[1].tobytes())):
        (tmp_path / name).write_bytes(data)
        files.append(str(tmp_path / name))
    out = tmp_path / "strace"
    run = subprocess.run(["strace", "-f", "-qq", "-s", "200", "-o", str(out), sys.executable, "-c", _TRACED, *files],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "bomb.jpg cpu" in run.stdout, run.stderr[-2000:]
    lines = out.read_text().splitlines()
    workers = {line.split()[0] for line in lines if "execve(" in line and "decode_worker" in line}
    calls = {m.group(1) for line in lines if line.split(maxsplit=1)[0] in workers
             and (m := re.match(r"\S+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]", line))}
    assert len(workers) == 2 and {"prlimit64", "read", "write"} <= calls, (workers, calls)
    allowed: set[str] | None = None
    for line in (ROOT / "systemd" / "monitor.service").read_text().splitlines():
        if line.startswith("SystemCallFilter="):
            value = line.split("=", 1)[1]
            names = _syscalls(value.lstrip("~").split(), set())
            allowed = names if allowed is None else allowed - names if value.startswith("~") else allowed | names
    assert allowed is not None
    print(f"\ndecoder processes made {len(calls)} different calls, all allowed by the unit")
    # mbind: OpenBLAS's NUMA hint for its buffer when numpy is imported, which the daemon's own process makes
    # as well; a refusal only loses the hint.
    assert calls <= allowed | {"mbind", "exited", "killed", "resumed"}, sorted(calls - allowed)


# ---------------------------------------------------------------------------------------------- what it costs


def test_worker_process_cost_against_decoding_in_the_thread(served: Served) -> None:
    """The benchmark behind decoding in processes: the same uploads decoded in the request's thread (the worker's
    own decode function, called in-process) and through the decoder process, alternately in the same run; the
    pictures are identical. Prints ms per upload both ways and what a worker holds."""
    pool = served.web.decoders
    cases = [("JPEG 1920x1080", cv2.imencode(".jpg", flat(1920, 1080))[1].tobytes(), cv2.IMREAD_REDUCED_COLOR_2),
             ("JPEG 4000x3000", cv2.imencode(".jpg", flat(4000, 3000))[1].tobytes(), cv2.IMREAD_REDUCED_COLOR_8),
             ("PNG 640x480", cv2.imencode(".png", flat(640, 480))[1].tobytes(), cv2.IMREAD_COLOR)]
    pool.decode(cases[0][1], cases[0][2], 1024, 2**28, time.monotonic() + 30)    # a warm worker
    print()
    for name, data, flag in cases:
        thread, process = [], []
        for _ in range(15):
            t = time.perf_counter()
            here = decode_worker.decode(cv2, np, data, flag, 1024)
            thread.append(time.perf_counter() - t)
            t = time.perf_counter()
            there = pool.decode(data, flag, 1024, 2**28, time.monotonic() + 30)
            process.append(time.perf_counter() - t)
            assert np.array_equal(here, there)
        med_t, med_p = np.median(thread) * 1000, np.median(process) * 1000
        print(f"{name}: in-thread {med_t:.1f} ms, decoder process {med_p:.1f} ms (+{med_p - med_t:.1f} ms)")
    pid = pool.last.pid
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    private = sum(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Private_"))
    print(f"decoder process: {_status_kb('VmRSS', pid) / 1024:.0f} MB resident, {private / 1024:.0f} MB of it its own")
    assert private < 64 * 1024


# ---------------------------------------------------------------------------------------------- the table


_BEFORE = """
import json, resource, sys, time
from pathlib import Path
resource.setrlimit(resource.RLIMIT_CPU, ({cpu}, {cpu} + 1))
from monitor.web.upload import PixelBudget, checked_decode
from monitor.web.api import ApiError
data = Path(sys.argv[1]).read_bytes()
def status_kb(field):
    return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
Path("/proc/self/clear_refs").write_text("5")
rss0, cpu0 = status_kb("VmRSS:"), time.process_time()
try:
    checked_decode(data, "upload", PixelBudget(40_000_000), 30.0)
    status = 200
except ApiError as e:
    status = e.status
print(json.dumps({{"status": status, "cpu": time.process_time() - cpu0, "peak": (status_kb("VmHWM:") - rss0) / 1024}}))
"""


def _before_tree(tmp: Path) -> Path | None:
    """The monitor package as it was before the decoder processes (git archive), or None outside a checkout."""
    try:
        added = subprocess.run(["git", "rev-list", "--reverse", "HEAD", "--", "monitor/web/decoders.py"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
        rev = f"{added[0]}^" if added else "HEAD"
        archive = subprocess.run(["git", "archive", rev, "monitor"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    return tmp


def _measure_before(tree: Path, data: bytes) -> str:
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        p = subprocess.run([sys.executable, "-c", _BEFORE.format(cpu=int(BEFORE_CPU_SECONDS)), f.name],
                           env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree, capture_output=True, text=True,
                           timeout=120)
    if p.returncode == -9 or p.returncode == -24 or "SIGXCPU" in p.stderr or p.returncode < 0:
        return f"> {BEFORE_CPU_SECONDS:g} (stopped) | ? | none"
    import json
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return f"{r['cpu']:.2f} | {r['peak']:.0f} | {r['status']}"


def test_print_the_table_before_and_after(tmp_path: Path) -> None:
    """The README table: upload kind | CPU s | peak MB | answer, before (the code before the decoder processes,
    in a subprocess) and after (the figures the tests above measured through the port)."""
    assert FIGURES, "run with the tests above (the table prints their figures)"
    tree = _before_tree(tmp_path) if os.environ.get("MONITOR_BOMBS_BEFORE", "1") != "0" else None
    print("\n\nupload kind | before: CPU s | peak MB | answer | after: CPU s | peak MB | answer")
    print("--- | --- | --- | --- | --- | --- | ---")
    for name, cost in FIGURES.items():
        before = _measure_before(tree, FILES[name]()) if tree is not None and name in FILES else "- | - | -"
        print(f"{name} | {before} | {cost.cpu:.2f} | {cost.peak_mb:.0f} | {cost.status}")
