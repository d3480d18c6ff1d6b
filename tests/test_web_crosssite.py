"""Cross-site requests (CSRF) and DNS rebinding against the real daemon.

A page on another origin, opened in a browser that holds the daemon's Basic credentials (or none: auth is off by
default), must not change anything: its form posts, no-cors fetches and beacons reach the daemon and are refused
with 403 before any handler runs. The daemon's own page keeps working, both where Chromium sends Sec-Fetch-Site
(127.0.0.1 is a trustworthy origin) and where it sends only Origin (a plain-HTTP name, here monitor.test mapped
to 127.0.0.1 by --host-resolver-rules, as a LAN name would be). A request whose Host names a host the daemon does
not answer for (a rebinding page's own name) is refused with 421 on every route.

The browser part runs in a real headless Chromium (testkit/chromium.py); the Host and Origin matrices go over raw
HTTP so that every header is exactly as written. Footage: Intel IoT DevKit sample videos (CC BY 4.0).
"""
from __future__ import annotations

import http.server
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pytest

from monitor.config.loader import parse_config
from monitor.inference.classifier import Classifier
from monitor.inference.heads import Head, save_head
from monitor.web.app import ROUTES
from monitor.web.server import exposure_warning
from testkit.chromium import Browser, ChromiumError, Page
from testkit.waiting import wait_until
from tests.webapp import Served, file_camera, raw_request, raw_status

USER, PASSWORD = "admin", "pw-xs-1"
CLASSES = ("cars", "bottles")
ALLOWED = ["monitor.lan", "Cam.Example", "monitor.test"]
# Other names for 127.0.0.1 in the browser: a LAN name the daemon is configured for, the attacker's site and a
# name the daemon does not know (what a DNS rebinding page arrives with).
RESOLVER = "--host-resolver-rules=MAP monitor.test 127.0.0.1, MAP evil.test 127.0.0.1, MAP rebind.test 127.0.0.1"

# One request target per route; test_every_route_has_a_sample keeps it complete when routes are added.
SAMPLES = ["/openapi.json", "/", "/static/app.js", "/healthz", "/readyz", "/metrics", "/api/status", "/api/events",
           "/api/events/1/snapshot.jpg", "/api/events/1/clip.mp4", "/api/classify", "/api/classify/batch",
           "/snapshot/cam1.jpg", "/stream/cam1.mjpg", "/api/heads",
           "/api/heads/scene/retrain", "/api/heads/scene/restore", "/api/cameras/cam1/label?head=scene&class=cars",
           "/api/events/1/label?right=true", "/api/cameras/cam1/heatmap?on=true", "/docs", "/docs/assets/swagger-ui.css",
           "/docs/oauth2-redirect", "/api/fleet"]


def _route_of(target: str):
    path = target.partition("?")[0]
    return next(r for r in ROUTES if r.pattern.match(path))


# --------------------------------------------------------------------------------------------------- daemons


@pytest.fixture(scope="module")
def backbone(demo_weights: Path) -> str:
    return Classifier(demo_weights, threads=1).backbone_id


def make_head(folder: Path, backbone: str) -> Path:
    """A random-init head on the demo backbone: labelling and retraining need one, not a good one."""
    rng = np.random.default_rng(17)
    head = Head("scene", CLASSES, rng.normal(size=(len(CLASSES), 512)).astype(np.float32),
                rng.normal(size=len(CLASSES)).astype(np.float32), {"sha256": backbone, "name": "demo"})
    return save_head(head, folder / "scene.head")


