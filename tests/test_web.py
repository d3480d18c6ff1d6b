"""The web server on real parts: page, status API, events API, upload classification, health, auth."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from monitor.core.labels import imagenet_classes
from tests.webapp import Served, basic, demo_weights, file_camera, make_config, request


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_weights(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path, weights: Path) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("web")
    cfg = make_config(tmp, weights, [file_camera(videos_dir, "cam1"),
                                     file_camera(videos_dir, "cam2", "bottle-detection"),
                                     {"name": "gone", "source": str(tmp / "missing.mp4")}],
                      server={"stream": {"width": 320, "fps": 8}},
                      # min_score 0: every result hits, so an event opens on cam2 at its first result and stays
                      watchlist=[{"name": "always", "classes": ["dog"], "cameras": ["cam2"], "min_score": 0,
                                  "min_frames": 1, "end_after": "1h"}],
                      alerts={"snapshots": str(tmp / "snapshots")})
    with Served(cfg, wait=["cam1", "cam2"]) as s:
        yield s


def jpeg_of(shape: tuple[int, int] = (240, 320), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 255, (*shape, 3), dtype=np.uint8), (9, 9), 0)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


def multipart(fields: list[tuple[str, str | None, str | None, bytes]], boundary: str = "xYz-123") -> tuple[bytes, str]:
    out = b""
    for name, filename, ctype, data in fields:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


# ------------------------------------------------------------------------------------------------ page, health


def test_page_and_static_files_are_served_offline(served: Served) -> None:
    page = request(served.port, "GET", "/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    html = page.body.decode()
    assert '<script src="/static/app.js">' in html and "/static/style.css" in html
    # offline: nothing is fetched from another origin
    for body in (html, request(served.port, "GET", "/static/app.js").body.decode(),
                 request(served.port, "GET", "/static/style.css").body.decode()):
        assert "http://" not in body and "https://" not in body and "//cdn" not in body
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    js = request(served.port, "GET", "/static/app.js")
    assert js.status == 200 and js.headers["Content-Type"].startswith("text/javascript")
    assert "/api/status" in js.body.decode() and "/api/classify" in js.body.decode()
    head = request(served.port, "HEAD", "/")
    assert head.status == 200 and head.body == b"" and int(head.headers["Content-Length"]) == len(page.body)


def test_healthz_and_readyz_follow_app_ready(served: Served) -> None:
    r = request(served.port, "GET", "/healthz")
    assert (r.status, r.body) == (200, b"ok\n")
    r = request(served.port, "GET", "/readyz")
    assert (r.status, r.body) == (200, b"ready\n")


def test_readyz_is_503_until_the_daemon_runs(tmp_path: Path, videos_dir: Path, weights: Path) -> None:
    cfg = make_config(tmp_path, weights, [file_camera(videos_dir, "cam1")])
    with Served(cfg, start_daemon=False) as s:
        assert s.app.ready() is False
        r = request(s.port, "GET", "/readyz")
        assert r.status == 503 and r.body == b"not ready\n"
        assert request(s.port, "GET", "/healthz").status == 200          # alive all the same
        assert request(s.port, "GET", "/api/status").json()["ready"] is False
        s.start_daemon()
        assert s.app.ready() is True
        assert request(s.port, "GET", "/readyz").status == 200


# ------------------------------------------------------------------------------------------------ status API


def test_status_reports_cameras_model_uptime_versions(served: Served) -> None:
    r = request(served.port, "GET", "/api/status")
    assert r.status == 200 and r.headers["Content-Type"] == "application/json"
    doc = r.json()
    cams = {c["name"]: c for c in doc["cameras"]}
    assert list(cams) == ["cam1", "cam2", "gone"]
    cam1 = cams["cam1"]
    assert cam1["state"] == "up" and cam1["width"] == 768 and cam1["height"] == 432
    assert cam1["fps_in"] > 0 and cam1["frames"] > 0
    assert [p["rank"] for p in cam1["predictions"]] == [1, 2, 3]
    labels = imagenet_classes()
    for p in cam1["predictions"]:
        assert labels[p["index"]] == p["label"] and 0 <= p["probability"] <= 1
    probs = [p["probability"] for p in cam1["predictions"]]
    assert probs == sorted(probs, reverse=True)
    assert cam1["latency"] is not None and 0 < cam1["latency"] < 5
    assert cam1["active"] == [] and cam1["stream"] == "/stream/cam1.mjpg"
    # the result board's numbers, as they are
    assert cam1["fps_out"] == pytest.approx(served.app.results.fps_out("cam1"), abs=1.0)
    gone = cams["gone"]
    assert gone["state"] in ("down", "connecting") and gone["predictions"] == []
    model = doc["model"]
    clf = served.app.classifier
    assert model == {"name": clf.meta.name, "engine": clf.meta.engine, "precision": clf.meta.precision,
                     "untrained": True, "sha256": clf.sha256}
    assert len(model["sha256"]) == 64
    assert 0 <= doc["uptime"] < 600 and doc["started_at"] == served.app.started_at
    import platform
    from importlib.metadata import version

    import torch
    # every runtime installed, from its package metadata (monitor.core.versions)
    assert doc["versions"] == {"monitor": "0.1.0", "python": platform.python_version(),
                               "torch": torch.__version__, "openvino": version("openvino"), "av": version("av"),
                               "opencv": cv2.__version__}
    assert doc["ready"] is True and doc["top_k"] == 3


def test_status_shows_active_events_and_down_reason(served: Served) -> None:
    deadline = time.monotonic() + 5
    while not served.app.alerts.active("cam2") and time.monotonic() < deadline:   # observed after publishing
        time.sleep(0.05)
    doc = request(served.port, "GET", "/api/status").json()
    cams = {c["name"]: c for c in doc["cameras"]}
    assert cams["cam1"]["active"] == []
    assert cams["cam2"]["active"] == served.app.alerts.active("cam2") and len(cams["cam2"]["active"]) == 1
    gone = cams["gone"] = next(c for c in doc["cameras"] if c["name"] == "gone")
    deadline = time.monotonic() + 10
    while gone["state"] != "down" and time.monotonic() < deadline:
        time.sleep(0.2)
        gone = next(c for c in request(served.port, "GET", "/api/status").json()["cameras"] if c["name"] == "gone")
    assert gone["state"] == "down" and gone["reason"], gone


# ------------------------------------------------------------------------------------------------ events API


def test_events_query_filters_and_snapshot(served: Served, tmp_path: Path) -> None:
    store = served.app.events
    snap = tmp_path / "ev.jpg"
    snap.write_bytes(jpeg_of(seed=3))
    t0 = time.time() - 100
    a = store.start_event("cam1", "r1", "sports car", 0.8, t0, str(snap))
    b = store.start_event("cam2", "r2", "water bottle", 0.7, t0 + 10, None)
    store.end_event(b, t0 + 20, 0.9)
    c = store.start_event("cam1", "r1", "sports car", 0.6, t0 + 30, None)

    r = request(served.port, "GET", "/api/events")
    assert r.status == 200
    events = r.json()["events"]
    ids = [e["id"] for e in events]
    assert ids.index(c) < ids.index(b) < ids.index(a)            # newest first
    ev_a = next(e for e in events if e["id"] == a)
    assert ev_a["snapshot_url"] == f"/api/events/{a}/snapshot.jpg" and "snapshot" not in ev_a
    assert ev_a["node"] and all(e["node"] == ev_a["node"] for e in events)   # node.name of the daemon
    assert str(tmp_path) not in r.body.decode()                  # file paths stay on the server
    ev_b = next(e for e in events if e["id"] == b)
    assert ev_b["ended_at"] == pytest.approx(t0 + 20) and ev_b["peak_score"] == pytest.approx(0.9)

    cam1 = request(served.port, "GET", "/api/events?camera=cam1").json()["events"]
    assert [e["id"] for e in cam1] == [c, a]
    # cam2: the rule's real event (opened by the AlertEngine, snapshot written by the sink) and b
    # (the engine commits and the sink writes the snapshot off the inference thread: wait for both)
    deadline = time.monotonic() + 5
    while True:
        cam2 = request(served.port, "GET", "/api/events?camera=cam2").json()["events"]
        if (cam2 and cam2[0]["rule"] == "always" and cam2[0]["snapshot_url"]) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [e["id"] for e in cam2][1:] == [b] and cam2[0]["rule"] == "always" and cam2[0]["ended_at"] is None
    real = cam2[0]
    shot = request(served.port, "GET", real["snapshot_url"])
    assert shot.status == 200
    assert cv2.imdecode(np.frombuffer(shot.body, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (360, 640)
    since = request(served.port, "GET", f"/api/events?since={t0 + 5}").json()["events"]
    assert a not in [e["id"] for e in since] and {b, c} <= {e["id"] for e in since}
    assert len(request(served.port, "GET", "/api/events?limit=1").json()["events"]) == 1

    img = request(served.port, "GET", f"/api/events/{a}/snapshot.jpg")
    assert img.status == 200 and img.headers["Content-Type"] == "image/jpeg" and img.body == snap.read_bytes()
    none = request(served.port, "GET", f"/api/events/{b}/snapshot.jpg")
    assert none.status == 404 and "no snapshot" in none.json()["error"]
    missing = request(served.port, "GET", "/api/events/987654/snapshot.jpg")
    assert missing.status == 404 and "987654" in missing.json()["error"]


# ------------------------------------------------------------------------------------------------ upload


def test_classify_multipart_upload_matches_the_classifier(served: Served) -> None:
    data = jpeg_of(seed=1)
    body, ctype = multipart([("file", "photo.jpg", "image/jpeg", data)])
    r = request(served.port, "POST", "/api/classify", body, {"Content-Type": ctype})
    assert r.status == 200, r
    doc = r.json()
    expected = served.app.classifier.classify([cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)], 3)[0]
    assert [(p["rank"], p["label"], p["index"]) for p in doc["predictions"]] == [
        (i + 1, e.label, e.index) for i, e in enumerate(expected)]
    for got, want in zip(doc["predictions"], expected):
        assert got["probability"] == pytest.approx(want.probability, abs=1e-5)
    assert doc["model"]["untrained"] is True and doc["model"]["name"] == served.app.classifier.meta.name


def test_classify_raw_image_body_png(served: Served) -> None:
    image = cv2.imdecode(np.frombuffer(jpeg_of(seed=2), np.uint8), cv2.IMREAD_COLOR)
    ok, png = cv2.imencode(".png", image)
    r = request(served.port, "POST", "/api/classify", png.tobytes(), {"Content-Type": "image/png"})
    assert r.status == 200, r
    assert len(r.json()["predictions"]) == 3
    assert r.json()["predictions"][0]["label"] == served.app.classifier.classify([image], 3)[0][0].label


def test_classify_multipart_with_other_fields_and_preamble(served: Served) -> None:
    data = jpeg_of(seed=4)
    body, ctype = multipart([("note", None, None, b"hello"), ("file", 'a b \\"c\\".jpg', "image/jpeg", data)],
                            boundary="----WebKitFormBoundary7MA4YWxkTrZu0gW")
    body = b"preamble to ignore\r\n" + body + b"epilogue"
    r = request(served.port, "POST", "/api/classify", body, {"Content-Type": ctype})
    assert r.status == 200, r


# ------------------------------------------------------------------------------------------------ metrics


def test_every_response_is_counted_by_code(served: Served) -> None:
    before = {code: served.sample("monitor_http_requests_total", {"code": code}) for code in ("200", "404", "405")}
    request(served.port, "GET", "/healthz")
    request(served.port, "GET", "/nope")
    request(served.port, "GET", "/nope2")
    request(served.port, "POST", "/healthz")
    assert served.sample("monitor_http_requests_total", {"code": "200"}) >= before["200"] + 1
    assert served.sample("monitor_http_requests_total", {"code": "404"}) == before["404"] + 2
    assert served.sample("monitor_http_requests_total", {"code": "405"}) == before["405"] + 1
    m = request(served.port, "GET", "/metrics")
    assert m.status == 200 and m.headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert b'monitor_http_requests_total{code="404"}' in m.body
    assert b'monitor_frames_captured_total{camera="cam1"}' in m.body


# ------------------------------------------------------------------------------------------------ auth

PROTECTED_GET = ["/", "/static/app.js", "/api/status", "/api/events", "/snapshot/cam1.jpg", "/readyz",
                 "/stream/cam1.mjpg"]


def _auth_server(tmp: Path, videos_dir: Path, weights: Path, auth: dict) -> Served:
    cfg = make_config(tmp, weights, [file_camera(videos_dir, "cam1")], server={"auth": auth})
    return Served(cfg)


def _get(port: int, path: str, headers: dict | None = None) -> int:
    if path.endswith(".mjpg"):       # a stream never ends: read the status line only
        from tests.webapp import MjpegReader
        reader = MjpegReader(port, "cam1", headers)
        try:
            if reader.status == 200:
                reader.part()
            return reader.status
        finally:
            reader.close()
    return request(port, "GET", path, headers=headers).status


@pytest.fixture(scope="module")
def basic_served(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path, weights: Path,
                 ) -> Iterator[tuple[Served, int]]:
    tmp = tmp_path_factory.mktemp("auth-basic")
    (tmp / "password").write_text("s3cret-pässword\n")
    with _auth_server(tmp, videos_dir, weights, {
            "mode": "basic", "username": "admin", "password_file": str(tmp / "password"),
            "protect_metrics": True}) as s:
        store = s.app.events
        snap = tmp / "e.jpg"
        snap.write_bytes(jpeg_of(seed=9))
        event = store.start_event("cam1", "r", "x", 0.9, time.time(), str(snap))
        yield s, event


def test_basic_auth_protects_every_route_but_healthz(basic_served: tuple[Served, int]) -> None:
    served, event = basic_served
    port = served.port
    good = basic("admin", "s3cret-pässword")
    wrong = [basic("admin", "wrong"), basic("root", "s3cret-pässword"), basic("admin", ""),
             {"Authorization": "Bearer s3cret-pässword"}, {"Authorization": "Basic !!notbase64"},
             {"Authorization": "Basic " + "YWRtaW4="}]            # "admin" without a colon
    routes = PROTECTED_GET + ["/metrics", f"/api/events/{event}/snapshot.jpg"]
    for path in routes:
        r = request(port, "GET", path, timeout=5) if not path.endswith(".mjpg") else None
        status = r.status if r is not None else _get(port, path)
        assert status == 401, path
        if r is not None:
            assert r.headers["WWW-Authenticate"] == 'Basic realm="monitor", charset="UTF-8"'
            assert r.json()["error"] == "authentication required"
        for headers in wrong:
            assert _get(port, path, headers) == 401, (path, headers)
        assert _get(port, path, good) == 200, path
    assert request(port, "GET", "/healthz").status == 200
    body, ctype = multipart([("file", "x.jpg", "image/jpeg", jpeg_of())])
    assert request(port, "POST", "/api/classify", body, {"Content-Type": ctype}).status == 401
    assert request(port, "POST", "/api/classify", body, {"Content-Type": ctype, **wrong[0]}).status == 401
    assert request(port, "POST", "/api/classify", body, {"Content-Type": ctype, **good}).status == 200
    # unknown paths do not tell an anonymous client what exists
    assert request(port, "GET", "/api/nothing").status == 401
    assert request(port, "GET", "/api/nothing", headers=good).status == 404


def test_bearer_auth_and_open_metrics(tmp_path: Path, videos_dir: Path, weights: Path) -> None:
    (tmp_path / "token").write_text("tok-123456789\n")
    with _auth_server(tmp_path, videos_dir, weights, {
            "mode": "bearer", "token_file": str(tmp_path / "token"), "protect_metrics": False}) as s:
        port = s.port
        good = {"Authorization": "Bearer tok-123456789"}
        refused = 0
        for path in PROTECTED_GET:
            r = request(port, "GET", path) if not path.endswith(".mjpg") else None
            if r is not None:
                refused += 1
                assert r.status == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="monitor"', path
            for headers in ({"Authorization": "Bearer tok-12345678"}, {"Authorization": "Bearer "},
                            basic("x", "tok-123456789"), {"Authorization": "tok-123456789"}):
                assert _get(port, path, headers) == 401, (path, headers)
                refused += 1
            assert _get(port, path, good) == 200, path
        assert request(port, "GET", "/metrics").status == 200        # protect_metrics: false
        assert request(port, "GET", "/healthz").status == 200
        # 401s are counted too
        assert s.sample("monitor_http_requests_total", {"code": "401"}) == refused


def test_auth_none_leaves_everything_open(served: Served) -> None:
    for path in PROTECTED_GET + ["/metrics"]:
        assert _get(served.port, path) == 200, path


def test_no_camera_credentials_anywhere(tmp_path: Path, videos_dir: Path, weights: Path, rtsp_server) -> None:
    server = rtsp_server(["car-detection"])
    url = server.url("car-detection", credentials="viewer:hunter2pass")
    cfg = make_config(tmp_path, weights, [{"name": "door", "source": url, "fps": 2}])
    with Served(cfg) as s:
        for path in ("/api/status", "/", "/static/app.js", "/metrics", "/api/events"):
            body = request(s.port, "GET", path).body
            assert b"hunter2pass" not in body, path
        status = request(s.port, "GET", "/api/status").json()
        assert status["cameras"][0]["state"] == "up"
        assert "hunter2pass" not in status["cameras"][0]["source"]


def test_the_daemon_serves_its_own_web_port(tmp_path: Path, videos_dir: Path, weights: Path) -> None:
    """Daemon.start() builds WebServer(daemon, server.host, server.port) itself: the contract end to end."""
    from monitor.daemon import Daemon
    cfg = make_config(tmp_path, weights, [file_camera(videos_dir, "cam1")])
    daemon = Daemon(cfg)
    daemon.start()
    try:
        port = daemon.web.port
        assert port != 0
        assert request(port, "GET", "/healthz").status == 200
        deadline = time.monotonic() + 10
        while request(port, "GET", "/readyz").status != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert request(port, "GET", "/readyz").status == 200
        assert request(port, "GET", "/api/status").json()["cameras"][0]["name"] == "cam1"
    finally:
        t0 = time.monotonic()
        daemon.stop()
        assert time.monotonic() - t0 < 4
    with pytest.raises(OSError):
        request(port, "GET", "/healthz", timeout=2)
