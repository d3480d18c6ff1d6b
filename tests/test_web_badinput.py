"""Bad input against the real server: each gets its status and a JSON error, and none disturbs the daemon."""
from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.web.errors import ApiError
from monitor.web.imagesize import image_size
from monitor.web.upload import parse_multipart
from testkit.waiting import wait_until as _wait
from tests.webapp import (MjpegReader, Served, demo_weights, file_camera, make_config, raw_request, raw_status,
                          request)

CAP = 256 * 1024
MAX_VIEWERS = 2
MAX_CONNECTIONS = 330


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path) -> Iterator[Served]:
    root = tmp_path_factory.getbasetemp()
    tmp = tmp_path_factory.mktemp("bad")
    cfg = make_config(tmp, demo_weights(root), [file_camera(videos_dir, "cam1")],
                      server={"upload_max_bytes": CAP, "max_connections": MAX_CONNECTIONS,
                              "max_connections_per_client": MAX_CONNECTIONS,    # the floods come from one address
                              "stream": {"max_viewers": MAX_VIEWERS, "width": 320}})
    with Served(cfg, request_timeout=2.0, head_timeout=3.0) as s:
        yield s


def jpeg_bytes(w: int = 64, h: int = 48) -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def post(port: int, body: bytes, ctype: str | None, path: str = "/api/classify"):
    headers = {"Content-Type": ctype} if ctype else {}
    return request(port, "POST", path, body, headers)


def assert_json_error(r, status: int, *words: str) -> None:
    assert r.status == status, r
    assert r.headers["Content-Type"] == "application/json"
    message = r.json()["error"]
    for word in words:
        assert word in message, (word, message)


def form(data: bytes, name: str = "file", boundary: str = "bNd") -> tuple[bytes, str]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"x.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# ------------------------------------------------------------------------------------------------ size caps


def test_upload_over_cap_by_content_length_is_413_before_reading(served: Served) -> None:
    # Only the head is sent: the server must answer from Content-Length alone, not wait for the body.
    head = (f"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {CAP + 1}\r\n\r\n").encode()
    t0 = time.monotonic()
    answer = raw_request(served.port, head + b"\xff\xd8" * 100)
    assert raw_status(answer) == 413 and b"upload_max_bytes" in answer
    assert time.monotonic() - t0 < 1.9              # before the 2 s request timeout: nothing was awaited


def test_upload_over_cap_with_real_body_is_413(served: Served) -> None:
    body, ctype = form(b"\xff\xd8" + bytes(CAP + 10_000))
    r = post(served.port, body, ctype)
    assert_json_error(r, 413, str(CAP))


def test_content_length_shorter_body_then_eof_is_400(served: Served) -> None:
    head = b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\n"
    answer = raw_request(served.port, head + jpeg_bytes()[:100], shut=True)
    assert raw_status(answer) == 400 and b"body ended" in answer


def test_stalled_body_times_out_with_408(served: Served) -> None:
    head = b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\n"
    t0 = time.monotonic()
    answer = raw_request(served.port, head + b"\xff\xd8", timeout=10)
    assert raw_status(answer) == 408
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("headers, status", [
    ("", 411),                                                   # no Content-Length
    ("Content-Length: -1\r\n", 400),
    ("Content-Length: 12abc\r\n", 400),
    ("Content-Length: 10\r\nContent-Length: 11\r\n", 400),    # conflicting
    ("Content-Length: 10\r\nContent-Length: 10\r\n", 415),    # identical: one length (RFC 9110 8.6), not an image
    ("Transfer-Encoding: chunked\r\n", 400),                    # accepted, but "0123456789" is no chunk
])
def test_bad_content_length(served: Served, headers: str, status: int) -> None:
    answer = raw_request(served.port, f"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                                      f"{headers}\r\n".encode() + b"0123456789", shut=True)
    assert raw_status(answer) == status, answer[:300]


def test_decompression_bomb_is_refused_by_its_header(served: Served) -> None:
    # A valid PNG header claiming 30000 x 30000 pixels: refused before any decoding.
    import zlib
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
           + chunk(b"IEND", b""))
    assert image_size(png) == (30000, 30000)
    assert_json_error(post(served.port, png, "image/png"), 413, "30000x30000")


