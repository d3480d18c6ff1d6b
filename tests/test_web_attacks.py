"""The attacks of issue 8 against the real server, each of which got through the hand-built HTTP/1.0 server:
slow-drip uploads holding every upload slot, a decompression bomb in a format it did not size, keep-alive and
pipelining, Expect: 100-continue, chunked uploads, absolute-form targets, idle sockets against the fd limit;
and two defects of issue 9: an unreadable event history answered 200 with [], a port clash without its address.
"""
from __future__ import annotations

import logging
import re
import socket
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest

from monitor.web.imagesize import image_header
from testkit.waiting import wait_until
from tests.webapp import Served, demo_weights, file_camera, make_config, raw_request, raw_status, request

UPLOAD_TIMEOUT = 3.0            # the whole-body deadline here (server.upload_timeout)
MAX_CONNECTIONS = 40
UNIT = Path(__file__).resolve().parents[1] / "systemd" / "monitor.service"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("attacks")
    cfg = make_config(tmp, demo_weights(tmp_path_factory.getbasetemp()), [file_camera(videos_dir, "cam1")],
                      server={"upload_timeout": f"{UPLOAD_TIMEOUT}s", "max_connections": MAX_CONNECTIONS,
                              "max_connections_per_client": MAX_CONNECTIONS,    # these attacks come from one address
                              "head_timeout": "4s", "stream": {"width": 160}})
    with Served(cfg) as s:
        yield s


def jpeg(w: int = 96, h: int = 64, seed: int = 0) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def read_response(f) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response from a socket file (Content-Length framed), interim 1xx answers skipped."""
    while True:
        status = int(f.readline().split()[1])
        headers: dict[str, str] = {}
        while (line := f.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if status >= 200:
            return status, headers, f.read(int(headers.get("content-length", "0")))


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(field)


# ---------------------------------------------------------------------------------------------------- slow drip


def test_slow_drip_uploads_do_not_hold_upload_slots_and_end_at_the_deadline(served: Served) -> None:
    """Six clients dripping an upload body one byte every 0.3 s (more than the old four upload slots; no read
    ever waits long enough for a per-read timeout): a normal upload is classified at once, and every dripper
    gets 408 when the whole-body deadline passes."""
    head = (b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000\r\n\r\n")
    drippers = []
    stop = threading.Event()
    answers: list[bytes] = []

    def drip(s: socket.socket) -> None:
        got = b""
        try:
            while not stop.is_set():
                s.sendall(b"\xff")
                s.settimeout(0.3)
                try:
                    chunk = s.recv(4096)
                except TimeoutError:
                    continue
                got += chunk
                if not chunk:
                    break
        except OSError:
            pass
        answers.append(got)

    try:
        for _ in range(6):
            s = socket.create_connection(("127.0.0.1", served.port), timeout=5)
            s.sendall(head)
            t = threading.Thread(target=drip, args=(s,), daemon=True)
            t.start()
            drippers.append((s, t))
        time.sleep(0.8)
        t0 = time.monotonic()
        r = request(served.port, "POST", "/api/classify", jpeg(), {"Content-Type": "image/jpeg"}, timeout=10)
        took = time.monotonic() - t0
        assert r.status == 200, r
        assert took < 2.0, f"a normal upload waited {took:.1f} s behind slow ones"
        for _, t in drippers:
            t.join(UPLOAD_TIMEOUT + 3)
        assert len(answers) == 6 and all(raw_status(a) == 408 for a in answers), [a[:80] for a in answers]
        assert all(b"deadline" in a for a in answers)
    finally:
        stop.set()
        for s, _ in drippers:
            s.close()


# ---------------------------------------------------------------------------------------------------- bombs


def tiff_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid deflate TIFF of width x height RGB zeros in a few KB: every strip points at the same tiny
    compressed block (decoding it would allocate width * height * 3 bytes and more)."""
    rows = 64
    strip = zlib.compress(bytes(width * 3 * rows), 9)
    strips = (height + rows - 1) // rows
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 2),
               (273, 4, strips, None), (277, 3, 1, 3), (278, 4, 1, rows), (279, 4, strips, None), (284, 3, 1, 1)]
    ifd_at = 8
    ifd_size = 2 + 12 * len(entries) + 4
    offsets_at = ifd_at + ifd_size
    counts_at = offsets_at + 4 * strips
    data_at = counts_at + 4 * strips
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if tag == 273:
            value = offsets_at
        elif tag == 279:
            value = counts_at
        ifd += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3
                                                         else struct.pack("<I", value))
    ifd += struct.pack("<I", 0)
    return (b"II*\x00" + struct.pack("<I", ifd_at) + ifd + struct.pack(f"<{strips}I", *[data_at] * strips)
            + struct.pack(f"<{strips}I", *[len(strip)] * strips) + strip)


