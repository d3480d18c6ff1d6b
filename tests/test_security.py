"""Security of the HTTP port and of what the daemon writes: auth on every route and method, no secret anywhere.

Routes come from monitor.web.app.ROUTES, so a route added later is enumerated (and must be protected) too.
Secrets: the camera password inside an RTSP URL, and the HTTP password read from server.auth.password_file.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
import traceback
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.capture.camera import Camera
from monitor.config.loader import ConfigError, format_errors, parse_config
from monitor.capture.frames import FrameSourceError, video_frames
from monitor.core.logsetup import JsonFormatter, TextFormatter
from monitor.core.metrics import Metrics
from monitor.core.redact import redact_url
from monitor.web.app import ROUTES
from testkit.rtsp import free_port
from tests.test_fuzz_http import STANDARD_METHODS, Answer, all_route_paths, ask, exchange, tiny_image
from tests.webapp import Served, file_camera, make_config, wait_frames

USER = "admin"
PASSWORD = "Sesame-7f#Qx pässwört"          # the HTTP password (file content); non-ASCII, a space, a '#'
TOKEN = "tok-Zr8vW2qLx0-bearer"
RTSP_PASSWORD = "S3cretPass"
METHODS = STANDARD_METHODS + ("BREW",)      # every method HTTP defines, and one it does not
NO_SUCH_CAMERA = "no-such-cam"
# Handlers that answer 200 to an authenticated GET/HEAD of a sample path naming things that exist.
OK_WHEN_AUTHENTICATED = {"page", "static", "healthz", "readyz", "metrics", "status", "events", "event_snapshot",
                         "stream", "snapshot", "openapi"}


def quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def b64(text: str, encoding: str = "utf-8") -> str:
    return base64.b64encode(text.encode(encoding)).decode("ascii")


GOOD_BASIC = {"Authorization": f"Basic {b64(f'{USER}:{PASSWORD}')}"}
GOOD_BEARER = {"Authorization": f"Bearer {TOKEN}"}


def refused_basic() -> list[tuple[dict[str, str], str]]:
    """(headers, query) pairs that must not get past basic auth: nothing, wrong scheme, wrong password or user,
    empty, malformed base64, credentials in the query string or in other headers."""
    right = b64(f"{USER}:{PASSWORD}")
    auth = lambda v: ({"Authorization": v}, "")  # noqa: E731
    return [
        ({}, ""), auth(""), auth("Basic"), auth("Basic "), auth("   "),
        auth(f"Basic {b64(f'{USER}:wrong')}"), auth(f"Basic {b64(f'{USER}:{PASSWORD.upper()}')}"),
        auth(f"Basic {b64(f'{USER}:{PASSWORD}x')}"), auth(f"Basic {b64(f'{USER}:{PASSWORD[:-1]}')}"),
        auth(f"Basic {b64(f'{USER}:{PASSWORD}' + chr(10))}"), auth(f"Basic {b64(f'{USER}:')}"),
        auth(f"Basic {b64(f'root:{PASSWORD}')}"), auth(f"Basic {b64(f':{PASSWORD}')}"),
        auth(f"Basic {b64(f'Admin:{PASSWORD}')}"), auth(f"Basic {b64(f'{USER}{PASSWORD}')}"),    # no colon
        auth(f"Basic {b64(f'{USER}:{PASSWORD}', 'latin-1')}"),           # the same text, other bytes
        auth(f"Bearer {PASSWORD}"), auth(f"Bearer {right}"), auth(f"Digest username={USER}"),
        auth(f"Token {right}"), auth(f"Basicx {right}"), auth(f"{right}"), auth(f"Basic{right}"),
        auth("Basic !!!not-base64!!!"), auth(f"Basic {right[:-1]}"), auth(f"Basic {right}garbage"),
        auth(f"Basic {right[:10]} {right[10:]}"), auth(f"Basic {right}=="),
        ({}, f"token={quote(PASSWORD)}"), ({}, f"password={quote(PASSWORD)}&user={USER}"),
        ({}, f"auth={quote(right)}"), ({}, f"authorization=Basic%20{quote(right)}"),
        ({}, f"access_token={quote(right)}"), ({}, f"user={USER}:{quote(PASSWORD)}"),
        ({"Proxy-Authorization": f"Basic {right}"}, ""), ({"Cookie": f"auth={right}"}, ""),
        ({"X-Api-Key": PASSWORD}, ""), ({"X-Forwarded-User": USER, "X-Original-URL": "/healthz"}, ""),
    ]


def refused_bearer() -> list[tuple[dict[str, str], str]]:
    auth = lambda v: ({"Authorization": v}, "")  # noqa: E731
    return [
        ({}, ""), auth(""), auth("Bearer"), auth("Bearer "), auth(f"Bearer {TOKEN[:-1]}"), auth(f"Bearer {TOKEN}x"),
        auth(f"Bearer {TOKEN.upper()}"), auth(f"Basic {b64(f'x:{TOKEN}')}"), auth(f"Basic {b64(TOKEN)}"),
        auth(TOKEN), auth(f"Token {TOKEN}"), auth(f"Bearer{TOKEN}"), auth(f"Bearer {TOKEN} {TOKEN}"),
        auth(f"Bearer {b64(TOKEN)}"),
        ({}, f"access_token={TOKEN}"), ({}, f"token={TOKEN}"), ({}, f"bearer={TOKEN}"),
        ({}, f"authorization=Bearer%20{TOKEN}"),
        ({"Proxy-Authorization": f"Bearer {TOKEN}"}, ""), ({"Cookie": f"token={TOKEN}"}, ""),
        ({"X-Api-Key": TOKEN}, ""),
    ]


# ---------------------------------------------------------------------------------------------------- servers


def _served(tmp: Path, videos_dir: Path, weights: Path, auth: dict, cameras: list[dict] | None = None) -> Served:
    (tmp / "password").write_text(PASSWORD + "\n", encoding="utf-8")
    (tmp / "token").write_text(TOKEN + "\n", encoding="utf-8")
    # Thousands of wrong credentials from one address on purpose: no back-off (tests/test_auth_rotation.py).
    cfg = make_config(tmp, weights, cameras or [file_camera(videos_dir, "cam1")],
                      server={"auth": {"max_failures": 0, **auth}, "stream": {"width": 160}})
    return Served(cfg, wait=["cam1"], request_timeout=3.0, head_timeout=5.0)


def _add_event(served: Served, tmp: Path) -> int:
    snap = tmp / "event.jpg"
    snap.write_bytes(tiny_image(".jpg", 32, 24))
    return served.app.events.start_event("cam1", "r", "x", 0.5, time.time(), str(snap))


@pytest.fixture(scope="module")
def basic_served(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path,
                 demo_weights: Path) -> Iterator[tuple[Served, int]]:
    tmp = tmp_path_factory.mktemp("sec-basic")
    with _served(tmp, videos_dir, demo_weights, {"mode": "basic", "username": USER,
                                                 "password_file": str(tmp / "password"),
                                                 "protect_metrics": True}) as s:
        yield s, _add_event(s, tmp)


@pytest.fixture(scope="module")
def bearer_served(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path,
                  demo_weights: Path) -> Iterator[tuple[Served, int]]:
    tmp = tmp_path_factory.mktemp("sec-bearer")
    with _served(tmp, videos_dir, demo_weights, {"mode": "bearer", "token_file": str(tmp / "token"),
                                                 "protect_metrics": False}) as s:
        yield s, _add_event(s, tmp)


# ---------------------------------------------------------------------------------------------------- auth


def _expect_refused(a: Answer, method: str, challenge: str, what: Any) -> None:
    assert a.status == 401, (what, a)
    assert a.headers["www-authenticate"] == challenge, (what, a)
    if method == "HEAD":
        assert a.body == b"", (what, a)
    else:
        assert a.json() == {"error": "authentication required"}, (what, a)   # the same for every path: no oracle


def _check_all_routes(served: Served, event: int, good: dict[str, str], refused: list[tuple[dict[str, str], str]],
                      challenge: str, open_paths: set[str]) -> int:
    """Every route x every method x (no, wrong, right credentials). Returns the number of requests made."""
    port = served.port
    paths = all_route_paths(["app.js", "style.css", str(event), "cam1", NO_SUCH_CAMERA])
    assert {route.handler for route, _ in paths} == {route.handler for route in ROUTES}, "a route is not enumerated"
    jpeg = tiny_image(".jpg", 64, 48)
    upload = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n' + jpeg
              + b"\r\n--B--\r\n")
    unknown_method = ask(port, "BREW", "/no/such/path")
    n = 1
    for route, path in paths:
        for method in METHODS:
            allowed = method in route.methods
            is_open = path in open_paths
            for headers, query in refused:
                a = ask(port, method, f"{path}?{query}" if query else path, headers)
                n += 1
                what = (method, path, headers, query)
                if method not in STANDARD_METHODS:
                    # a method HTTP does not define is refused before any routing: nothing is served,
                    # and the answer is the same whether the path exists or not
                    assert a.status == 501 and a.body == unknown_method.body, (what, a)
                elif is_open:
                    assert a.status == (200 if allowed else 405), (what, a)
                else:
                    _expect_refused(a, method, challenge, what)
            # the right credentials: the route's own answer
            body, extra = b"", {}
            if route.handler == "classify":
                body, extra = upload, {"Content-Type": "multipart/form-data; boundary=B"}
            a = ask(port, method, path, {**good, **extra}, body)
            n += 1
            what = (method, path, "good credentials")
            if method not in STANDARD_METHODS:
                assert a.status == 501, (what, a)
            elif not allowed:
                assert a.status == 405 and a.headers["allow"] == ", ".join(route.methods), (what, a)
            elif route.handler in OK_WHEN_AUTHENTICATED or route.handler == "classify":
                group = (route.pattern.match(path).groups() or (None,))[0]
                exists = {"static": group in served.web.static, "stream": group in served.app.cameras,
                          "snapshot": group in served.app.cameras,
                          "event_snapshot": group == str(event)}.get(route.handler, True)
                assert a.status == (200 if exists else 404), (what, a)
            else:                                   # a route added after this test: at least not refused
                assert a.status not in (401, 403) and a.status < 500, (what, a)
    return n


def test_basic_auth_on_every_route_and_method(basic_served: tuple[Served, int]) -> None:
    served, event = basic_served
    t0 = time.monotonic()
    n = _check_all_routes(served, event, GOOD_BASIC, refused_basic(), 'Basic realm="monitor", charset="UTF-8"',
                          open_paths={"/healthz"})
    print(f"\nauth (basic): {n} requests over {len(ROUTES)} routes x {len(METHODS)} methods in "
          f"{time.monotonic() - t0:.1f} s")


def test_bearer_auth_on_every_route_and_method(bearer_served: tuple[Served, int]) -> None:
    served, event = bearer_served
    t0 = time.monotonic()
    n = _check_all_routes(served, event, GOOD_BEARER, refused_bearer(), 'Bearer realm="monitor"',
                          open_paths={"/healthz", "/metrics"})                  # protect_metrics: false
    print(f"\nauth (bearer): {n} requests in {time.monotonic() - t0:.1f} s")


@pytest.mark.parametrize("target", [
    "/%61pi/status", "/api/%73tatus", "//api/status", "/./api/status", "/api/./status", "/healthz/../api/status",
    "/healthz/%2e%2e/api/status", "/healthz%2f..%2fapi%2fstatus", "/metrics/../api/status", "/api/status/",
    "/API/STATUS", "/api/status;x", "/api/status%3f", "/api/status%23", "/healthz%00/../api/status",
    "http://127.0.0.1/api/status", "/healthz?/../api/status", "/healthz#/../api/status", "/api/status#",
    "/%2fapi/status", "/api//status", "/static/../api/status", "/stream/cam1.mjpg/../../api/status",
])
def test_path_tricks_do_not_bypass_auth(basic_served: tuple[Served, int], target: str) -> None:
    a = ask(basic_served[0].port, "GET", target)
    # refused, not found, or /healthz itself (open by design): never a protected document
    assert a.status in (401, 404) or (a.status == 200 and a.body == b"ok\n"), (target, a)


@settings(max_examples=150, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=80),
    st.builds(lambda u, p: f"Basic {b64(f'{u}:{p}')}", st.text(max_size=12), st.text(max_size=24)),
    st.tuples(st.integers(0, 200), st.sampled_from("ABCabc019+/=!-_ ")).map(
        lambda m: GOOD_BASIC["Authorization"][:m[0]] + m[1] + GOOD_BASIC["Authorization"][m[0] + 1:]),
    st.integers(0, 60).map(lambda k: GOOD_BASIC["Authorization"][:k]),
))
def test_basic_auth_refuses_any_other_header(basic_served: tuple[Served, int], value: str) -> None:
    """Random and mutated Authorization values: 200 only for those that decode to exactly user:password."""
    scheme, _, payload = value.strip().partition(" ")
    try:
        right = (scheme.lower() == "basic"
                 and base64.b64decode(payload.strip(), validate=True) == f"{USER}:{PASSWORD}".encode())
    except ValueError:
        right = False
    a = ask(basic_served[0].port, "GET", "/api/status", {"Authorization": value} if value.strip() else {})
    assert a.status == 200 if right else a.status == 401, (value, a)


@settings(max_examples=100, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60).map(lambda t: f"Bearer {t}"),
    st.tuples(st.integers(0, 40), st.sampled_from("ABCabc019-_ =")).map(
        lambda m: GOOD_BEARER["Authorization"][:m[0]] + m[1] + GOOD_BEARER["Authorization"][m[0] + 1:]),
))
def test_bearer_auth_refuses_any_other_token(bearer_served: tuple[Served, int], value: str) -> None:
    scheme, _, token = value.strip().partition(" ")
    right = scheme.lower() == "bearer" and token.strip() == TOKEN
    a = ask(bearer_served[0].port, "GET", "/api/status", {"Authorization": value})
    assert a.status == (200 if right else 401), (value, a)


# ---------------------------------------------------------------------------------------------------- no secrets


class _Capture(logging.Handler):
    """Everything logged, three ways: as the text formatter writes it, as the JSON formatter writes it, and raw
    (message, arguments, exception and stack text before any redaction)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.text = io.StringIO()
        self.json = io.StringIO()
        self.raw: list[str] = []
        self._text_fmt = TextFormatter()
        self._json_fmt = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.text.write(self._text_fmt.format(record) + "\n")
        self.json.write(self._json_fmt.format(record) + "\n")
        parts = [record.getMessage(), repr(record.args)]
        if record.exc_info:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
        if record.stack_info:
            parts.append(record.stack_info)
        parts += [repr(v) for k, v in vars(record).items() if k not in ("msg", "args", "exc_info", "exc_text")]
        self.raw.append("\n".join(parts))


