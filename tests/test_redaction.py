"""Secrets in URLs never reach the log, /api/status, MQTT, metrics or the page (issue 17).

- redact_url hides user:password (also holding '@', ':', '/', spaces) and the values of secret-like keys: query,
  fragment, `;` parameters, percent-encoded keys and separators, quoted keys, Authorization headers;
- webhook failures name the receiver as scheme://host:port only (its path is often the secret);
- FFmpeg's own log lines (OpenCV's and PyAV's copies of FFmpeg) never reach stderr or stdout;
- end to end: the daemon as a process, cameras with secrets in their URLs on both backends pointing at a port
  that refuses, one that hangs, one that serves garbage, a webhook with a token in its path, a real MQTT
  broker: no secret in stderr or stdout (text and JSON logs), /api/status, /metrics, the page or any retained
  MQTT message.
"""
from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.alerts.event import Event
from monitor.alerts.sinks import SinkSet
from monitor.capture.camera import Camera
from monitor.config.loader import ConfigError, parse_config
from monitor.config.types import AlertsConfig, WebhookConfig
from monitor.core.logsetup import JsonFormatter, TextFormatter
from monitor.core.metrics import Metrics
from monitor.core.redact import redact_url, url_origin
from testkit.faults import BadRtspServer, HangServer, HttpCloseServer
from testkit.mqtt import Mosquitto, retained_now
from testkit.process import REPO, DaemonProcess
from testkit.rtsp import free_port
from testkit.waiting import wait_until

START_TIMEOUT = 90.0        # interpreter, torch and the model on a busy 2-core machine


def forms(secret: str) -> set[str]:
    """How a secret could be spelled in output: as is, JSON-escaped, percent-encoded."""
    return {secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}


def assert_hidden(where: str, text: str, secrets: list[str]) -> None:
    for secret in secrets:
        for form in forms(secret):
            assert form not in text, f"secret {secret!r} (as {form!r}) appears in {where}:\n{text[-3000:]}"


# --------------------------------------------------------------------------------------------- redact_url

SECRET_KEYS = ["password", "Password", "PASSWD", "pass", "pwd", "PWD", "passwort", "loginpas", "token",
               "access_token", "refresh-token", "X-Amz-Security-Token", "key", "apikey", "api_key", "API-KEY",
               "secret", "client_secret", "auth", "authkey", "Authorization", "sig", "signature", "X-Amz-Signature",
               "credential", "credentials", "session", "sessionid", "PHPSESSID", "sid", "jwt", "p%61ssword",
               "api%5Fkey", "%70wd", "to%6Ben", "user[password]"]
HARMLESS = ["user=admin", "channel=1", "subtype=0", "resolution=1280x720", "stream=main"]
URL_TEMPLATES = [
    "http://127.0.0.1:8080/video.cgi?user=admin&{kv}&channel=1",
    "http://127.0.0.1:8080/video.cgi?{kv}",
    "https://cam.local/live#{kv}&state=1",
    "rtsp://127.0.0.1:554/live;{kv};channel=1",
    "rtsp://127.0.0.1:554/live?channel=1;{kv}",
    "http://127.0.0.1/a.cgi?user=admin&amp;{kv}",
]
TEXT_TEMPLATES = ["{url}", "cannot open {url}", "camera door: down: cannot open {url} (retry in 2 s)", "'{url}'",
                  '"{url}"', "({url})", "{url}: cannot open video source", "source={url}, state=down", "[{url}]",
                  "ValueError({url!r})", '{{"source": "{url}", "state": "down"}}', "{url}\nnext line"]
# What a secret value may hold: anything printable but the separators that end a parameter (& ; # space)
VALUE_CHARS = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in "&;#<>`\"'") + "äöü€"


@settings(max_examples=400, deadline=None, database=None, derandomize=True)
@given(key=st.sampled_from(SECRET_KEYS), value=st.text(VALUE_CHARS, min_size=4, max_size=24),
       url=st.sampled_from(URL_TEMPLATES), template=st.sampled_from(TEXT_TEMPLATES))