def test_image_size_reads_real_headers() -> None:
    image = np.zeros((37, 53, 3), np.uint8)
    for ext in (".jpg", ".png", ".bmp", ".webp"):
        ok, buf = cv2.imencode(ext, image)
        assert ok
        assert image_size(buf.tobytes()) == (53, 37), ext
    assert image_size(b"GIF89a" + struct.pack("<HH", 53, 37) + b"\0" * 10) == (53, 37)
    assert image_size(b"not an image") is None


# ------------------------------------------------------------------------------------------------ not an image


@pytest.mark.parametrize("body, ctype, words", [
    (b"hello, this is text", "image/jpeg", ["not a readable image"]),
    (b"", "image/png", ["empty"]),
    (b"\xff\xd8\xff\xe0 truncated jpeg", "image/jpeg", ["not a readable image"]),
    (b"{\"a\": 1}", "application/json", ["application/json", "not accepted"]),
    (b"plain", "text/plain", ["text/plain"]),
    (b"plain", None, ["Content-Type"]),
])
def test_not_an_image_is_415(served: Served, body: bytes, ctype: str | None, words: list[str]) -> None:
    assert_json_error(post(served.port, body, ctype), 415, *words)


def test_multipart_file_that_is_not_an_image_is_415(served: Served) -> None:
    body, ctype = form(b"#!/bin/sh\necho hi\n")
    assert_json_error(post(served.port, body, ctype), 415, "x.jpg", "not a readable image")


# ------------------------------------------------------------------------------------------------ malformed multipart

_OK_PART = b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'


@pytest.mark.parametrize("body, ctype, words", [
    (_OK_PART + b"DATA\r\n--B--\r\n", "multipart/form-data", ["no boundary"]),
    (_OK_PART + b"DATA\r\n--B--\r\n", "multipart/form-data; boundary=", ["boundary"]),
    (_OK_PART + b"DATA\r\n--B--\r\n", "multipart/form-data; boundary=" + "x" * 71, ["invalid multipart boundary"]),
    (_OK_PART + b"DATA\r\n--B--\r\n", 'multipart/form-data; boundary="B', ["unterminated"]),
    (_OK_PART + b"DATA", "multipart/form-data; boundary=B", ["not terminated by the closing boundary"]),
    (_OK_PART + b"DATA\r\n--B", "multipart/form-data; boundary=B", ["not terminated by the closing boundary"]),
    (b"no boundary anywhere", "multipart/form-data; boundary=B", ["does not contain the multipart boundary"]),
    (b"--B\r\nContent-Type: image/jpeg\r\n\r\nDATA\r\n--B--\r\n", "multipart/form-data; boundary=B",
     ["no Content-Disposition"]),
    (b"--B\r\nContent-Disposition: attachment; name=\"file\"\r\n\r\nDATA\r\n--B--\r\n",
     "multipart/form-data; boundary=B", ["form-data with a name"]),
    (b"--B\r\nContent-Disposition form-data\r\n\r\nDATA\r\n--B--\r\n", "multipart/form-data; boundary=B",
     ["malformed part header line"]),
    (b"--B\r\nContent-Disposition: form-data; name=\"file\"\r\nNo-Blank-Line", "multipart/form-data; boundary=B",
     ["not terminated by the closing boundary"]),
    (b"--B\r\nContent-Disposition: form-data; name=\"f\"; name=\"g\"\r\n\r\nD\r\n--B--\r\n",
     "multipart/form-data; boundary=B", ["repeated"]),
    (b"--B--\r\n", "multipart/form-data; boundary=B", ["no parts"]),
    (b"--B\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nD\r\n--B--\r\n",
     "multipart/form-data; boundary=B", ["no field 'file'"]),
    (b"--Bgarbage\r\n", "multipart/form-data; boundary=B", ["bad delimiter"]),
    (b"x", "multipart/form-data; boundary=B; boundary=C", ["repeated"]),
    (b"x", "multipart/form-data; ;;", ["parameter name"]),
])
def test_malformed_multipart_is_400(served: Served, body: bytes, ctype: str, words: list[str]) -> None:
    assert_json_error(post(served.port, body, ctype), 400, *words)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_multipart_parser_never_fails_unexpectedly(data: bytes) -> None:
    for body in (data, _OK_PART + data, b"--B\r\n" + data):
        try:
            parts = parse_multipart(body, b"B")
        except ApiError as e:
            assert e.status == 400 and e.message.startswith("malformed multipart body"), e.message
            continue
        assert parts and all(isinstance(p.data, bytes) for p in parts)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=5),
       st.text(alphabet="abcXYZ019'()+_,-./:=?", min_size=1, max_size=70))
