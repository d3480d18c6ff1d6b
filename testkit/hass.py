"""A real Home Assistant for tests: its own venv (cached), a config dir with a long-lived token made before the
first start, the process on 127.0.0.1, its REST API, and MQTT set up through HA's own config flow.

The venv: `~/.cache/monitor-ha-venv/<version>-py<XY>-<digest of the requirements>` (MONITOR_HA_VENV_CACHE
overrides the folder), created with the Python running the tests (HA 2024.3.x is the newest that runs on 3.11),
holding homeassistant and what HA imports when it sets up its default integrations (without the frontend's
requirements it starts in recovery mode) and MQTT, so that HA never runs pip itself (--skip-pip). uv installs it
(pip-installed once next to it); its download cache is uv's own (~/.cache/uv). Built under `<name>.tmp` and
renamed when complete: an interrupted build is started again, never used. It is run as
`<venv>/bin/python -m homeassistant` (a renamed venv's scripts keep the old path in their shebang).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HA_VERSION = "2024.3.3"
# What HA 2024.3.3 imports when it starts with its default integrations (bootstrap.DEFAULT_INTEGRATIONS: no
# `default_config:`, so no recorder, bluetooth, zeroconf, cloud ...), their `dependencies` and mqtt with the
# platforms of our entities, as the manifests pin them. HA runs with --skip-pip, so a requirement missing here
# fails the test loudly (an import error in its log, or recovery mode) instead of being installed at run time.
# The closure of those integrations' `dependencies` in HA's manifests has requirements in: backup, camera,
# file_upload, frontend (without it HA starts in recovery mode), hardware, http, image_upload (person), mqtt, network;
# and analytics (onboarding, frontend) imports recorder's module, hence recorder's requirements (not set up).
HA_REQUIREMENTS = (
    "securetar==2024.2.1 PyTurboJPEG==1.7.1 janus==1.0.0 home-assistant-frontend==20240307.0 "
    "psutil-home-assistant==0.0.1 aiohttp_cors==0.7.0 aiohttp-fast-url-dispatcher==0.3.0 aiohttp-zlib-ng==0.3.1 "
    "Pillow==10.2.0 paho-mqtt==1.6.1 ifaddr==0.2.0 SQLAlchemy==2.0.27 fnv-hash-fast==0.5.0 "
    "josepy<2"   # http imports hass-nabucasa, whose acme 2.8 needs josepy.ComparableX509, gone in josepy 2
).split()
# uv installs the venv: parallel downloads and one resolve, against pip's one wheel at a time (see ha_venv).
UV_VERSION = "0.13.9"
# Words in uv's or pip's error that mean no package index could be reached (then the test skips, not fails).
_OFFLINE = ("Failed to fetch", "error sending request", "dns error", "Connection refused", "Network is unreachable",
            "Temporary failure in name resolution", "NewConnectionError", "No matching distribution found",
            "Could not find a version", "timed out", "tcp connect error")


class IndexUnreachable(RuntimeError):
    """No package index answered while building the venv: the caller skips (a machine without network)."""


def venv_cache() -> Path:
    return Path(os.environ.get("MONITOR_HA_VENV_CACHE", Path.home() / ".cache" / "monitor-ha-venv"))


def venv_key(version: str = HA_VERSION) -> str:
    """The cached venv's folder name: HA's version, the Python it runs on and a digest of what is installed, so a
    changed requirement list builds a new venv instead of running a stale one."""
    digest = hashlib.sha256(" ".join([version, *HA_REQUIREMENTS]).encode()).hexdigest()[:8]
    return f"{version}-py{sys.version_info[0]}{sys.version_info[1]}-{digest}"


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        raise IndexUnreachable(f"{Path(cmd[0]).name} {cmd[1:3]} took over {timeout:g} s") from e
    if done.returncode != 0:
        err = (done.stderr or done.stdout).strip()
        tail = "\n".join(err.splitlines()[-8:])
        if any(word in err for word in _OFFLINE):
            raise IndexUnreachable(f"no package index reachable ({Path(cmd[0]).name} {cmd[1:3]}):\n{tail}")
        raise RuntimeError(f"{cmd[:4]} exited with {done.returncode}:\n{tail}")


def uv_binary(timeout: float = 180.0) -> Path:
    """uv `UV_VERSION`, pip-installed once into `<cache>/uv-<version>` (a wheel with the binary in it)."""
    target = venv_cache() / f"uv-{UV_VERSION}"
    uv = target / "bin" / "uv"
    if uv.exists():
        return uv
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    # --timeout/--retries: an index that does not answer is found out in about a minute, not pip's default 15
    _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-warn-script-location",
          "--timeout", "20", "--retries", "2", "--target", str(tmp), f"uv=={UV_VERSION}"], timeout)
    tmp.rename(target)
    return uv


def ha_venv(version: str = HA_VERSION, timeout: float = 600.0) -> tuple[Path, float]:
    """(the venv's python, seconds spent building it now: 0 when cached). IndexUnreachable when it has to be
    built and no package index answers.

    Built with uv (`uv pip install --python <venv python>`: parallel downloads, one resolve). With no cache of
    any kind, on the shared 2 cores: this venv 36-58 s with uv (uv's own install included) against 663 s with
    pip; the earlier, larger list (every requirement of HA's default integrations: bluetooth, matter, cloud ...)
    101 s with uv against 239-429 s with pip. uv keeps its download cache in its usual place (~/.cache/uv,
    UV_CACHE_DIR), so a new HA version or requirement list is built mostly from there."""
    final = venv_cache() / venv_key(version)
    python = final / "bin" / "python"
    if python.exists():
        return python, 0.0
    t0 = time.monotonic()
    uv = uv_binary(timeout)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # no pip in the venv: uv installs into it from outside, and HA runs with --skip-pip
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp)], check=True, timeout=120)
    # cwd: the venv, so that no uv.toml or pyproject.toml of the project around it configures uv
    _run([str(uv), "pip", "install", "-q", "--python", str(tmp / "bin" / "python"),
          f"homeassistant=={version}", *HA_REQUIREMENTS], timeout, cwd=tmp)
    tmp.rename(final)
    return python, time.monotonic() - t0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(key: str, claims: dict) -> str:
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + _b64(json.dumps(claims).encode())
    return head + "." + _b64(hmac.new(key.encode(), head.encode(), hashlib.sha256).digest())


def write_config(config_dir: Path, port: int) -> str:
    """A config dir for HA on 127.0.0.1:`port`, onboarded, with an owner and a long-lived access token in its auth
    storage (as HA's profile page would make it); returns the token."""
    storage = config_dir / ".storage"
    storage.mkdir(parents=True, exist_ok=True)
    (config_dir / "configuration.yaml").write_text(
        "homeassistant:\n  name: monitor-test\n  latitude: 0\n  longitude: 0\n  elevation: 0\n"
        "  unit_system: metric\n  time_zone: UTC\n  currency: EUR\n  country: DE\n"
        f"http:\n  server_host: 127.0.0.1\n  server_port: {port}\n"
        "logger:\n  default: info\n")
    user_id, token_id, jwt_key = secrets.token_hex(16), secrets.token_hex(16), secrets.token_hex(64)
    now = datetime.now(timezone.utc).isoformat()
    groups = [{"id": "system-admin", "name": "Administrators"}, {"id": "system-users", "name": "Users"},
              {"id": "system-read-only", "name": "Read Only"}]
    auth = {"version": 1, "minor_version": 1, "key": "auth", "data": {
        "users": [{"id": user_id, "group_ids": ["system-admin"], "is_owner": True, "is_active": True,
                   "name": "monitor-test", "system_generated": False, "local_only": False}],
        "groups": groups, "credentials": [],
        "refresh_tokens": [{"id": token_id, "user_id": user_id, "client_id": None, "client_name": "monitor-test",
                            "client_icon": None, "token_type": "long_lived_access_token", "created_at": now,
                            "access_token_expiration": 315360000.0, "token": secrets.token_hex(64),
                            "jwt_key": jwt_key, "last_used_at": None, "last_used_ip": None,
                            "credential_id": None, "version": HA_VERSION}]}}
    (storage / "auth").write_text(json.dumps(auth))
    (storage / "onboarding").write_text(json.dumps({"version": 4, "minor_version": 1, "key": "onboarding", "data": {
        "done": ["user", "core_config", "analytics", "integration"]}}))
    now_s = int(time.time())
    return _jwt(jwt_key, {"iss": token_id, "iat": now_s, "exp": now_s + 10 * 365 * 86400})


class HomeAssistant:
    """One HA process on 127.0.0.1:`port` with `config_dir`; its log in `<config_dir>/home-assistant.log`."""

    def __init__(self, python: Path, config_dir: Path, port: int, token: str) -> None:
        self.python, self.dir, self.port, self.token = python, config_dir, port, token
        self.log = config_dir / "home-assistant.log"
        self.proc: subprocess.Popen | None = None
        self._out = None

    def start(self, timeout: float = 240.0) -> float:
        """Start and wait until HA is RUNNING (not in recovery mode); returns the seconds it took."""
        t0 = time.monotonic()
        self._out = open(self.output, "ab")
        offset = self._out.tell()
        self.proc = subprocess.Popen([str(self.python), "-m", "homeassistant", "-c", str(self.dir), "--skip-pip",
                                      "--log-no-color", "--ignore-os-check"], stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Home Assistant exited with {self.proc.returncode}:\n{self.tail()}")
            failed = self.failed_setups(offset)
            if failed:      # a requirement missing from the venv: HA would hang in recovery or wait for it
                raise RuntimeError("Home Assistant could not set up an integration:\n" + "\n".join(failed))
            try:
                config = self.get("/api/config")
                if config.get("state") == "RUNNING":
                    if config.get("recovery_mode") or "recovery_mode" in config.get("components", []):
                        raise RuntimeError(f"Home Assistant started in recovery mode:\n{self.tail()}")
                    return time.monotonic() - t0
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"Home Assistant not running within {timeout:g} s:\n{self.tail()}")

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        if self._out is not None:
            self._out.close()
            self._out = None

    @property
    def output(self) -> Path:
        """HA's console output, every start of it appended (home-assistant.log keeps only the current and the
        previous start, and only warnings and errors); with the logger's default level info."""
        return self.dir / "stdout.log"

    def logged_at(self, pattern: str, since: float) -> float:
        """time.monotonic() of the first line of HA's output matching `pattern` and logged at or after `since`
        (a time.monotonic()); its timestamps are the wall clock, to the millisecond."""
        offset = time.time() - time.monotonic()
        for line in self.output.read_text(errors="replace").splitlines():
            stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ", line)
            if stamp and re.search(pattern, line):
                at = datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S.%f").timestamp() - offset
                if at >= since - 0.002:
                    return at
        raise LookupError(f"no line matching {pattern!r} in {self.output} since then:\n{self.tail()}")

    def failed_setups(self, offset: int = 0) -> list[str]:
        """The lines of HA's output (from byte `offset` on) saying an integration failed to set up."""
        with open(self.output, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        return [line for line in text.splitlines()
                if re.search(r"Setup failed for|Unable to (prepare|set up)|Error during setup|No module named", line)]

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def request(self, method: str, path: str, body: Any = None, timeout: float = 15.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read().decode()
        return json.loads(text) if text.strip().startswith(("{", "[")) else text

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def template(self, template: str) -> str:
        return self.post("/api/template", {"template": template})

    def states(self) -> dict[str, dict]:
        return {s["entity_id"]: s for s in self.get("/api/states")}

    def setup_mqtt(self, port: int) -> dict:
        """MQTT through HA's config flow (what a user does in the UI): broker 127.0.0.1:`port`."""
        flow = self.post("/api/config/config_entries/flow", {"handler": "mqtt", "show_advanced_options": False})
        result = self.post(f"/api/config/config_entries/flow/{flow['flow_id']}", {"broker": "127.0.0.1", "port": port})
        if result.get("type") != "create_entry":
            raise RuntimeError(f"MQTT config flow: {result}")
        return result