def daemon_config(tmp: Path, weights: Path, videos_dir: Path, backbone: str, auth: dict, camera: str = "cam1"):
    if auth.get("mode") == "basic":
        (tmp / "password").write_text(PASSWORD)
        auth = {**auth, "password_file": str(tmp / "password")}
    return parse_config({
        "server": {"host": "127.0.0.1", "port": 0, "allowed_hosts": ALLOWED, "auth": auth},
        "model": {"weights": str(weights), "threads": 1},
        "cameras": [file_camera(videos_dir, camera, "car-detection")],
        "custom_classes": [{"name": "scene", "head": str(make_head(tmp, backbone))}],
        "alerts": {"snapshots": None},
        "events": {"database": str(tmp / "state" / "events.db")},
    }, tmp)


def state(s: Served) -> tuple:
    """What a state-changing route could have changed: examples filed, the retrain, the heatmap set."""
    counts = s.app.custom.counts("scene")
    return ({k: v for k, v in counts.items() if v}, s.app.custom.trainer.status("scene")["state"],
            sorted(s.app.heatmaps))


PRISTINE = ({}, "idle", [])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, demo_weights: Path, videos_dir: Path,
           backbone: str) -> Iterator[Served]:
    """Auth off (the default): nothing but the Host and Origin checks stands between a page and the routes."""
    tmp = tmp_path_factory.mktemp("crosssite")
    with Served(daemon_config(tmp, demo_weights, videos_dir, backbone, {"mode": "none"})) as s:
        yield s


# --------------------------------------------------------------------------------------------------- raw HTTP


class Answer:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.status = raw_status(raw)
        head, _, self.body = raw.partition(b"\r\n\r\n")
        self.headers = {k.strip().lower(): v.strip() for k, _, v in
                        (line.partition(":") for line in head.decode("latin-1").split("\r\n")[1:])}

    def error(self) -> str:
        assert self.headers.get("content-type") == "application/json", self.raw[:300]
        return json.loads(self.body)["error"]

    def __repr__(self) -> str:
        return f"<Answer {self.raw[:300]!r}>"


def send(port: int, method: str, target: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
         version: str = "HTTP/1.1", host: str | None = "127.0.0.1") -> Answer:
    """One request exactly as written (Host first unless None), on its own connection."""
    head = f"{method} {target} {version}\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return Answer(raw_request(port, head.encode("latin-1") + body, timeout=10))


def test_every_route_has_a_sample() -> None:
    assert {_route_of(t).handler for t in SAMPLES} == {r.handler for r in ROUTES}


# Names a rebinding page could arrive with, spellings that try to pass for an allowed host, and malformed values.
EVIL_HOSTS = ["evil.example", "evil.example:{port}", "EVIL.example:80", "localhost.evil.example",
              "127.0.0.1.evil.example:{port}", "monitor.lan.evil.example", "evilmonitor.lan", "sub.localhost",
              "localhost.", "x", "127.1", "2130706433", "0x7f.0.0.1", "[::1", "127.0.0.1:{port}@evil.example",
              "evil.example:{port}#127.0.0.1", "127.0.0.1:99999", "monitor.lan:8080/x", "", "*"]
OK_HOSTS = ["127.0.0.1", "127.0.0.1:{port}", "127.0.0.1:1", "localhost", "localhost:{port}", "LocalHost:{port}",
            "[::1]", "[::1]:{port}", "[0:0::1]:{port}", "[::ffff:127.0.0.1]", "10.1.2.3", "192.168.1.20:8080",
            "monitor.lan", "MONITOR.lan:{port}", "cam.example:443"]


def test_a_host_the_daemon_does_not_serve_is_421_on_every_route_and_method(served: Served) -> None:
    port = served.port
    before = served.sample("monitor_http_requests_total", {"code": "421"})
    sent = 0
    for target in SAMPLES:
        for method in (*_route_of(target).methods, "PUT", "DELETE"):
            for host in EVIL_HOSTS:
                a = send(port, method, target, host=host.format(port=port))
                assert a.status == 421, (method, target, host, a)
                if method != "HEAD":
                    assert "not served here" in a.error() or "malformed host" in a.error(), a
                sent += 1
    # a path that is no route, and a refusal that would otherwise be 401/405/501: the host goes first
    for method, target in (("GET", "/nope"), ("BREW", "/healthz"), ("POST", "/api/status")):
        assert send(port, method, target, host="evil.example").status == 421
        sent += 1
    assert served.sample("monitor_http_requests_total", {"code": "421"}) - before == sent
    assert state(served) == PRISTINE
    print(f"\n{sent} requests naming {len(EVIL_HOSTS)} foreign hosts over {len(SAMPLES)} routes: all 421")