def test_multipart_round_trip(payloads: list[bytes], boundary: str) -> None:
    delimiter = b"\r\n--" + boundary.encode()
    if any(delimiter in b"\r\n" + p + b"\r\n" for p in payloads):
        return                        # a payload that contains the boundary is not a valid encoding
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\n".encode() + p + b"\r\n"
                    for i, p in enumerate(payloads)) + f"--{boundary}--\r\n".encode()
    parts = parse_multipart(body, boundary.encode())
    assert [(p.name, p.data) for p in parts] == [(f"f{i}", p) for i, p in enumerate(payloads)]


# ------------------------------------------------------------------------------------------------ 404


@pytest.mark.parametrize("path", ["/stream/nope.mjpg", "/snapshot/nope.jpg", "/api/events?camera=nope",
                                  "/api/events/424242/snapshot.jpg", "/api/events/abc/snapshot.jpg",
                                  "/nothing", "/static/missing.js", "/favicon.ico", "/stream/cam1.jpg"])
def test_unknown_things_are_404(served: Served, path: str) -> None:
    assert_json_error(request(served.port, "GET", path), 404)


@pytest.mark.parametrize("target", [
    "/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fserver.py", "/api%2fstatus",
    "/stream/..%2f..%2fetc%2fpasswd.mjpg", "/stream/cam1%2f.mjpg", "/static\\app.js", "/static%5capp.js",
    "/healthz%00", "/static/app.js%00.png", "/%2e%2e/%2e%2e/etc/passwd", "/static/./app.js", "//static/app.js",
    "/static//app.js", "/snapshot/..%2Fcam1.jpg", "/stream/%63am1/../cam1.mjpg", "/api/status/..",
    "/static/%ff.js", "http://127.0.0.1/etc/passwd", "*",
])
def test_path_tricks_are_404(served: Served, target: str) -> None:
    answer = raw_request(served.port, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("latin-1"))
    assert raw_status(answer) == 404, (target, answer[:200])
    assert b"root:" not in answer and b"import" not in answer


