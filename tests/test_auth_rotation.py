"""Issue 17: a rotated password file applies on SIGHUP; failed logins are logged (rate-limited, never with the
secret) and one address guessing passwords is slowed down with 429 without locking out anyone else.

The rotation runs the real process (`python -m monitor run`, SIGHUP); the back-off runs a real server in this
process with requests from two loopback addresses (127.0.0.2 guesses, 127.0.0.1 is the owner).
"""
from __future__ import annotations

import base64
import http.client
import logging
import os
import re
import signal
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from monitor.config.loader import parse_config
from monitor.web import auth as auth_module
from monitor.web.auth import FAILURE_WINDOW, MAX_BLOCK, Authenticator
from testkit.process import DaemonProcess
from tests.webapp import Served, file_camera, make_config

START_TIMEOUT = 40.0
USER = "admin"
OLD = "old-Pässword 1"
NEW = "new-Secret#2"
MAX_FAILURES = 5


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def ask(port: int, path: str, headers: dict[str, str] | None = None, src: str = "127.0.0.1",
        ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(src, 0))
    try:
        conn.request("GET", path, headers={"Host": "127.0.0.1", **(headers or {})})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- rotation


def test_sighup_applies_a_rotated_password_file(tmp_path: Path, demo_weights: Path, videos_dir: Path,
                                                daemon_processes: list[DaemonProcess]) -> None:
    password = tmp_path / "password"
    write_atomically(password, OLD + "\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "server": {"port": 0, "auth": {"mode": "basic", "username": USER, "password_file": str(password)}},
        "model": {"weights": str(demo_weights)},
        "cameras": [{"name": "cars", "source": str(videos_dir / "car-detection.mp4"), "loop": True, "fps": 2}],
        "events": {"database": str(tmp_path / "events.db")},
        "logging": {"level": "info"},
    }, sort_keys=False))
    m = DaemonProcess(cfg)
    daemon_processes.append(m)
    running = m.started(START_TIMEOUT)
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", m.lines[running]).group(1))
    assert ask(port, "/api/status", basic(USER, OLD))[0] == 200
    assert ask(port, "/api/status", basic(USER, NEW))[0] == 401

    write_atomically(password, NEW + "\n")
    m.send(signal.SIGHUP)
    applied = m.wait_line(r"reload: server\.auth applied", 10, start=running)
    m.wait_line(r"reloaded config: ", 10, start=applied)
    assert ask(port, "/api/status", basic(USER, OLD))[0] == 401           # the old password stops working
    assert ask(port, "/api/status", basic(USER, NEW))[0] == 200
    assert ask(port, "/healthz")[0] == 200
    assert not any("need a restart" in line for line in m.lines[running:]), m.text

    # a rotation to an empty file is refused as a whole: the password in force keeps working
    write_atomically(password, "")
    m.send(signal.SIGHUP)
    m.wait_line(r"reload refused", 10, start=applied + 1)
    assert ask(port, "/api/status", basic(USER, NEW))[0] == 200
    m.send(signal.SIGTERM)
    assert m.wait(10) == 0, m.text
    assert OLD not in m.text and NEW not in m.text
    assert "Traceback" not in m.text


# ---------------------------------------------------------------------------------------------------- back-off


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path, demo_weights: Path) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("auth-backoff")
    (tmp / "password").write_text(NEW + "\n", encoding="utf-8")
    cfg = make_config(tmp, demo_weights, [file_camera(videos_dir, "cam1")], server={"auth": {
        "mode": "basic", "username": USER, "password_file": str(tmp / "password"), "max_failures": MAX_FAILURES}})
    with Served(cfg, start_daemon=False) as s:          # /api/status answers without cameras
        yield s