def test_decompression_bomb_in_a_format_the_old_server_did_not_size_is_refused(served: Served) -> None:
    """A 20000 x 20000 TIFF in a few KB (1.2 GB once decoded): refused with 413 by its header, fast, and the
    process's peak RSS stays within 150 MB of where it was."""
    bomb = tiff_bomb()
    assert len(bomb) < 100_000
    header = image_header(bomb)
    assert header is not None and (header.format, header.width, header.height) == ("TIFF", 20000, 20000)
    Path("/proc/self/clear_refs").write_text("5")            # reset VmHWM: the peak from here on
    before = rss_mb()
    t0 = time.monotonic()
    r = request(served.port, "POST", "/api/classify", bomb, {"Content-Type": "image/tiff"}, timeout=30)
    took = time.monotonic() - t0
    peak = rss_mb("VmHWM")
    print(f"\nTIFF bomb {len(bomb)} bytes -> {r.status} in {took * 1000:.0f} ms; peak RSS {peak - before:+.1f} MB")
    assert r.status == 413 and "20000x20000" in r.json()["error"], r
    assert took < 2.0
    assert peak - before < 150


def big_png(width: int, height: int) -> bytes:
    """A valid RGB PNG of a grey ramp, compressed row by row (the test never holds the raw image)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(1)
    row = b"\0" + bytes(range(256)) * (width * 3 // 256) + bytes(width * 3 % 256)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_upload_at_the_pixel_budget_stays_within_150_mb(served: Served) -> None:
    """A 39.6-megapixel PNG (just under the default budget; PNG is decoded at full size, unlike JPEG): it is
    classified, and the process's peak RSS stays within 150 MB of where it was (2.4 GB for the old server's
    decode of a 30000 x 30000 image; 230 MB for a plain cv2.imdecode of this one)."""
    png = big_png(6600, 6000)
    assert len(png) < served.web.upload_max_bytes
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_mb()
    r = request(served.port, "POST", "/api/classify", png, {"Content-Type": "image/png"}, timeout=60)
    peak = rss_mb("VmHWM")
    print(f"\n39.6 MP PNG ({len(png) / 1e6:.1f} MB) -> {r.status}; peak RSS {peak - before:+.1f} MB")
    assert r.status == 200 and (r.json()["width"], r.json()["height"]) == (6600, 6000), r
    assert peak - before < 150


@pytest.mark.parametrize("ext", [".png", ".webp", ".tif", ".bmp", ".ppm", ".jp2", ".hdr", ".pfm", ".ras", ".gif",
                                 ".avif", ".jpg"])
def test_every_format_opencv_decodes_is_sized_before_decoding(served: Served, ext: str) -> None:
    """A small real image of each format is classified; the same header promising more than the pixel budget
    is refused with 413 before decoding."""
    image = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    encoded = cv2.imencode(ext, image.astype(np.float32) / 255 if ext in (".hdr", ".pfm") else image)[1].tobytes()
    header = image_header(encoded)
    assert header is not None and (header.width, header.height) == (64, 48), (ext, header)
    r = request(served.port, "POST", "/api/classify", encoded, {"Content-Type": "application/octet-stream"})
    assert r.status == 200 and (r.json()["width"], r.json()["height"]) == (64, 48), (ext, r)
    side = 16000 if ext == ".webp" else 30000                   # (WebP's lossless header holds 14 bits)
    big = _with_size(encoded, ext, side, side)
    assert image_header(big)[1:3] == (side, side), ext
    r = request(served.port, "POST", "/api/classify", big, {"Content-Type": "application/octet-stream"})
    assert r.status == 413 and f"{side}x{side}" in r.json()["error"], (ext, r)


def _with_size(data: bytes, ext: str, w: int, h: int) -> bytes:
    """The same file with its header's dimensions replaced by w x h."""
    if ext == ".png":
        ihdr = struct.pack(">II", w, h) + data[24:29]
        return data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + data[33:]
    if ext == ".webp":
        if data[12:16] == b"VP8L":
            bits = int.from_bytes(data[21:25], "little") & ~0x0FFFFFFF
            return data[:21] + (bits | (w - 1) & 0x3FFF | ((h - 1) & 0x3FFF) << 14).to_bytes(4, "little")[:4] + data[25:]
        return data                                              # (the encoder here writes VP8L)
    if ext == ".tif":
        return tiff_bomb(w, h)
    if ext == ".bmp":
        return data[:18] + struct.pack("<ii", w, h) + data[26:]
    if ext in (".ppm", ".pfm"):
        first, rest = data.split(b"\n", 1)
        return first + b"\n" + re.sub(rb"^\d+ \d+", f"{w} {h}".encode(), rest, count=1)
    if ext == ".hdr":
        return re.sub(rb"-Y \d+ \+X \d+", f"-Y {h} +X {w}".encode(), data, count=1)
    if ext == ".ras":
        return data[:4] + struct.pack(">II", w, h) + data[12:]
    if ext == ".gif":
        return data[:6] + struct.pack("<HH", min(w, 65535), min(h, 65535)) + data[10:]
    if ext == ".jpg":
        i = data.index(b"\xff\xc0")
        return data[:i + 5] + struct.pack(">HH", h, w) + data[i + 9:]
    if ext == ".jp2":
        i = data.index(b"ihdr")
        return data[:i + 4] + struct.pack(">II", h, w) + data[i + 12:]
    if ext == ".avif":
        i = data.index(b"ispe")
        return data[:i + 8] + struct.pack(">II", w, h) + data[i + 16:]
    raise AssertionError(ext)