def test_nul_in_request_line_is_rejected(served: Served) -> None:
    answer = raw_request(served.port, b"GET /healthz\x00 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert raw_status(answer) in (400, 404)


# ------------------------------------------------------------------------------------------------ 405, 400


@pytest.mark.parametrize("method, path, allow", [
    ("POST", "/api/status", "GET, HEAD"), ("GET", "/api/classify", "POST"), ("DELETE", "/", "GET, HEAD"),
    ("PUT", "/metrics", "GET, HEAD"), ("PATCH", "/api/events", "GET, HEAD"), ("OPTIONS", "/healthz", "GET, HEAD"),
    ("POST", "/stream/cam1.mjpg", "GET, HEAD"),
])
def test_wrong_method_is_405_with_allow(served: Served, method: str, path: str, allow: str) -> None:
    r = request(served.port, method, path, b"" if method in ("POST", "PUT", "PATCH") else None)
    assert_json_error(r, 405, method)
    assert r.headers["Allow"] == allow


def test_unknown_method_is_501(served: Served) -> None:
    answer = raw_request(served.port, b"BREW /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert raw_status(answer) == 501


@pytest.mark.parametrize("query, words", [
    ("since=abc", ["since"]), ("since=-5", ["since"]), ("since=nan", ["since"]), ("since=inf", ["since"]),
    ("limit=0", ["limit"]), ("limit=abc", ["limit"]), ("limit=100000", ["limit"]), ("limit=-1", ["limit"]),
    ("limit=1.5", ["limit"]), ("color=red", ["unknown query parameter 'color'"]), ("limit=1&limit=2", ["2 times"]),
    ("camera=a/b", ["camera"]),
])
def test_bad_event_query_is_400(served: Served, query: str, words: list[str]) -> None:
    assert_json_error(request(served.port, "GET", f"/api/events?{query}"), 400, *words)


@pytest.mark.parametrize("target, status, message", [
    ("/api/cameras/cam1/label", 400, "missing query parameter 'head'"),
    ("/api/cameras/cam1/label?head=scene", 400, "missing query parameter 'class'"),
    ("/api/cameras/cam1/label?head=&class=cars", 400, "missing query parameter 'head'"),     # empty is none
    ("/api/cameras/cam1/label?head=a&head=b&class=cars", 400, "query parameter 'head' given 2 times"),
    ("/api/cameras/cam1/label?head=a&class=b&heads=c", 400, "unknown query parameter 'heads' (allowed: head, class)"),
    ("/api/cameras/nope/label", 404, "no camera named 'nope'"),                # the path first
    ("/api/cameras/cam1/heatmap?on=maybe", 400, "on must be true or false (got 'maybe')"),
    ("/api/cameras/cam1/heatmap?on=%7Bx%7D", 400, "on must be true or false (got '{x}')"),  # not a template
    ("/api/events/1/label?right=", 400, "missing query parameter 'right'"),
    ("/api/events/1/label?right=1", 400, "right must be true or false (got '1')"),
    ("/api/classify?explain=maybe", 400, "explain must be true or false (got 'maybe')"),
    ("/api/events?camera=nope", 404, "camera: no camera named 'nope'"),
    ("/api/events?limit=5&limit=6", 400, "query parameter 'limit' given 2 times"),
])
def test_bad_query_names_the_parameter(served: Served, target: str, status: int, message: str) -> None:
    method = "GET" if target.startswith("/api/events?") else "POST"
    r = request(served.port, method, target, b"" if method == "POST" else None)
    assert_json_error(r, status)
    assert r.json()["error"] == message, r


@pytest.mark.parametrize("data, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/9.9\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n", 400),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 431),     # head over 64 KiB
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: b\r\n" * 120 + b"\r\n", 431),   # too many header lines (> 100)
])
def test_malformed_requests(served: Served, data: bytes, status: int) -> None:
    assert raw_status(raw_request(served.port, data)) == status


# ------------------------------------------------------------------------------------------------ 503 viewers


def test_too_many_viewers_is_503(served: Served) -> None:
    readers = [MjpegReader(served.port, "cam1") for _ in range(MAX_VIEWERS)]
    try:
        assert all(r.status == 200 for r in readers)
        assert_json_error(request(served.port, "GET", "/stream/cam1.mjpg"), 503, "max_viewers")
        assert served.sample("monitor_stream_viewers", {"camera": "cam1"}) == MAX_VIEWERS
    finally:
        for r in readers:
            r.close()


# ------------------------------------------------------------------------------------------------ idle sockets


def _healthz_time(port: int) -> float:
    t0 = time.monotonic()
    r = request(port, "GET", "/healthz", timeout=5)
    assert r.status == 200
    return time.monotonic() - t0


def test_idle_and_trickling_sockets_do_not_block_new_clients(served: Served) -> None:
    idle = []
    try:
        for _ in range(200):
            idle.append(socket.create_connection(("127.0.0.1", served.port), timeout=5))
        for i in range(100):                              # slowloris: half a request head, never finished
            s = socket.create_connection(("127.0.0.1", served.port), timeout=5)
            s.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + str(i).encode())
            idle.append(s)
        assert _wait(lambda: served.web.connections >= 300, 3), served.web.connections
        assert served.web.active_requests == 0          # none of them is being answered
        assert _healthz_time(served.port) < 1.0
        r = request(served.port, "GET", "/api/status", timeout=5)
        assert r.status == 200
        # after head_timeout (3 s here) they are closed: the partial heads with a 408
        assert _wait(lambda: served.web.connections == 0, 6), served.web.connections
        closed = 0
        for s in idle[:5] + idle[-5:]:
            s.settimeout(1)
            try:
                data = s.recv(4096)
                closed += data == b"" or b" 408 " in data
            except (ConnectionResetError, TimeoutError):
                closed += 1
        assert closed == 10
    finally:
        for s in idle:
            s.close()