def test_ip_literals_localhost_and_configured_names_are_served(served: Served) -> None:
    port = served.port
    for host in OK_HOSTS:
        h = host.format(port=port)
        assert send(port, "GET", "/api/status", host=h).status == 200, h
        assert send(port, "GET", "/healthz", host=h).body == b"ok\n", h
        a = send(port, "POST", "/api/cameras/cam1/heatmap?on=false", host=h)    # no Origin: not a browser
        assert a.status == 200, (h, a)


def test_absolute_form_target_names_the_host(served: Served) -> None:
    port = served.port
    # RFC 9112 section 3.2.2: the target's authority is the host; the Host header is ignored
    assert send(port, "GET", "http://evil.example/api/status", host="127.0.0.1").status == 421
    assert send(port, "GET", f"http://evil.example:{port}/healthz", host=f"127.0.0.1:{port}").status == 421
    assert send(port, "POST", "HTTP://EVIL.example/api/heads/scene/retrain", host="127.0.0.1").status == 421
    assert send(port, "GET", f"http://127.0.0.1:{port}/api/status", host="evil.example").status == 200
    assert send(port, "GET", "http://monitor.lan/api/status", host="evil.example").status == 200
    # the Origin is compared with the target's authority, not with Host
    origin = [("Origin", f"http://evil.example:{port}")]
    assert send(port, "POST", f"http://evil.example:{port}/api/cameras/cam1/heatmap?on=true", origin,
                host=f"127.0.0.1:{port}").status == 421
    a = send(port, "POST", f"http://127.0.0.1:{port}/api/cameras/cam1/heatmap?on=true", origin,
             host=f"evil.example:{port}")
    assert a.status == 403, a
    ours = [("Origin", f"http://127.0.0.1:{port}")]
    assert send(port, "POST", f"http://monitor.lan:{port}/api/cameras/cam1/heatmap?on=true", ours,
                host=f"127.0.0.1:{port}").status == 403
    assert state(served) == PRISTINE


def test_http_10_without_host_is_served_but_a_browser_origin_needs_one(served: Served) -> None:
    """No Host at all comes from no browser (they always send one), so no rebinding page; HTTP/1.1 without Host
    is h11's 400."""
    port = served.port
    assert send(port, "GET", "/api/status", version="HTTP/1.0", host=None).status == 200
    assert send(port, "POST", "/api/cameras/cam1/heatmap?on=false", version="HTTP/1.0", host=None).status == 200
    a = send(port, "POST", "/api/cameras/cam1/heatmap?on=true", [("Origin", f"http://127.0.0.1:{port}")],
             version="HTTP/1.0", host=None)
    assert a.status == 403, a
    assert send(port, "GET", "/api/status", version="HTTP/1.0", host="evil.example").status == 421
    assert send(port, "GET", "/api/status", host=None).status == 400
    assert state(served) == PRISTINE