def test_guessing_from_one_address_gets_429_while_the_owner_elsewhere_logs_in(served: Served,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    port = served.port
    caplog.set_level(logging.DEBUG, logger="monitor.web")
    guesses = [f"guess-{i}-x9" for i in range(MAX_FAILURES)]
    for guess in guesses:
        assert ask(port, "/api/status", basic(USER, guess), src="127.0.0.2")[0] == 401
        assert ask(port, "/api/status", basic(USER, NEW))[0] == 200    # the owner, from 127.0.0.1, meanwhile
    status, headers, body = ask(port, "/api/status", basic(USER, NEW), src="127.0.0.2")
    assert status == 429, body                                        # even the right password, while blocked
    assert int(headers["retry-after"]) == FAILURE_WINDOW
    assert b"too many failed logins" in body
    assert ask(port, "/api/status", src="127.0.0.2")[0] == 429        # every protected path, with or without
    assert ask(port, "/healthz", src="127.0.0.2")[0] == 200           # health checks stay open
    # the owner, from another address, is not affected, nor is an anonymous client there
    assert ask(port, "/api/status", basic(USER, NEW))[0] == 200
    assert ask(port, "/api/status")[0] == 401
    assert served.sample("monitor_http_requests_total", {"code": "429"}) == 2

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    failed = [w for w in warnings if "failed login from 127.0.0.2" in w]
    assert len(failed) == 1, warnings                                 # one line a minute per address
    assert any(re.search(r"127\.0\.0\.2 refused for 60 s \(429\) after 5 failed logins", w) for w in warnings)
    assert not any("127.0.0.1" in w for w in warnings), warnings
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in guesses + [NEW]:
        assert secret not in text and base64.b64encode(f"{USER}:{secret}".encode()).decode() not in text


def test_a_request_without_credentials_is_a_challenge_not_a_failed_login(served: Served) -> None:
    for _ in range(3 * MAX_FAILURES):
        assert ask(served.port, "/api/status", src="127.0.0.3")[0] == 401
    assert ask(served.port, "/api/status", basic(USER, NEW), src="127.0.0.3")[0] == 200


# ---------------------------------------------------------------------------------------------------- the rules


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _authenticator(tmp_path: Path, clock: Clock, max_failures: int = 3) -> Authenticator:
    (tmp_path / "password").write_text(NEW + "\n", encoding="utf-8")
    cfg = parse_config({"server": {"auth": {"mode": "basic", "username": USER, "max_failures": max_failures,
                                            "password_file": str(tmp_path / "password")}},
                        "cameras": [{"name": "cam", "source": 0}]}, tmp_path)
    return Authenticator(cfg.server.auth, clock=clock)


def test_failed_login_lines_are_rate_limited_with_a_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    auth = _authenticator(tmp_path, clock, max_failures=0)
    caplog.set_level(logging.WARNING, logger="monitor.web")
    wrong = "Basic " + base64.b64encode(f"{USER}:nope-7".encode()).decode()
    for _ in range(40):
        assert not auth.check(wrong, "127.0.0.2")
        clock.now += 1                                 # 40 failures over 40 s
    clock.now += FAILURE_WINDOW
    assert not auth.check(wrong, "127.0.0.2")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "39 more like it from this client since its last line" in lines[1]
    assert "nope-7" not in "\n".join(lines)
    # many addresses cannot flood the log either: at most 20 lines a minute in all, the rest counted
    caplog.clear()
    clock.now += FAILURE_WINDOW
    for i in range(200):
        auth.check(wrong, f"10.0.{i // 250}.{i % 250}")
    assert len(caplog.records) == 20
    clock.now += FAILURE_WINDOW
    auth.check(wrong, "10.9.9.9")
    assert "180 lines about other clients held back" in caplog.records[-1].getMessage()


def test_blocks_double_and_a_success_clears_them(tmp_path: Path) -> None:
    clock = Clock()
    auth = _authenticator(tmp_path, clock)
    wrong = "Basic " + base64.b64encode(f"{USER}:nope".encode()).decode()
    right = "Basic " + base64.b64encode(f"{USER}:{NEW}".encode()).decode()
    seconds = []
    for _ in range(8):
        for _ in range(3):
            assert auth.blocked("192.0.2.7") == 0
            assert not auth.check(wrong, "192.0.2.7")
        seconds.append(auth.blocked("192.0.2.7"))
        clock.now += seconds[-1]
    assert seconds == [60, 120, 240, 480, 960, 1920, MAX_BLOCK, MAX_BLOCK]
    assert auth.blocked("192.0.2.8") == 0                       # another client
    assert auth.blocked("2001:db8::1") == 0
    for i in range(3):                                            # IPv6: one /64, whatever the address in it
        auth.check(wrong, f"2001:db8::{i + 1}")
    assert auth.blocked("2001:db8::ffff") == FAILURE_WINDOW
    # two failures, then the right password: the count starts again
    auth.check(wrong, "192.0.2.9")
    auth.check(wrong, "192.0.2.9")
    assert auth.check(right, "192.0.2.9")
    auth.check(wrong, "192.0.2.9")
    auth.check(wrong, "192.0.2.9")
    assert auth.blocked("192.0.2.9") == 0


def test_the_failure_table_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_module, "CLIENTS", 64)
    clock = Clock()
    auth = _authenticator(tmp_path, clock, max_failures=2)
    wrong = "Bearer x"
    for i in range(10_000):
        auth.check(wrong, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(auth._failures) == 64
    auth.check(wrong, "10.0.0.1")
    auth.check(wrong, "10.0.0.1")
    assert auth.blocked("10.0.0.1") == FAILURE_WINDOW            # the newest are the ones kept


def test_update_swaps_the_credentials_and_keeps_the_failures(tmp_path: Path) -> None:
    clock = Clock()
    auth = _authenticator(tmp_path, clock)
    old = "Basic " + base64.b64encode(f"{USER}:{NEW}".encode()).decode()
    for _ in range(3):
        auth.check("Basic " + base64.b64encode(b"admin:x").decode(), "192.0.2.1")
    (tmp_path / "password2").write_text("rotated\n", encoding="utf-8")
    cfg = parse_config({"server": {"auth": {"mode": "basic", "username": USER, "max_failures": 3,
                                            "password_file": str(tmp_path / "password2")}},
                        "cameras": [{"name": "cam", "source": 0}]}, tmp_path)
    auth.update(cfg.server.auth)
    assert not auth.check(old)
    assert auth.check("Basic " + base64.b64encode(f"{USER}:rotated".encode()).decode())
    assert auth.blocked("192.0.2.1") == FAILURE_WINDOW