# ---------------------------------------------------------------------------------------------------- HTTP/1.1


def test_keep_alive_and_pipelined_requests_are_answered_in_order(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        f = s.makefile("rb")
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                  b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(f)[::2] == (200, b"ok\n")
        assert read_response(f)[::2] == (200, b"ready\n")
        status, headers, body = read_response(f)
        assert status == 200 and b'"cameras"' in body and headers["content-type"] == "application/json"
        # the same connection serves the next request: keep-alive
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(f)[::2] == (200, b"ok\n")
        f.close()


def test_idle_keep_alive_connection_is_closed_after_its_timeout(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        f = s.makefile("rb")
        assert read_response(f)[0] == 200
        t0 = time.monotonic()
        assert f.read(1) == b""                                   # closed by the server, without an answer
        assert time.monotonic() - t0 < served.web.keepalive_timeout + 1.5
        f.close()


def test_expect_100_continue_is_answered(served: Served) -> None:
    body = jpeg()
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\nExpect: 100-continue\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode())
        s.settimeout(0.8)                                           # curl waits 1 s before sending anyway
        assert s.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n")
        s.settimeout(10)
        s.sendall(body)
        f = s.makefile("rb")
        status, _, answer = read_response(f)
        assert status == 200 and b'"predictions"' in answer
        f.close()
    # refused up front (too large): 413 instead of 100, the body is never sent
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 999999999\r\n\r\n")
        f = s.makefile("rb")
        assert f.readline().startswith(b"HTTP/1.1 413 ")
        f.close()


def test_chunked_upload_is_accepted(served: Served) -> None:
    body = jpeg(seed=3)
    chunks = b"".join(b"%x\r\n" % len(body[i:i + 1000]) + body[i:i + 1000] + b"\r\n" for i in range(0, len(body), 1000))
    answer = raw_request(served.port, b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                                      b"Content-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      + chunks + b"0\r\n\r\n")
    assert raw_status(answer) == 200, answer[:300]
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    expected = served.app.classifier.classify([image], 3)[0][0].label
    assert f'"label":"{expected}"'.encode() in answer.replace(b": ", b":")
    # a chunked body past upload_max_bytes is refused like any other
    cap = served.web.upload_max_bytes
    big = b"%x\r\n" % (1 << 20) + bytes(1 << 20) + b"\r\n"
    head = b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = raw_request(served.port, head + big * (cap // (1 << 20) + 1) + b"0\r\n\r\n")
    assert raw_status(answer) == 413, answer[:300]


def test_absolute_form_target_is_served(served: Served) -> None:
    answer = raw_request(served.port, f"GET http://127.0.0.1:{served.port}/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                      f"Connection: close\r\n\r\n".encode())
    assert raw_status(answer) == 200 and answer.endswith(b"ok\n")
    answer = raw_request(served.port, b"GET http://127.0.0.1/static/%2e%2e/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert raw_status(answer) == 404


# ---------------------------------------------------------------------------------------------------- fds


def test_idle_sockets_cannot_exhaust_descriptors(served: Served) -> None:
    """Idle sockets past server.max_connections are answered 503 and closed at once; the unit's LimitNOFILE
    leaves room for the default cap and the daemon's own files. From one address they get the general slots and
    one of those kept for health checks (tests/test_web_clients.py)."""
    from monitor.config.types import ServerConfig
    from monitor.web.server import RESERVED_FDS

    limit = re.search(r"^LimitNOFILE=(\d+)$", UNIT.read_text(), re.M)
    assert limit, "systemd/monitor.service sets no LimitNOFILE"
    assert int(limit.group(1)) >= ServerConfig().max_connections + RESERVED_FDS
    socks = []
    refused = 0
    held = MAX_CONNECTIONS - served.web.health_reserve + 1
    try:
        for _ in range(MAX_CONNECTIONS + 20):
            s = socket.create_connection(("127.0.0.1", served.port), timeout=5)
            socks.append(s)
        assert wait_until(lambda: served.web.connections == held, 3), served.web.connections
        for s in socks[held:]:
            s.settimeout(2)
            data = s.recv(4096)
            refused += raw_status(data) == 503 and s.recv(4096) == b""
        assert refused == MAX_CONNECTIONS + 20 - held
        assert served.web.connections == held
    finally:
        for s in socks:
            s.close()
    assert wait_until(lambda: served.web.connections == 0, 3)
    assert request(served.port, "GET", "/healthz").status == 200


def test_stop_with_open_connections_is_prompt(tmp_path: Path, videos_dir: Path, tmp_path_factory) -> None:
    cfg = make_config(tmp_path, demo_weights(tmp_path_factory.getbasetemp()), [file_camera(videos_dir, "cam1")])
    with Served(cfg, wait=False) as s:
        idle = [socket.create_connection(("127.0.0.1", s.port), timeout=5) for _ in range(5)]
        slow = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        slow.sendall(b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 100000\r\n\r\n\xff\xd8")
        assert wait_until(lambda: s.web.active_requests == 1, 3)
        t0 = time.monotonic()
        s.web.stop(1.0)
        assert time.monotonic() - t0 < 1.0
        for c in idle + [slow]:
            c.settimeout(2)
            try:
                assert c.recv(4096) in (b"",) or True
            except ConnectionResetError:
                pass
            c.close()


# ---------------------------------------------------------------------------------------------------- issue 9


def test_port_clash_names_host_and_port(tmp_path: Path, videos_dir: Path, tmp_path_factory,
                                        caplog: pytest.LogCaptureFixture) -> None:
    from monitor.daemon import Daemon
    from monitor.web.server import WebServer

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        cfg = make_config(tmp_path, demo_weights(tmp_path_factory.getbasetemp()), [file_camera(videos_dir, "cam1")])
        web = WebServer(Daemon(cfg).web_services(), "127.0.0.1", port)
        with caplog.at_level(logging.ERROR, logger="monitor.web"):
            with pytest.raises(OSError) as info:
                web.start()
        assert f"127.0.0.1:{port}" in str(info.value) and "in use" in str(info.value)
        assert any(f"127.0.0.1:{port}" in r.getMessage() for r in caplog.records)
    finally:
        blocker.close()


def test_unreadable_event_history_is_503_not_an_empty_list(served: Served, caplog) -> None:
    """(Last in this module: it closes the daemon's event store.)"""
    assert request(served.port, "GET", "/api/events").status == 200
    served.app.events.close()
    with caplog.at_level(logging.ERROR):
        r = request(served.port, "GET", "/api/events")
        snap = request(served.port, "GET", "/api/events/1/snapshot.jpg")
    assert r.status == 503 and r.headers["Retry-After"] and "event history unavailable" in r.json()["error"], r
    assert snap.status == 503
    assert any("events database" in rec.getMessage() for rec in caplog.records)