def cross_site_headers(port: int) -> list[list[tuple[str, str]]]:
    """Header sets a request from another origin (or from an opaque one) arrives with, and forged mixtures."""
    ours = f"http://127.0.0.1:{port}"
    return [
        [("Origin", "http://evil.example")],
        [("Origin", "null")],
        [("Origin", f"http://127.0.0.1:{port + 1}")],               # another port is another origin
        [("Origin", "http://127.0.0.1")],                            # port 80
        [("Origin", f"https://127.0.0.1:{port}")],                   # another scheme
        [("Origin", f"http://localhost:{port}")],                    # the same machine under another name
        [("Origin", f"http://127.0.0.2:{port}")],
        [("Origin", f"{ours}/")],                                    # trailing junk
        [("Origin", f"{ours}.evil.example")],
        [("Origin", f"{ours}@evil.example")],
        [("Origin", f"http://user@127.0.0.1:{port}")],
        [("Origin", f"{ours} http://evil.example")],
        [("Origin", f"{ours}, http://evil.example")],
        [("Origin", f"{ours}x")],
        [("Origin", f"//127.0.0.1:{port}")],
        [("Origin", "")],
        [("Origin", ours), ("Origin", "http://evil.example")],      # several Origin headers
        [("Origin", "http://evil.example"), ("Origin", ours)],
        [("Origin", ours), ("Origin", ours)],
        [("Sec-Fetch-Site", "cross-site")],
        [("Sec-Fetch-Site", "same-site")],                           # another port or subdomain
        [("Sec-Fetch-Site", "Cross-Site")],
        [("Sec-Fetch-Site", "")],
        [("Sec-Fetch-Site", "cross-site"), ("Origin", ours)],        # the browser's word wins over Origin
        [("Sec-Fetch-Site", "same-origin"), ("Sec-Fetch-Site", "cross-site")],
        [("Origin", "http://evil.example"), ("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "no-cors"),
         ("Content-Type", "text/plain;charset=UTF-8")],
    ]


STATE_CHANGING = ["/api/cameras/cam1/heatmap?on=true", "/api/cameras/cam1/label?head=scene&class=cars",
                  "/api/heads/scene/retrain", "/api/heads/scene/restore", "/api/events/1/label?right=true",
                  "/api/classify"]
UNSAFE_METHODS = ["POST", "PUT", "PATCH", "DELETE", "post", "Post", "TRACE", "CONNECT", "PROPFIND", "BREW"]


def test_cross_site_requests_are_403_for_every_unsafe_method_on_every_route(served: Served) -> None:
    port = served.port
    before = served.sample("monitor_http_requests_total", {"code": "403"})
    sent = 0
    bodies = {"text/plain": b"head=scene&class=cars", "application/x-www-form-urlencoded": b"on=true",
              "multipart/form-data; boundary=B": b'--B\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n--B--\r\n'}
    for headers in cross_site_headers(port):
        for target in STATE_CHANGING:
            for ctype, body in bodies.items():
                a = send(port, "POST", target, [*headers, ("Content-Type", ctype)], body, host=f"127.0.0.1:{port}")
                assert a.status == 403, (headers, target, a)
                assert a.error().startswith("cross-site request refused"), a
                sent += 1
        for method in UNSAFE_METHODS:
            for target in ("/api/cameras/cam1/heatmap?on=true", "/api/status", "/nope"):
                a = send(port, method, target, headers, host=f"127.0.0.1:{port}")
                assert a.status == 403, (method, target, headers, a)
                sent += 1
    assert served.sample("monitor_http_requests_total", {"code": "403"}) - before == sent
    assert state(served) == PRISTINE
    print(f"\n{sent} cross-site requests ({len(cross_site_headers(port))} header sets): all 403, state unchanged")


def test_same_origin_and_non_browser_requests_still_change_state(served: Served) -> None:
    port = served.port

    def ok(host: str, headers: list[tuple[str, str]], method: str = "POST") -> None:
        for on in ("true", "false"):
            a = send(port, method, f"/api/cameras/cam1/heatmap?on={on}", headers, host=host)
            assert a.status == 200, (host, headers, a)
            assert served.app.heatmaps == ({"cam1"} if on == "true" else set())

    ok(f"127.0.0.1:{port}", [])                                                  # curl, scripts, bearer clients
    ok(f"127.0.0.1:{port}", [("Origin", f"http://127.0.0.1:{port}")])
    ok(f"127.0.0.1:{port}", [("Origin", f"HTTP://127.0.0.1:{port}")])
    ok("127.0.0.1", [("Origin", "http://127.0.0.1")])                              # both on the default port
    ok("127.0.0.1", [("Origin", "http://127.0.0.1:80")])
    ok(f"localhost:{port}", [("Origin", f"http://localhost:{port}")])
    ok(f"[::1]:{port}", [("Origin", f"http://[::1]:{port}")])
    ok(f"[::1]:{port}", [("Origin", f"http://[0::1]:{port}")])
    ok(f"monitor.lan:{port}", [("Origin", f"http://Monitor.LAN:{port}")])
    ok(f"127.0.0.1:{port}", [("Sec-Fetch-Site", "same-origin")])
    ok(f"127.0.0.1:{port}", [("Sec-Fetch-Site", "none")])                          # typed by the user
    ok(f"127.0.0.1:{port}", [("Sec-Fetch-Site", "same-origin"), ("Origin", f"http://127.0.0.1:{port}")])
    # behind a TLS proxy the page's origin is https://name while Host may be the proxy's upstream: every browser
    # that speaks https sends Sec-Fetch-Site, and it decides
    ok(f"127.0.0.1:{port}", [("Sec-Fetch-Site", "same-origin"), ("Origin", "https://monitor.lan")])
    # safe methods stay open to other origins (an <img> of a snapshot; reading needs CORS, which is never granted)
    for headers in cross_site_headers(port):
        assert send(port, "GET", "/api/status", headers, host=f"127.0.0.1:{port}").status == 200, headers
        assert send(port, "HEAD", "/healthz", headers, host=f"127.0.0.1:{port}").status == 200, headers
        assert send(port, "OPTIONS", "/api/status", headers, host=f"127.0.0.1:{port}").status == 405, headers
    assert state(served) == PRISTINE


@pytest.mark.parametrize("host, auth, exposed", [
    ("0.0.0.0", False, True), ("::", False, True), ("192.168.1.20", False, True), ("monitor.lan", False, True),
    ("0.0.0.0", True, False), ("127.0.0.1", False, False), ("127.8.9.10", False, False), ("::1", False, False),
    ("localhost", False, False), ("LOCALHOST", False, False),
])
def test_listening_beyond_loopback_without_auth_is_warned_about(host: str, auth: bool, exposed: bool) -> None:
    said = exposure_warning(host, 8080, auth)
    assert (said is not None) == exposed, said
    if exposed:
        assert "server.auth.mode none" in said and ("[::]:8080" if host == "::" else f"{host}:8080") in said


def test_no_warning_on_loopback(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    """The served daemon listens on 127.0.0.1 with auth off; a second start of its server logs no warning."""
    served.web.stop(5)
    with caplog.at_level(logging.WARNING, logger="monitor.web"):
        served.web.start()
    assert not [r for r in caplog.records if "server.auth.mode none" in r.getMessage()], caplog.text
    assert send(served.port, "GET", "/healthz").status == 200


# --------------------------------------------------------------------------------------------------- Chromium


FORMS = [   # (target, enctype): each submitted by its own attacker page, as a top-level navigation
    ("/api/cameras/{camera}/label?head=scene&class=cars", "application/x-www-form-urlencoded"),
    ("/api/heads/scene/retrain", "text/plain"),
    ("/api/cameras/{camera}/heatmap?on=true", "multipart/form-data"),
]
FETCHES = ["/api/cameras/{camera}/label?head=scene&class=bottles", "/api/heads/scene/retrain",
           "/api/cameras/{camera}/heatmap?on=true"]
BEACONS = ["/api/cameras/{camera}/label?head=scene&class=cars"]
SENT_PER_SITE = len(FORMS) + len(FETCHES) + len(BEACONS)


class AttackSite:
    """Another origin's pages aimed at the daemon at `target` (a base URL): /form/<i> submits FORMS[i] when it
    has loaded; /scripts fires FETCHES as no-cors POSTs with credentials and BEACONS, then titles itself 'sent'."""

    def __init__(self, ip: str, target: str, camera: str) -> None:
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                body = site.page(self.path).encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.target, self.camera = target, camera
        self.server = http.server.ThreadingHTTPServer((ip, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="attack-site", daemon=True)

    def url(self, name: str, path: str) -> str:
        return f"http://{name}:{self.server.server_address[1]}{path}"

    def page(self, path: str) -> str:
        t = self.target
        if m := re.fullmatch(r"/form/(\d+)", path):
            action, enctype = FORMS[int(m.group(1))]
            return (f'<!doctype html><title>win a prize</title><form id="f" method="post" enctype="{enctype}" '
                    f'action="{t}{action.format(camera=self.camera)}"><input name="a" value="b"></form>'
                    "<script>addEventListener('load', () => setTimeout(() => document.getElementById('f')"
                    ".submit(), 200));</script>")
        if path == "/scripts":
            fetches = ", ".join(json.dumps(t + f.format(camera=self.camera)) for f in FETCHES)
            beacons = ", ".join(json.dumps(t + b.format(camera=self.camera)) for b in BEACONS)
            return ("<!doctype html><title>loading</title><script>(async () => {"
                    f"for (const u of [{beacons}]) navigator.sendBeacon(u, 'head=scene&class=cars');"
                    f"await Promise.allSettled([{fetches}].map((u) => fetch(u, {{method: 'POST', mode: 'no-cors', "
                    "credentials: 'include', body: 'a=b'})));"
                    "document.title = 'sent'; })();</script>")
        return ""

    def __enter__(self) -> AttackSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def settled(page: Page, expression: str, timeout: float = 15.0) -> object:
    """Like Page.wait, through navigations (an evaluation in a document being replaced fails; try again)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = page.evaluate(expression)
        except ChromiumError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    return None


def refused_403(s: Served) -> float:
    return s.sample("monitor_http_requests_total", {"code": "403"})


def attack(browser: Browser, s: Served, site: AttackSite, name: str, daemon_origin: str) -> tuple[list[str], int]:
    """Every attack page of `site` (reached as `name`) in a new tab: what the tab showed after each form post, and
    how many requests the daemon refused with 403 meanwhile."""
    before = refused_403(s)
    landed = []
    page = browser.page("about:blank")
    for i in range(len(FORMS)):
        page.navigate(site.url(name, f"/form/{i}"))
        shown = settled(page, f"location.origin === {json.dumps(daemon_origin)} && document.readyState === "
                              "'complete' && document.body.innerText")
        assert shown, f"form {i} of {name} did not land on the daemon: {page.evaluate('location.href')}"
        landed.append(str(shown))
    page.navigate(site.url(name, "/scripts"))
    assert settled(page, "document.title === 'sent'"), ("the attack scripts did not finish",
                                                        page.evaluate("location.href + ' ' + document.title"),
                                                        page.errors())
    wait_until(lambda: refused_403(s) - before >= SENT_PER_SITE, 10)       # beacons are sent in the background
    time.sleep(0.3)
    page.send("Page.close")
    return landed, int(refused_403(s) - before)


def use_own_page(page: Page, s: Served, camera: str, retrain: bool) -> None:
    """Label a frame, toggle the heatmap and (once) retrain, by clicks on the daemon's own page."""
    card = f'article[data-camera="{camera}"]'
    assert page.wait(f"!!document.querySelector('{card} .label-row:not([hidden]) select')", 15), "no label controls"
    filed = s.app.custom.counts("scene").get("cars", 0)
    page.select(f"{card} select.label-class", "scene:cars")
    page.click(f"{card} button.label-save")
    assert wait_until(lambda: s.app.custom.counts("scene").get("cars", 0) == filed + 1, 10), "label refused"
    assert page.wait(f"document.querySelector('{card} .label-note').textContent.startsWith('saved as scene:cars')",
                     5), page.evaluate(f"document.querySelector('{card} .label-note').textContent")
    page.click(f"{card} input.heat-toggle")
    assert wait_until(lambda: s.app.heatmaps == {camera}, 5), s.app.heatmaps
    page.click(f"{card} input.heat-toggle")
    assert wait_until(lambda: not s.app.heatmaps, 5), s.app.heatmaps
    if retrain:
        page.click('#heads-list li[data-head="scene"] button.retrain')
        assert wait_until(lambda: s.app.custom.trainer.status("scene")["state"] != "idle", 5), "retrain refused"


@pytest.mark.parametrize("mode", ["basic", "none"])
def test_other_sites_cannot_change_state_from_a_logged_in_chromium(tmp_path: Path, demo_weights: Path,
                                                                  videos_dir: Path, backbone: str, mode: str) -> None:
    camera = "street"
    auth = {"mode": "basic", "username": USER} if mode == "basic" else {"mode": "none"}
    config = daemon_config(tmp_path, demo_weights, videos_dir, backbone, auth, camera)
    creds = f"{USER}:{PASSWORD}@" if mode == "basic" else ""
    with Served(config) as s, Browser(tmp_path, flags=(RESOLVER,)) as browser:
        port = s.port
        local, lan = f"http://127.0.0.1:{port}", f"http://monitor.test:{port}"
        # the owner's tabs: logged in (the browser caches the credentials for every later request to the origin)
        own = {base: browser.page(base.replace("//", f"//{creds}") + "/") for base in (local, lan)}
        for page in own.values():
            assert page.wait("document.getElementById('conn').dataset.state === 'ok'", 10), "page not live"
        assert state(s) == PRISTINE

        # another port on the same machine (same site), another site (Sec-Fetch-Site: cross-site), and a site
        # over plain HTTP names, where Chromium sends no Sec-Fetch-* and only Origin tells
        with AttackSite("127.0.0.1", local, camera) as same_site, AttackSite("127.0.0.2", local, camera) as other, \
                AttackSite("127.0.0.1", lan, camera) as lan_site:
            shown = []
            for site, name, origin in ((same_site, "127.0.0.1", local), (other, "127.0.0.2", local),
                                       (lan_site, "evil.test", lan)):
                landed, refused = attack(browser, s, site, name, origin)
                assert state(s) == PRISTINE, (name, state(s))
                # every request reached the daemon and was refused there: nothing lost on the way
                assert refused == SENT_PER_SITE, (name, refused)
                shown += landed
        assert all("cross-site request refused" in text for text in shown), shown

        # a rebinding page arrives with its own name in Host: refused before auth, on every route it tries
        rebound = browser.page(f"http://rebind.test:{port}/api/status")
        text = rebound.evaluate("document.body.innerText")
        assert "is not served here" in text and "rebind.test" in text, text
        a = send(port, "GET", "/api/status", host=f"rebind.test:{port}")
        assert a.status == 421 and "www-authenticate" not in a.headers, a
        a = send(port, "POST", "/api/heads/scene/retrain", [("Origin", "http://evil.test")], host=f"127.0.0.1:{port}")
        assert a.status == 403 and "www-authenticate" not in a.headers, a       # refused before auth, too
        assert state(s) == PRISTINE

        # the daemon's own page still does all of it: with Sec-Fetch-Site (127.0.0.1) and with Origin only
        use_own_page(own[local], s, camera, retrain=False)
        use_own_page(own[lan], s, camera, retrain=True)
        assert s.app.custom.counts("scene")["cars"] == 2
        for page in own.values():
            assert page.errors() == [], page.errors()
        print(f"\nauth {mode}: {3 * SENT_PER_SITE} requests from 3 other origins refused with 403, "
              f"the daemon's own page labelled, toggled and retrained")
