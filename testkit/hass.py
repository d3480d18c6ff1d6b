"""A real Home Assistant for tests: its own venv (cached), a config dir with a long-lived token made before the
first start, the process on 127.0.0.1, its REST API, and MQTT set up through HA's own config flow.

The venv: `~/.cache/monitor-ha-venv/<version>` (MONITOR_HA_VENV_CACHE overrides the folder), created with the
Python running the tests (HA 2024.3.x is the newest that runs on 3.11), with homeassistant and the requirements of
the integrations HA sets up by default (without the frontend's it starts in recovery mode) and of MQTT, so that HA
never runs pip itself (--skip-pip). Built under `<version>.tmp` and renamed when complete: an interrupted build
is started again, never used. It is run as `<venv>/bin/python -m homeassistant` (a renamed venv's scripts keep the
old path in their shebang).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
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
# The requirements of the integrations HA 2024.3.3 sets up by default (bootstrap.DEFAULT_INTEGRATIONS and what they
# depend on) and of mqtt, as their manifests pin them.
HA_REQUIREMENTS = (
    "Pillow==10.2.0 PyTurboJPEG==1.7.1 SQLAlchemy==2.0.27 aiodhcpwatcher==0.8.2 aiodiscover==1.6.1 "
    "aiohttp-fast-url-dispatcher==0.3.0 aiohttp-zlib-ng==0.3.1 aiohttp_cors==0.7.0 async-upnp-client==0.38.2 "
    "bleak-retry-connector==3.4.0 bleak==0.21.1 bluetooth-adapters==0.18.0 bluetooth-auto-recovery==1.3.0 "
    "bluetooth-data-tools==1.19.0 cached_ipaddress==0.3.0 dbus-fast==2.21.1 fnv-hash-fast==0.5.0 ha-ffmpeg==3.1.0 "
    "habluetooth==2.4.2 hass-nabucasa==0.78.0 hassil==1.6.1 home-assistant-frontend==20240307.0 "
    "home-assistant-intents==2024.3.12 ifaddr==0.2.0 janus==1.0.0 mutagen==1.47.0 paho-mqtt==1.6.1 "
    "psutil-home-assistant==0.0.1 pyserial==3.5 python-matter-server==5.7.0 pyudev==0.23.2 securetar==2024.2.1 "
    "sentry-sdk==1.40.3 webrtc-noise-gain==1.2.3 zeroconf==0.131.0 "
    "josepy<2"   # acme (hass-nabucasa) 2.8 needs josepy.ComparableX509, gone in josepy 2
).split()


def venv_cache() -> Path:
    return Path(os.environ.get("MONITOR_HA_VENV_CACHE", Path.home() / ".cache" / "monitor-ha-venv"))


def ha_venv(version: str = HA_VERSION, timeout: float = 900.0) -> tuple[Path, float]:
    """(the venv's python, seconds spent building it now: 0 when cached)."""
    final = venv_cache() / version
    python = final / "bin" / "python"
    if python.exists():
        return python, 0.0
    t0 = time.monotonic()
    tmp = final.with_name(f"{version}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, timeout=120)
    pip = [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + [f"homeassistant=={version}"], check=True, timeout=timeout)
    subprocess.run(pip + list(HA_REQUIREMENTS), check=True, timeout=timeout)
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
        self._out = open(self.dir / "stdout.log", "ab")
        self.proc = subprocess.Popen([str(self.python), "-m", "homeassistant", "-c", str(self.dir), "--skip-pip",
                                      "--log-no-color", "--ignore-os-check"], stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Home Assistant exited with {self.proc.returncode}:\n{self.tail()}")
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
