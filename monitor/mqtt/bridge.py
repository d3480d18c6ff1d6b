"""MqttBridge: the MQTT stage assembled (client, publisher, enabled control, Home Assistant discovery).

The daemon owns one bridge when `mqtt:` is configured: start() after the alert sinks, stop() before them (it
only reads the pipeline), update() on reload. The alert sinks feed events through `on_event` (a listener of
SinkSet, so a slow broker can only fill that sink's bounded queue).

Stale discovery configs: the configs we publish are listed, retained, on `<prefix>/discovery_index`. After every
connect we subscribe to it; the broker hands us the list a previous run left, and every config on it that we
no longer publish (a camera or rule removed while we were stopped) is cleared with an empty retained payload.
A reload clears what it removed directly.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

from monitor.mqtt.client import MqttClient
from monitor.mqtt.control import EnabledControl, PausedStore
from monitor.mqtt.discovery import discovery_configs
from monitor.mqtt.publisher import Publisher
from monitor.mqtt.topics import Topics

if TYPE_CHECKING:
    import numpy as np

    from monitor.capture.camera import Camera
    from monitor.config.types import MqttConfig, RuleConfig
    from monitor.core.metrics import Metrics
    from monitor.inference.classifier import Prediction
    from monitor.inference.results import ResultBoard

log = logging.getLogger(__name__)

_MAX_INDEX = 1 << 20           # bytes: a discovery index larger than this is not ours


def rules_by_camera(cameras: Sequence[str], rules: Sequence[RuleConfig]) -> dict[str, list[str]]:
    """camera -> names of the rules watching it (a rule without `cameras` watches all)."""
    return {cam: [r.name for r in rules if not r.cameras or cam in r.cameras] for cam in cameras}


def paused_state_path(events_database: Path) -> Path:
    """Where the paused cameras are kept: next to the event database (the daemon's state directory)."""
    db = Path(events_database)
    return db.with_name(f"{db.stem}-paused.json")


class MqttBridge:
    def __init__(self, cfg: MqttConfig, metrics: Metrics, results: ResultBoard,
                 cameras: Callable[[], Mapping[str, Camera]], pause: Callable[[frozenset[str]], None],
                 state_path: Path, untrained: bool = False) -> None:
        self.cfg = cfg
        self.topics = Topics(cfg.topic_prefix)
        self.client = MqttClient(cfg, metrics)
        self.publisher = Publisher(self.client, self.topics, results, cameras, cfg.label_keepalive, untrained)
        self._cameras = cameras
        self._pause = pause
        self.store = PausedStore(state_path)
        self.control = EnabledControl(self.store, lambda: list(cameras()), pause, self._echo_enabled)
        self._names: list[str] = []
        self._rules: dict[str, list[str]] = {}
        self._discovery: dict[str, str] = {}          # config topic -> payload (JSON) we publish

    @property
    def paused(self) -> frozenset[str]:
        return self.store.paused & frozenset(self._names)

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self, cameras: Sequence[str], rules: Sequence[RuleConfig]) -> None:
        t = self.topics
        self.client.subscribe(t.enabled_set_filter, self._on_enabled_set)
        if self.cfg.discovery_prefix:
            self.client.subscribe(t.discovery_index, self._on_discovery_index)
            self.client.subscribe(f"{self.cfg.discovery_prefix}/status", self._on_ha_status)
        self._apply(list(cameras), rules_by_camera(cameras, rules))
        if self.paused:
            log.info("mqtt: cameras paused (from %s): %s", self.store.path, ", ".join(sorted(self.paused)))
        self._pause(self.paused)
        self.client.start()
        self.publisher.start()

    def stop(self, timeout: float = 1.5) -> None:
        self.publisher.stop(timeout=min(0.5, timeout / 3))
        self.client.stop(timeout=timeout * 2 / 3)

    def update(self, cameras: Sequence[str], rules: Sequence[RuleConfig]) -> None:
        """A reload: new entities published, removed ones cleared (discovery and retained state)."""
        self._apply(list(cameras), rules_by_camera(cameras, rules))
        self._pause(self.paused)

    def on_event(self, kind: str, event: dict, image: np.ndarray | None,
                 predictions: Sequence[Prediction] = ()) -> None:
        self.publisher.on_event(kind, event, image, predictions)

    # -- internals ------------------------------------------------------------------------------------------

    def _apply(self, names: list[str], rules: dict[str, list[str]]) -> None:
        old_names, old_rules = self._names, self._rules
        removed = [c for c in old_names if c not in names]
        removed_pairs = [(c, r) for c in old_names for r in old_rules.get(c, ()) if r not in rules.get(c, ())]
        self._names, self._rules = names, rules
        self.publisher.set_pairs((c, r) for c in names for r in rules.get(c, ()))   # first: no late ON/OFF ...
        self.publisher.forget(removed, removed_pairs)                             # ... after these clears
        for cam in names:
            self._echo_enabled(cam, cam not in self.store.paused)
        if self.cfg.discovery_prefix:
            configs = discovery_configs(self.topics, self.cfg.discovery_prefix, names, rules)
            new = {topic: json.dumps(payload) for topic, payload in configs.items()}
            for topic in self._discovery.keys() - new.keys():
                self.client.retain(topic, b"")
            for topic, payload in new.items():
                if self._discovery.get(topic) != payload:
                    self.client.retain(topic, payload)
            self._discovery = new
            self.client.retain(self.topics.discovery_index, json.dumps(sorted(new)))
        if removed or removed_pairs:
            log.info("mqtt: cleared removed entities: cameras %s, rules %s", removed or "-",
                     ", ".join(f"{c}/{r}" for c, r in removed_pairs) or "-")

    def _echo_enabled(self, camera: str, enabled: bool) -> None:
        self.client.retain(self.topics.enabled_state(camera), "ON" if enabled else "OFF")

    def _on_enabled_set(self, topic: str, payload: bytes) -> None:
        self.control.handle(self.topics.camera_of_enabled_set(topic), payload)

    def _on_ha_status(self, topic: str, payload: bytes) -> None:
        if payload.strip().lower() == b"online":
            log.info("mqtt: Home Assistant is online: re-publishing discovery and states")
            self.client.resync()

    def _on_discovery_index(self, topic: str, payload: bytes) -> None:
        """The index a previous run (or we) left: clear configs on it that we no longer publish."""
        if not payload or len(payload) > _MAX_INDEX:
            return
        try:
            listed = json.loads(payload)
        except ValueError:
            listed = None
        if not isinstance(listed, list):
            log.warning("mqtt: %s holds no list of topics; replacing it", topic)
            listed = []
        current = dict(self._discovery)
        prefix = f"{self.cfg.discovery_prefix}/"
        stale = [t for t in listed if isinstance(t, str) and t.startswith(prefix) and t.endswith("/config")
                 and t not in current]
        for t in stale:
            self.client.retain(t, b"")
        if stale:
            log.info("mqtt: cleared %d stale discovery configs of removed cameras/rules", len(stale))
        if sorted(current) != listed:
            self.client.retain(self.topics.discovery_index, json.dumps(sorted(current)))

    def camera_names(self) -> Iterable[str]:
        return list(self._names)