def test_values_of_secret_like_keys_are_hidden(key: str, value: str, url: str, template: str) -> None:
    value = "Zq" + value                     # never a piece of the surrounding text by chance
    full = url.format(kv=f"{key}={value}")
    text = template.format(url=full)
    shown = redact_url(text)
    assert value not in shown, (text, shown)
    if "@" not in value:            # else the "user:password@" rule hides up to that '@': hidden all the same
        assert f"{key}=***" in shown, shown
        for harmless in HARMLESS:
            if harmless in text:
                assert harmless in shown, (text, shown)


@pytest.mark.parametrize("text, expected", [
    ("http://cam/video.cgi?user=admin&pwd=S3cret", "http://cam/video.cgi?user=admin&pwd=***"),
    ("http://cam/v.cgi?PWD=S3cret&x=1", "http://cam/v.cgi?PWD=***&x=1"),
    ("https://h/cb#access_token=S3cret&expires_in=3600", "https://h/cb#access_token=***&expires_in=3600"),
    ("rtsp://h/live;password=S3cret;channel=1", "rtsp://h/live;password=***;channel=1"),
    ("http://h/x?p%61ssword=S3cret", "http://h/x?p%61ssword=***"),
    # a camera URL nested, percent-encoded, in another one's query (a proxy or a redirect target)
    ("http://proxy/?u=http%3A%2F%2Fcam%2Fv.cgi%3Fuser%3Dadmin%26pwd%3DS3cret%26ch%3D1",
     "http://proxy/?u=http%3A%2F%2Fcam%2Fv.cgi%3Fuser%3Dadmin%26pwd%3D***%26ch%3D1"),
    # FFmpeg and HTTP logs print the request line, no scheme
    ("GET /video.cgi?user=admin&pwd=S3cret HTTP/1.1", "GET /video.cgi?user=admin&pwd=*** HTTP/1.1"),
    ("Authorization: Basic YWRtaW46UzNjcmV0", "Authorization: Basic ***"),
    ("{'Authorization': 'Bearer S3cret', 'Accept': '*/*'}", "{'Authorization': '***', 'Accept': '*/*'}"),
    ('{"password": "S3 cret", "user": "admin"}', '{"password": "***", "user": "admin"}'),
    ('password="S3 cret" next', 'password="***" next'),
    # user:password@ with '@', ':' and '/' in the password, and with spaces
    ("rtsp://admin:p@ss:w0rd@10.0.0.1:554/live", "rtsp://***@10.0.0.1:554/live"),
    ("rtsp://admin:a/b@c@10.0.0.1/live?pwd=x1", "rtsp://***@10.0.0.1/live?pwd=***"),
    ("cannot open rtsp://admin:pa ss word@10.0.0.1:554/live (timeout)",
     "cannot open rtsp://***@10.0.0.1:554/live (timeout)"),
    ("cannot open rtsp://admin:p/a ss@10.0.0.1:554/live", "cannot open rtsp://***@10.0.0.1:554/live"),
    ("cannot open rtsp:admin:S3cret@cam/live", "cannot open rtsp:***@cam/live"),        # slashes forgotten
    # what must stay as it is
    ("mail ops:admin@example.com", "mail ops:admin@example.com"),
    ("camera door: up (640x480, rtsp://127.0.0.1:554/live, software decoding)",
     "camera door: up (640x480, rtsp://127.0.0.1:554/live, software decoding)"),
    ("ALERT start: event 5 camera=door rule=watch label=car score=0.912",
     "ALERT start: event 5 camera=door rule=watch label=car score=0.912"),
    ("http://cam/v.cgi?pwd=&channel=1", "http://cam/v.cgi?pwd=&channel=1"),
])
def test_redact_url_examples(text: str, expected: str) -> None:
    assert redact_url(text) == expected


_USERINFO_CHARS = "".join(chr(c) for c in range(0x21, 0x7F)) + " äöü€"


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(password=st.text(_USERINFO_CHARS, min_size=1, max_size=24),
       scheme=st.sampled_from(["rtsp", "rtsps", "http", "https"]),
       template=st.sampled_from(["{url}", "cannot open {url} (timeout)", "'{url}'", '"{url}"', "({url})",
                                 "source={url}, state=down"]))