def _forms(secret: str) -> list[str]:
    """The ways a secret could be spelled in output: as is, JSON-escaped, percent-encoded, in a basic header."""
    return sorted({secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret), urllib.parse.quote_plus(secret),
                   b64(f"{USER}:{secret}")})


def _assert_no_secret(where: str, text: str, secrets: list[str]) -> None:
    for secret in secrets:
        for form in _forms(secret):
            assert form not in text, f"secret {secret!r} (as {form!r}) appears in {where}"


def test_no_secret_in_logs_errors_api_metrics_page_or_exceptions(
        tmp_path: Path, videos_dir: Path, demo_weights: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A camera with credentials in its RTSP URL (nothing listens there) next to a working file camera, basic auth
    from a password file; the whole run logged at DEBUG in text and JSON. Neither password may appear in any
    log line, response (every route, every method, right and wrong credentials, errors), metric, or exception."""
    port = free_port()                                      # closed: the RTSP camera fails at every attempt
    rtsp = f"rtsp://{USER}:{RTSP_PASSWORD}@127.0.0.1:{port}/x"
    shown = f"rtsp://***@127.0.0.1:{port}/x"
    capture = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    thread_errors: list[str] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: thread_errors.append(
        "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))
    answers: list[bytes] = []
    try:
        served = _served(tmp_path, videos_dir, demo_weights,
                         {"mode": "basic", "username": USER, "password_file": str(tmp_path / "password"),
                          "protect_metrics": True},
                         cameras=[file_camera(videos_dir, "cam1"), {"name": "door", "source": rtsp, "fps": 2,
                                                                    "open_timeout": "2s", "read_timeout": "2s"}])
        with served:
            web_port = served.port
            event = _add_event(served, tmp_path)
            deadline = time.monotonic() + 15
            while served.app.cameras["door"].status()["state"] != "down" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert served.app.cameras["door"].status()["reason"].startswith(f"cannot open {shown}")
            wait_frames(served.app, ["cam1"])
            paths = [p for _, p in all_route_paths(["app.js", "style.css", str(event), "cam1", "door", "nope"])]
            paths += ["/api/events?camera=door", "/api/events?camera=door&limit=x", "/api/events?camera=d'o%22or",
                      "/nope", "/static/../x"]
            wrong = {"Authorization": f"Basic {b64(f'{USER}:{RTSP_PASSWORD}')}"}
            for path in paths:
                for method in METHODS:
                    for headers in ({}, GOOD_BASIC, wrong):
                        answers.append(ask(web_port, method, path, headers).raw)
            jpeg = tiny_image(".jpg", 64, 48)
            for body, ctype in ((jpeg, "image/jpeg"), (b"not an image", "image/jpeg"),
                                (b"--B\r\n", "multipart/form-data; boundary=B")):
                answers.append(ask(web_port, "POST", "/api/classify", {**GOOD_BASIC, "Content-Type": ctype}, body).raw)
            answers.append(exchange(web_port, b"GET /api/status HTTP/1.1\r\nAuthorization: " +
                                    GOOD_BASIC["Authorization"].encode() + b"\r\n\r\n").raw)
            status = json.loads(ask(web_port, "GET", "/api/status", GOOD_BASIC).body)
            door = next(c for c in status["cameras"] if c["name"] == "door")
            assert door["source"] == shown and door["reason"].startswith(f"cannot open {shown}")
            metrics = ask(web_port, "GET", "/metrics", GOOD_BASIC).body.decode()
            assert 'camera="door"' in metrics
        # the one-shot reader behind calibration_frames (`monitor weights` calibration from camera URLs)
        with pytest.raises(FrameSourceError) as info:
            list(video_frames(rtsp, 1))
        exception_text = "".join(traceback.format_exception(info.value)) + repr(info.value)
        assert shown in str(info.value)
    finally:
        threading.excepthook = old_hook
        root.removeHandler(capture)
        root.setLevel(old_level)
    out, err = capfd.readouterr()
    text_log, json_log = capture.text.getvalue(), capture.json.getvalue()
    # the capture saw the run: the camera failure (redacted) in both formats, the HTTP requests
    assert f"camera door: down: cannot open {shown}" in text_log
    assert any(json.loads(line)["msg"].startswith(f"camera door: down: cannot open {shown}")
               for line in json_log.splitlines())
    assert "GET /api/status" in text_log
    secrets = [RTSP_PASSWORD, PASSWORD]
    for where, text in [("the text log", text_log), ("the JSON log", json_log),
                        ("a log record (before formatting)", "\n".join(capture.raw)),
                        ("stdout", out), ("stderr (OpenCV, FFmpeg)", err), ("an uncaught thread exception",
                                                                            "\n".join(thread_errors)),
                        ("an exception", exception_text), ("/metrics", metrics), ("/api/status", json.dumps(status))]:
        _assert_no_secret(where, text, secrets)
    decoded_json = "\n".join(json.dumps(json.loads(line), ensure_ascii=False) for line in json_log.splitlines())
    _assert_no_secret("the JSON log (decoded)", decoded_json, secrets)
    for raw in answers:
        _assert_no_secret("an HTTP response", raw.decode("latin-1") + raw.decode("utf-8", "replace"), secrets)
    assert not thread_errors
    print(f"\nno secrets: {len(answers)} responses, {len(capture.raw)} log records (text + JSON), stdout/stderr "
          f"checked")


def test_a_long_request_line_logged_at_debug_does_not_stall_the_server(basic_served: tuple[Served, int]) -> None:
    """At debug level every request line is logged, and every log line goes through redact_url: an anonymous
    64 KiB request line must cost milliseconds there, not seconds under the logging lock (a backtracking regex
    took ~4 s per formatter for 64 KiB of letters)."""
    port = basic_served[0].port
    capture = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        line = b"GET /" + b"a" * 60000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        t0 = time.perf_counter()
        a = exchange(port, line).parse()
        took = time.perf_counter() - t0
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
    assert a.status == 401
    assert "a" * 60000 in capture.text.getvalue()               # it was logged, through both formatters
    print(f"\n64 KiB request line at debug level: answered in {took * 1000:.1f} ms")
    assert took < 1.0, took


# ---------------------------------------------------------------------------------------------------- redaction

_URL_CHARS = "".join(chr(c) for c in range(0x21, 0x7F))         # printable ASCII but the space


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(user=st.text(_URL_CHARS, min_size=1, max_size=12).filter(lambda u: not u.startswith("/")),
       password=st.text(_URL_CHARS + "äöü€", min_size=1, max_size=24),
       scheme=st.sampled_from(["rtsp", "rtsps", "http", "https"]),
       template=st.sampled_from(["{url}", "cannot open {url}", "camera door: down: cannot open {url} (retry)",
                                 "'{url}'", '"{url}"', "({url})", "{url}: cannot open video source",
                                 "source={url}, state=down", "[{url}]"]))
def test_redact_url_hides_any_user_and_password(user: str, password: str, scheme: str, template: str) -> None:
    """Whatever characters the credentials hold (a raw '/', '@', '#', '?', ':' or quote included: people paste
    passwords into URLs unencoded), nothing of them survives redact_url. (A user name that starts with '/' is
    read as one more slash of "scheme://": hidden all the same, but the expected text differs.)"""
    url = f"{scheme}://{user}:{password}@127.0.0.1:554/live"
    assert redact_url(template.format(url=url)) == template.format(url=f"{scheme}://***@127.0.0.1:554/live")


def test_camera_status_hides_a_password_with_a_slash() -> None:
    """The config accepts this URL (urlsplit reads 'admin:1234' as host and port); the camera shows its source in
    /api/status and in log lines: the password must not be there."""
    source = "rtsp://admin:1234/S3cret@127.0.0.1:554/live"
    cfg = parse_config({"model": {"weights": "/nonexistent.pt"}, "cameras": [{"name": "door", "source": source}]},
                       Path("/tmp"))
    camera = Camera(cfg.cameras[0], Metrics())
    assert camera.status()["source"] == "rtsp://***@127.0.0.1:554/live"


def test_json_log_lines_redact_extra_fields() -> None:
    """logging's `extra=` fields are written into JSON lines as they are: a URL there must be redacted too."""
    record = logging.LogRecord("monitor.capture.camera", logging.WARNING, __file__, 1, "camera %s: down", ("door",), None)
    record.source = f"rtsp://{USER}:{RTSP_PASSWORD}@10.0.0.5/live"
    record.sources = [f"rtsp://{USER}:{RTSP_PASSWORD}@10.0.0.6/live"]
    line = JsonFormatter().format(record)
    assert RTSP_PASSWORD not in line
    doc = json.loads(line)
    assert doc["source"] == "rtsp://***@10.0.0.5/live" and doc["msg"] == "camera door: down"
    assert "rtsp://***@10.0.0.6/live" in str(doc["sources"])


@pytest.mark.parametrize("source", [
    f"rtsp://{USER}:{RTSP_PASSWORD}@127.0.0.1:99999/x",          # port out of range
    f"rtsp://{USER}:{RTSP_PASSWORD}@[::1/x",                      # broken IPv6 literal
    f"rtsps://{USER}:{RTSP_PASSWORD}@/x",                         # no host
    f"rtmp://{USER}:{RTSP_PASSWORD}@127.0.0.1/x",                 # unknown scheme
    f"rtsp://{USER}:{RTSP_PASSWORD[:4]}/{RTSP_PASSWORD[4:]}@127.0.0.1/x",  # raw '/' in the password
])
def test_config_errors_do_not_show_camera_credentials(source: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"model": {"weights": "/nonexistent.pt"},
                      "cameras": [{"name": "door", "source": source, "fps": -1}]}, Path("/tmp"))
    text = format_errors(info.value, "config.yaml") + "".join(traceback.format_exception(info.value))
    for fragment in (RTSP_PASSWORD, RTSP_PASSWORD[:4], RTSP_PASSWORD[4:]):
        assert fragment not in text, text
