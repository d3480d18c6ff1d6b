"""The status page in a real headless Chromium, on a real RTSP camera: DOM after the page's JS ran, and the
live MJPEG view painted on screen."""
from __future__ import annotations

import re
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from monitor.core.labels import imagenet_classes
from testkit.chromium import WINDOW, run
from tests.webapp import Served, basic, demo_weights, file_camera, make_config, request


def chromium(tmp: Path, url: str, *args: str, timeout: float = 40.0) -> bytes:
    """The page after 6 s of its scripts' (virtual) time: --dump-dom prints the DOM, --screenshot=PATH a PNG."""
    return run(tmp, url, *args, timeout=timeout)


class Dom(HTMLParser):
    """Just enough of the dumped DOM: every element's attributes, and the text inside selected elements."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: dict[str, str] = {}
        self._stack: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        if tag not in ("img", "br", "meta", "link", "input"):
            self._stack.append(a.get("id", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("img", "br", "meta", "link", "input") and self._stack:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._stack:
            if ident:
                self.text[ident] = self.text.get(ident, "") + data

    def find(self, tag: str | None = None, **attrs: str) -> list[dict[str, str]]:
        out = []
        for t, a in self.elements:
            if tag is not None and t != tag:
                continue
            if all(a.get(k.rstrip("_").replace("_", "-")) == v for k, v in attrs.items()):
                out.append(a)
        return out


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two BGR images' grey levels, `b` resized to `a`'s size."""
    ga = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY).astype(np.float64).ravel()
    gb = cv2.cvtColor(cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA),
                      cv2.COLOR_BGR2GRAY).astype(np.float64).ravel()
    if ga.std() == 0 or gb.std() == 0:
        return 0.0
    return float(np.corrcoef(ga, gb)[0, 1])


class StreamSampler(threading.Thread):
    """Keeps every JPEG the camera's live encoder publishes while the browser runs (what it may show)."""

    def __init__(self, served: Served, camera: str) -> None:
        super().__init__(daemon=True)
        self.served, self.camera = served, camera
        self.frames: dict[int, bytes] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            encoder = self.served.web.streams.encoder(self.camera)
            latest = encoder.latest() if encoder is not None else None
            if latest is not None:
                self.frames.setdefault(latest[0], latest[1])

    def images(self) -> list[np.ndarray]:
        self.stop.set()
        self.join(5)
        return [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in self.frames.values()]


def check_dom(html: str, camera: str, served: Served) -> Dom:
    dom = Dom(html)
    cards = dom.find("article", data_camera=camera)
    assert cards, f"no card for camera {camera!r} in the page"
    assert cards[0]["data-state"] == "up", cards[0]
    states = [a for a in dom.find("span") if a.get("class", "").startswith("state")]
    assert states and states[0]["class"] == "state up"
    labels = [a["data-label"] for a in dom.find("li") if "data-label" in a]
    classes = set(imagenet_classes())
    assert len(labels) == 3 and set(labels) <= classes, labels
    assert dom.find("img", class_="live")[0]["src"].startswith(f"/stream/{camera}.mjpg")
    assert dom.find("span", id="conn")[0]["data-state"] == "ok"
    # the untrained demo model is announced (the banner is not hidden)
    banner = dom.find("div", id="untrained")[0]
    assert "hidden" not in banner and "UNTRAINED" in dom.text["untrained"]
    assert served.app.classifier.meta.name in dom.text["model"]
    assert "torch" in dom.text["versions"]
    return dom


def check_painted(tmp: Path, url: str, served: Served, camera: str, dom: Dom, other: np.ndarray) -> None:
    """The live picture is on screen: where the DOM says the <img> is, the screenshot shows one of the JPEGs
    the stream sent during the run (and not a frame of another video)."""
    img = dom.find("img", class_="live")[0]
    assert img.get("data-natural"), "the live <img> never received a frame"
    x, y, w, h = map(int, img["data-box"].split(","))
    assert w >= 300 and h >= 150, img["data-box"]
    sampler = StreamSampler(served, camera)
    sampler.start()
    png = tmp / "shot.png"
    chromium(tmp, url, f"--screenshot={png}")
    sent = sampler.images()
    shot = cv2.imread(str(png), cv2.IMREAD_COLOR)
    assert shot is not None and shot.shape[:2] == (WINDOW[1], WINDOW[0])
    region = shot[y:y + h, x:x + w]
    assert region.std() > 5, "the live view is a blank box"
    assert sent, "the browser never watched the stream"
    best = max(correlation(region, frame) for frame in sent)
    control = correlation(region, other)
    print(f"live view at {x},{y} {w}x{h}: best match {best:.3f} over {len(sent)} streamed frames, "
          f"another video {control:.3f}")
    assert best > 0.9, f"the screenshot does not show a streamed frame (best correlation {best:.2f})"
    assert control < 0.5, f"another video's frame matches too ({control:.2f})"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's temp root, with the demo weights and the classifier built (once per session)."""
    base = tmp_path_factory.getbasetemp()
    demo_weights(base)
    return base