def test_passwords_with_spaces_at_and_colons_are_hidden(password: str, scheme: str, template: str) -> None:
    """Passwords pasted into URLs unencoded: '@', ':', '/', '?', '#' and spaces included (the config accepts a
    space: urlsplit does not mind). The whole password never survives."""
    password = "Zq" + password.strip() + "9"
    text = template.format(url=f"{scheme}://admin:{password}@127.0.0.1:554/live")
    assert password not in redact_url(text), redact_url(text)


def test_json_log_lines_stay_valid_json_and_hide_query_secrets() -> None:
    """extra= fields are written into JSON lines as they are and redacted on the whole line: the hidden value
    ends at its closing quote, so the line stays valid JSON."""
    url = "http://127.0.0.1:81/video.cgi?user=admin&pwd=Zq-S3cret"
    record = logging.LogRecord("monitor.capture.camera", logging.WARNING, __file__, 1, "camera %s: down: %s",
                               ("door", f"cannot open {url}"), None)
    record.source = url
    record.sources = [url, "rtsp://cam/live;password=Zq-S3cret2"]
    line = JsonFormatter().format(record)
    assert "Zq-S3cret" not in line
    doc = json.loads(line)
    assert doc["source"] == "http://127.0.0.1:81/video.cgi?user=admin&pwd=***"
    assert doc["msg"] == "camera door: down: cannot open http://127.0.0.1:81/video.cgi?user=admin&pwd=***"
    assert doc["sources"][1] == "rtsp://cam/live;password=***"
    assert "Zq-S3cret" not in TextFormatter().format(record)


@pytest.mark.parametrize("shape", ["a", "a=", "pwd=", "pwd=x&", '"a": "', '"pass": "', "pwd='", "%3D", "pwd%3D",
                                   "rtsp://a:b ", "a@b ", "x://", "Authorization: "])
