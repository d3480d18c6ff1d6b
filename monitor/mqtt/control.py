"""Control over MQTT: `<prefix>/<camera>/enabled/set` ON/OFF pauses or resumes classifying that camera, only
with `mqtt.control: true` (the bridge neither subscribes nor applies a kept paused set without it).

The paused set is persisted in a small JSON file next to the event database, written atomically (temp file,
fsync, rename), so it survives a restart and a crash. Commands arrive on paho's network thread: handling one is
a set update, a file write of a few bytes and an enqueued echo on `<prefix>/<camera>/enabled/state`.

A pause stops the camera's alerts without any error anywhere, so it is logged at WARNING with where it came
from: MQTT (v3.1.1 and v5 alike) tells a subscriber the topic but never who published, so the origin is the
topic, and the broker's ACL (systemd/mosquitto-acl.example) is what decides who can write it.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from monitor.mqtt.record import write_json_atomic

log = logging.getLogger(__name__)

_MAX_COMMAND = 16                # bytes: "ON" / "OFF" with some slack; anything longer is not a command
_WARN_EVERY = 10.0               # seconds between warnings about bad commands (a flood must not flood the log)


class PausedStore:
    """The set of paused camera names, loaded from and saved to `path` (JSON: {"paused": [names]})."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._paused: set[str] = set()
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            names = data.get("paused", []) if isinstance(data, dict) else []
            self._paused = {n for n in names if isinstance(n, str)}
        except FileNotFoundError:
            self._paused = set()
        except (OSError, ValueError) as exc:
            log.warning("mqtt: cannot read the paused cameras from %s (%s); starting with none paused",
                        self.path, exc)
            self._paused = set()

    @property
    def paused(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._paused)

    def set_enabled(self, camera: str, enabled: bool) -> bool:
        """Record the camera's state; True if it changed (and was saved)."""
        with self._lock:
            if (camera not in self._paused) == enabled:
                return False
            if enabled:
                self._paused.discard(camera)
            else:
                self._paused.add(camera)
            self._save(sorted(self._paused))
        return True

    def _save(self, names: list[str]) -> None:
        try:
            write_json_atomic(self.path, {"paused": names})
        except OSError as exc:
            log.error("mqtt: cannot save the paused cameras to %s (%s); the change holds until restart",
                      self.path, exc)


def parse_switch(payload: bytes) -> bool | None:
    """b"ON" -> True, b"OFF" -> False (case and surrounding blanks ignored); None for anything else."""
    if len(payload) > _MAX_COMMAND:
        return None
    text = payload.decode("utf-8", "replace").strip().upper()
    return {"ON": True, "OFF": False}.get(text)


class EnabledControl:
    """Applies enabled/set commands: the store, then `apply(paused names)`, then `echo(camera, enabled)`."""

    def __init__(self, store: PausedStore, cameras: Callable[[], Iterable[str]],
                 apply: Callable[[frozenset[str]], None], echo: Callable[[str, bool], None]) -> None:
        self.store = store
        self._cameras = cameras
        self._apply = apply
        self._echo = echo
        self._last_warning = float("-inf")

    def handle(self, camera: str | None, payload: bytes, topic: str) -> None:
        """One command received on `topic` (the origin the log names)."""
        known = set(self._cameras())
        if camera is None or camera not in known:
            self._warn("mqtt: enabled/set for unknown camera %r ignored (cameras: %s)", camera,
                       ", ".join(sorted(known)) or "none")
            return
        enabled = parse_switch(payload)
        if enabled is None:
            self._warn("mqtt: enabled/set for camera %r: payload must be ON or OFF (got %r); ignored", camera,
                       payload[:_MAX_COMMAND])
            return
        if self.store.set_enabled(camera, enabled):
            if enabled:
                log.info("mqtt: camera %s resumed (classified again) by ON via MQTT topic %s", camera, topic)
            else:
                log.warning("mqtt: camera %s PAUSED (not classified, no alerts) by OFF via MQTT topic %s; kept "
                            "across restarts in %s until ON", camera, topic, self.store.path)
        self._apply(self.store.paused & known)
        self._echo(camera, enabled)

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            log.warning(message, *args)