def video_frame(videos_dir: Path, name: str, index: int = 100) -> np.ndarray:
    cap = cv2.VideoCapture(str(videos_dir / f"{name}.mp4"))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
        assert ok
        return frame
    finally:
        cap.release()


def test_page_on_rtsp_camera_in_chromium(tmp_path: Path, rtsp_server, root: Path, videos_dir: Path) -> None:
    rtsp = rtsp_server(["bottle-detection"])
    source = rtsp.url("bottle-detection", credentials="viewer:hunter2pass")
    cfg = make_config(tmp_path, demo_weights(root), [{"name": "door", "source": source, "fps": 2}],
                      server={"stream": {"fps": 5}})
    with Served(cfg, wait=["door"]) as s:
        snap = tmp_path / "event.jpg"
        snap.write_bytes(cv2.imencode(".jpg", s.app.cameras["door"].latest().image)[1].tobytes())
        event = s.app.events.start_event("door", "watch", "sports car", 0.93, time.time(), str(snap))
        url = f"http://127.0.0.1:{s.port}/"
        html = chromium(tmp_path, url, "--dump-dom").decode()
        dom = check_dom(html, "door", s)
        assert "hunter2pass" not in html
        thumbs = dom.find("img", class_="thumb")
        assert thumbs and thumbs[0]["src"] == f"/api/events/{event}/snapshot.jpg"
        assert dom.find("li", data_event=str(event))
        figures = re.findall(r"<dt>fps in</dt><dd>([0-9.]+)</dd>", html)
        assert figures and float(figures[0]) > 0
        check_painted(tmp_path, url, s, "door", dom, video_frame(videos_dir, "car-detection"))
        assert s.sample("monitor_http_requests_total", {"code": "200"}) > 0


def test_page_with_basic_auth_uses_cached_credentials(tmp_path: Path, videos_dir: Path, root: Path) -> None:
    (tmp_path / "password").write_text("pw-Браузер-1")
    cfg = make_config(tmp_path, demo_weights(root), [file_camera(videos_dir, "yard", "one-by-one-person-detection")],
                      server={"auth": {"mode": "basic", "username": "admin",
                                       "password_file": str(tmp_path / "password")}})
    with Served(cfg) as s:
        assert request(s.port, "GET", "/", headers=basic("admin", "wrong")).status == 401
        # The browser is given the credentials once, in the address; the page's fetch() and <img> calls carry
        # no credentials of their own: they work only through the browser's auth cache.
        url = f"http://admin:{_pct('pw-Браузер-1')}@127.0.0.1:{s.port}/"
        html = chromium(tmp_path, url, "--dump-dom").decode()
        dom = check_dom(html, "yard", s)
        assert "pw-" not in html
        check_painted(tmp_path, url, s, "yard", dom, video_frame(videos_dir, "car-detection"))


def _pct(text: str) -> str:
    from urllib.parse import quote
    return quote(text, safe="")


def test_page_without_credentials_gets_401(tmp_path: Path, videos_dir: Path, root: Path) -> None:
    (tmp_path / "password").write_text("pw")
    cfg = make_config(tmp_path, demo_weights(root), [file_camera(videos_dir, "yard")],
                      server={"auth": {"mode": "basic", "username": "admin",
                                       "password_file": str(tmp_path / "password")}})
    with Served(cfg, wait=False) as s:
        html = chromium(tmp_path, f"http://127.0.0.1:{s.port}/", "--dump-dom").decode()
        assert 'id="cameras"' not in html
        assert s.sample("monitor_http_requests_total", {"code": "401"}) >= 1
        assert s.sample("monitor_http_requests_total", {"code": "200"}) == 0