def test_redaction_is_linear_on_long_adversarial_lines(shape: str) -> None:
    """Every log line goes through redact_url under the logging lock: 64 KiB of any repeated shape must cost
    milliseconds (a quadratic pass takes tens of seconds here); the bound is 25x what it takes."""
    text = shape * (65536 // len(shape)) + "@"
    t0 = time.perf_counter()
    redact_url(text)
    took = time.perf_counter() - t0
    assert took < 1.0, (shape, took)


@pytest.mark.parametrize("url, origin", [
    ("https://hooks.slack.com/services/T0/B0/Zq-S3cret", "https://hooks.slack.com:443"),
    ("http://u:p@127.0.0.1:9000/api/webhook/Zq-S3cret?token=x", "http://127.0.0.1:9000"),
    ("http://[::1]:8123/api/webhook/x", "http://[::1]:8123"),
    ("HTTP://Example.COM/x", "http://example.com:80"),
    ("no url at all", "?"),
    ("http://[::1/x", "http://?"),
])
def test_url_origin(url: str, origin: str) -> None:
    assert url_origin(url) == origin


# --------------------------------------------------------------------------------------------- webhooks


def test_webhook_failures_log_only_scheme_host_and_port(caplog: pytest.LogCaptureFixture) -> None:
    """A webhook URL holding its token in the path and the query, failing three ways (refused, connection closed
    without an answer, a URL urllib refuses because of a space): the warning names scheme://host:port only."""
    secrets = ["Zq-PathToken", "Zq-QueryToken"]
    caplog.set_level(logging.WARNING, "monitor.alerts.sinks")
    refused = free_port()
    with HttpCloseServer() as closing:
        urls = [f"http://127.0.0.1:{refused}/services/T0/B0/{secrets[0]}?token={secrets[1]}",
                f"http://127.0.0.1:{closing.port}/api/webhook/{secrets[0]}?token={secrets[1]}",
                f"http://127.0.0.1:{refused}/api/webhook/{secrets[0]} x?token={secrets[1]}"]
        for url in urls:
            metrics = Metrics()
            sinks = SinkSet(AlertsConfig(webhook=WebhookConfig(url=url, timeout=2.0, retries=0)), metrics, None)
            sinks.start()
            try:
                sinks.emit("start", Event(id=1, camera="door", rule="r", label="car", score=0.9, peak_score=0.9,
                                          started_at=time.time()), None)
                assert wait_until(lambda: metrics.registry.get_sample_value(
                    "monitor_sink_failures_total", {"sink": "webhook"}) == 1, 10.0)
            finally:
                sinks.stop(2.0)
    logged = [r.getMessage() for r in caplog.records if "alert sink webhook" in r.getMessage()]
    assert len(logged) == 3, logged
    for line, url in zip(logged, urls):
        assert f"POST {url_origin(url)} for event 1" in line, line
        assert_hidden("a webhook failure", line, secrets)
        assert "/services/" not in line and "/api/webhook" not in line, line


# --------------------------------------------------------------------------------------------- FFmpeg's own log


def _ffmpeg_open(env: dict[str, str], url: str) -> subprocess.CompletedProcess:
    code = ("import monitor.capture.camera, cv2, sys; "
            "cap = cv2.VideoCapture(sys.argv[1], cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 2000]); "
            "print('opened', cap.isOpened(), file=sys.stderr)")
    return subprocess.run([sys.executable, "-c", code, url], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def test_opencv_ffmpeg_log_is_silenced_at_import_and_an_operator_can_turn_it_on() -> None:
    """OpenCV's FFmpeg prints "[tcp @ 0x...] Connection to ... failed" to stderr from C, past our formatter. The
    capture module sets OPENCV_FFMPEG_LOGLEVEL quiet before any open; exported by the operator, it wins (and
    the line shows up: proof that the setting is what silences it)."""
    url = f"http://127.0.0.1:{free_port()}/video.cgi?user=admin&pwd=Zq-S3cret"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_FFMPEG_")}
    quiet = _ffmpeg_open(env, url)
    assert "opened False" in quiet.stderr
    assert "Connection to" not in quiet.stderr + quiet.stdout and "@ 0x" not in quiet.stderr + quiet.stdout
    loud = _ffmpeg_open({**env, "OPENCV_FFMPEG_LOGLEVEL": "16"}, url)
    assert "Connection to tcp://127.0.0.1" in loud.stdout + loud.stderr, (loud.stdout, loud.stderr)


def test_pyav_keeps_ffmpeg_quiet_and_its_errors_redacted(capfd: pytest.CaptureFixture[str]) -> None:
    """PyAV: FFmpeg's log stays off (no line on stderr), and its exception text, which quotes the URL, is
    redacted before it becomes the capture's error."""
    import av

    from monitor.capture.pyav_capture import PyAVCapture
    secret = "Zq-S3cret"
    with BadRtspServer("noise") as noise:
        for url in (f"rtsp://admin:{secret}@127.0.0.1:{free_port()}/live?token={secret}2",
                    f"http://127.0.0.1:{free_port()}/video.cgi?user=admin&pwd={secret}",
                    f"rtsp://admin:{secret}@127.0.0.1:{noise.port}/live;password={secret}3"):
            cap = PyAVCapture(url, 2.0, 2.0)
            assert not cap.isOpened()
            assert cap.error and secret not in cap.error, cap.error
            assert "***" in cap.error, cap.error
    assert av.logging.get_level() is None
    out, err = capfd.readouterr()
    assert secret not in out + err and "@ 0x" not in err, err


@pytest.mark.parametrize("backend", ["opencv", "pyav"])
def test_camera_status_and_reason_hide_query_secrets(backend: str) -> None:
    secret = "Zq-S3cret"
    source = f"http://127.0.0.1:{free_port()}/video.cgi?user=admin&pwd={secret}&channel=1"
    cfg = parse_config({"model": {"weights": "/nonexistent.pt"},
                        "cameras": [{"name": "door", "source": source, "backend": backend, "open_timeout": "2s"}]},
                       Path("/tmp"))
    camera = Camera(cfg.cameras[0], Metrics())
    camera.start()
    try:
        assert wait_until(lambda: camera.status()["state"] == "down", 15.0)
        status = camera.status()
    finally:
        camera.stop(timeout=2.0)
    assert status["source"] == source.replace(secret, "***")
    assert status["reason"].startswith(f"cannot open {status['source']}"), status["reason"]
    assert_hidden("status()", json.dumps(status), [secret])


# --------------------------------------------------------------------------------------------- end to end


@pytest.fixture
def servers() -> Iterator[dict]:
    made = {"hang": HangServer().start(), "garbage": BadRtspServer("garbage").start(),
            "close": HttpCloseServer().start()}
    yield made
    for s in made.values():
        s.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(free_port(), tmp_path / "mosquitto").start()
    yield b
    b.kill()


def _stdout_to(path: Path, tmp: Path) -> str:
    """A python that writes its stdout to `path` (testkit.process discards the daemon's stdout; OpenCV's FFmpeg
    callback prints there)."""
    wrapper = tmp / "python-stdout"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\" > {path}\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return str(wrapper)


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode("utf-8", "replace")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_secret_from_camera_or_webhook_urls_anywhere(tmp_path: Path, demo_weights: Path, videos_dir: Path,
                                                        servers: dict, broker: Mosquitto, log_format: str) -> None:
    s = {name: f"Zq{name}-{i}x7" for i, name in enumerate(
        ["pwd", "token", "userinfo", "param", "auth", "encoded", "hookpath", "hookquery"])}
    refused = free_port()
    faulty = {
        "refused": f"http://127.0.0.1:{refused}/video.cgi?user=admin&pwd={s['pwd']}&channel=1",
        "hang": f"rtsp://127.0.0.1:{servers['hang'].port}/live?channel=1&token={s['token']}",
        "garbage": f"rtsp://admin:p@ss:{s['userinfo']}@127.0.0.1:{servers['garbage'].port}/stream;"
                   f"password={s['param']}",
        "close": f"http://127.0.0.1:{servers['close'].port}/cgi-bin/mjpg.cgi?Auth={s['auth']}&p%61ssword="
                 f"{s['encoded']}",
    }
    cameras = [{"name": "cars", "source": str(videos_dir / "car-detection.mp4"), "loop": True, "fps": 2}]
    for backend in ("opencv", "pyav"):
        for name, url in faulty.items():
            cameras.append({"name": f"{name}-{backend}", "source": url, "backend": backend, "fps": 2,
                            "open_timeout": "2s", "read_timeout": "2s"})
    hook = f"http://127.0.0.1:{free_port()}/api/webhook/{s['hookpath']}?token={s['hookquery']}"
    prefix = f"red{log_format}"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": 0},
        "model": {"weights": str(demo_weights), "threads": 1},
        "cameras": cameras,
        "watchlist": [{"name": "watch", "classes": ["car"], "min_score": 0.0, "min_frames": 1}],
        "alerts": {"snapshots": str(tmp_path / "snaps"), "webhook": {"url": hook, "timeout": 2, "retries": 0}},
        "events": {"database": str(tmp_path / "events.db")},
        "logging": {"level": "debug", "format": log_format},
        "mqtt": {"port": broker.port, "topic_prefix": prefix, "discovery_prefix": f"ha{prefix}",
                 "client_id": f"monitor-{prefix}"},
    }))
    stdout = tmp_path / "stdout.txt"
    proc = DaemonProcess(cfg, python=_stdout_to(stdout, tmp_path))
    try:
        line = proc.lines[proc.started(START_TIMEOUT)]
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))
        for cam in cameras[1:]:             # each one's URL was logged (garbage may decode a frame: "up" first)
            proc.wait_line(rf"camera {cam['name']}: (down|up)", 60)
        proc.wait_line(r"alert sink webhook: POST ", 60)
        status = _get(port, "/api/status")
        pages = {p: _get(port, p) for p in ("/", "/metrics", "/api/events")}
        retained = retained_now(broker.port, (f"{prefix}/#", f"ha{prefix}/#"))
    finally:
        proc.stop()
    err = proc.text
    out = stdout.read_text(errors="replace")
    secrets = list(s.values())
    assert_hidden("stderr (the log)", err, secrets)
    assert_hidden("stdout", out, secrets)
    assert_hidden("/api/status", status, secrets)
    for path, body in pages.items():
        assert_hidden(path, body, secrets)
    mqtt_text = "\n".join(f"{t} {m.payload.decode('utf-8', 'replace')}" for t, m in retained.items())
    assert_hidden("retained MQTT messages", mqtt_text, secrets)

    # it did show what it should, redacted: sources, reasons, the webhook's origin, MQTT attributes
    shown = {c["name"]: c for c in json.loads(status)["cameras"]}
    for backend in ("opencv", "pyav"):
        assert shown[f"refused-{backend}"]["source"].endswith("/video.cgi?user=admin&pwd=***&channel=1")
        assert shown[f"garbage-{backend}"]["source"].startswith("rtsp://***@127.0.0.1:")
        assert shown[f"close-{backend}"]["source"].endswith("mjpg.cgi?Auth=***&p%61ssword=***")
        attrs = retained[f"{prefix}/hang-{backend}/state/attributes"].json()
        assert attrs["camera_state"] in ("down", "connecting") and "token=***" in json.dumps(attrs), attrs
    assert f"POST {url_origin(hook)} for event" in err
    # FFmpeg's own lines ("[tcp @ 0x...]", "[h264 @ 0x...]") are not there; in JSON every line is JSON
    assert not re.search(r"^\[\w+ @ 0x[0-9a-f]+\]", err, re.M) and "[OPENCV:FFMPEG" not in err + out
    if log_format == "json":
        for line in proc.lines:
            json.loads(line)