def test_connections_past_the_cap_are_refused_at_once(served: Served) -> None:
    """More connections than server.max_connections: the overflow is answered 503 and closed at once (no
    descriptor kept for it); the cap frees up as the idle ones time out; /healthz recovers. One address gets the
    general slots and one of those kept for health checks (tests/test_web_clients.py)."""
    cap = served.web.max_connections
    assert cap == MAX_CONNECTIONS
    held = cap - served.web.health_reserve + 1
    socks = []
    try:
        refused_before = served.sample("monitor_http_requests_total", {"code": "503"}) + cap - held
        for _ in range(cap):
            socks.append(socket.create_connection(("127.0.0.1", served.port), timeout=5))
        assert _wait(lambda: served.web.connections == held, 3), served.web.connections
        assert _wait(lambda: served.sample("monitor_http_requests_total", {"code": "503"}) == refused_before, 3)
        t0 = time.monotonic()
        answer = raw_request(served.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", timeout=3)
        assert raw_status(answer) == 503 and b"max_connections" in answer, answer[:200]
        assert time.monotonic() - t0 < 1.0
        assert served.sample("monitor_http_requests_total", {"code": "503"}) == refused_before + 1
        assert served.web.connections == held                # the refused one is not kept
        assert _wait(lambda: served.web.connections == 0, 6)  # head_timeout: idle connections closed
        assert _healthz_time(served.port) < 1.0
    finally:
        for s in socks:
            s.close()


# ------------------------------------------------------------------------------------------------ the daemon goes on


def test_bad_input_barrage_does_not_disturb_capture_or_streams(served: Served) -> None:
    reader = MjpegReader(served.port, "cam1")
    parts: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        try:
            while not stop.is_set():
                reader.part()
                parts.append(time.monotonic())
        except (AssertionError, OSError, ValueError):
            pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    frames0 = served.app.cameras["cam1"].status()["frames"]
    t0 = time.monotonic()
    bad = [
        lambda: post(served.port, b"junk", "image/jpeg"),
        lambda: post(served.port, b"--B\r\n", "multipart/form-data; boundary=B"),
        lambda: raw_request(served.port, b"GET /static/%2e%2e/x HTTP/1.1\r\n\r\n"),
        lambda: raw_request(served.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200) + b"\r\n\r\n"),
        lambda: request(served.port, "GET", "/api/events?limit=-3"),
        lambda: raw_request(served.port, f"POST /api/classify HTTP/1.1\r\nContent-Length: {CAP * 10}\r\n\r\n".encode()),
    ]
    codes: list[int] = []
    while time.monotonic() - t0 < 3:
        for fn in bad:
            r = fn()
            codes.append(r.status if hasattr(r, "status") else raw_status(r))
    seconds = time.monotonic() - t0
    stop.set()
    reader.close()
    watcher.join(5)
    frames = served.app.cameras["cam1"].status()["frames"] - frames0
    assert set(codes) <= {400, 404, 413, 415}, set(codes)
    assert frames >= 12.5 * seconds * 0.7, f"capture slowed down: {frames} frames in {seconds:.1f} s"
    in_window = [t for t in parts if t0 <= t <= t0 + seconds]
    assert len(in_window) >= 10 * seconds * 0.6, f"stream slowed down: {len(in_window)} parts in {seconds:.1f} s"
    assert served.app.cameras["cam1"].status()["state"] == "up"
    assert _healthz_time(served.port) < 1.0
    for code in ("400", "404", "413", "415"):
        assert served.sample("monitor_http_requests_total", {"code": code}) > 0


def test_viewer_that_stops_reading_is_dropped(served: Served) -> None:
    """A viewer that holds its connection but reads nothing loses its slot after the request timeout."""
    stalled = MjpegReader(served.port, "cam1", rcvbuf=4096)
    try:
        assert stalled.status == 200
        assert _wait(lambda: served.web.streams.viewers == 1, 2)
        # never read again: the send queue fills, frames are skipped, then the viewer is dropped (2 s here)
        assert _wait(lambda: served.web.streams.viewers == 0, 8)
        assert served.sample("monitor_stream_viewers", {"camera": "cam1"}) == 0
        assert served.sample("monitor_stream_frames_skipped_total", {"camera": "cam1"}) > 0
    finally:
        stalled.close()