@pytest.mark.parametrize("url", ["ftp://hooks.example/services/T0/B0/Zq-S3cret", "hooks.example/api/Zq-S3cret",
                                 "http://hooks.example:99999/api/webhook/Zq-S3cret?token=Zq-S3cret2"])
def test_config_errors_show_a_webhook_as_scheme_host_port(url: str) -> None:
    """A webhook URL's path is often its secret: a config error about it (printed at startup, in the journal)
    names scheme://host:port only."""
    with pytest.raises(ConfigError) as info:
        parse_config({"cameras": [{"name": "c", "source": "0"}], "alerts": {"webhook": {"url": url}}}, Path("/tmp"))
    (error,) = info.value.errors
    assert error.startswith("alerts.webhook.url: ") and "path and query not shown" in error, error
    assert_hidden("a config error", error, ["Zq-S3cret", "Zq-S3cret2"])


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_uncaught_exceptions_go_through_the_redacting_formatter(fmt: str) -> None:
    """Python prints an uncaught exception's traceback to stderr itself, past the formatter; after
    setup_logging it is a log record (redacted, one JSON object in JSON format), in a thread and in main."""
    code = ("import threading; from monitor.core.logsetup import setup_logging; import sys; "
            f"setup_logging('info', {fmt!r}); "
            "t = threading.Thread(target=lambda: (_ for _ in ()).throw(ValueError("
            "'cannot open rtsp://admin:Zq-S3cret@cam/live?pwd=Zq-S3cret2')), name='cam-door'); t.start(); t.join(); "
            "raise RuntimeError('http://cam/video.cgi?user=admin&pwd=Zq-S3cret3')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert_hidden("stderr", out.stderr + out.stdout, ["Zq-S3cret", "Zq-S3cret2", "Zq-S3cret3"])
    assert "uncaught exception in thread cam-door" in out.stderr and "pwd=***" in out.stderr, out.stderr
    if fmt == "json":
        docs = [json.loads(line) for line in out.stderr.splitlines()]
        assert [d["level"] for d in docs] == ["critical", "critical"] and "ValueError" in docs[0]["exc"], docs
