"""MqttBridge: the MQTT stage assembled (client, publisher, enabled control, Home Assistant discovery).

The daemon owns one bridge when `mqtt:` is configured: start() after the alert sinks, stop() before them (it
only reads the pipeline), update() on reload. The alert sinks feed events through `on_event` (a listener of
SinkSet, so a slow broker can only fill that sink's bounded queue).

Stale discovery configs: the configs we publish are listed, retained, on `<prefix>/discovery_index`. After every
connect we subscribe to it; the broker hands us the list a previous run left, and every config on it that we
no longer publish (a camera or rule removed while we were stopped) is cleared with an empty retained payload.
A reload clears what it removed directly.

Custom class sets (custom_classes): one enum sensor per camera and set, whose options are the head's classes. The
bridge holds the daemon's HeadSet and compares what it runs with what discovery announced at the start of every
publisher round, so a head retrained and swapped in with other classes (no reload involved) is announced again
before any of its results goes out.
"""
from __future__ import annotations

import json
import logging
import threading
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
    from monitor.inference.heads.headset import HeadSet
    from monitor.inference.results import ResultBoard

log = logging.getLogger(__name__)

_MAX_INDEX = 1 << 20           # bytes: a discovery index larger than this is not ours


def rules_by_camera(cameras: Sequence[str], rules: Sequence[RuleConfig]) -> dict[str, list[str]]:
    """camera -> names of the rules watching it (a rule without `cameras` watches all)."""
    return {cam: [r.name for r in rules if not r.cameras or cam in r.cameras] for cam in cameras}


CustomSets = dict[str, dict[str, tuple[str, ...]]]     # camera -> {custom class set: its classes}


def custom_by_camera(cameras: Sequence[str], heads: HeadSet | None) -> CustomSets:
    """camera -> {name: classes} of the custom class sets running on it (an entry without `cameras` runs on all)."""
    entries = heads.entries() if heads is not None else []
    return {cam: {e.name: tuple(e.head.classes) for e in entries if e.applies_to(cam)} for cam in cameras}


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
        self.publisher = Publisher(self.client, self.topics, results, cameras, cfg.label_keepalive, untrained,
                                   before_poll=self._follow_heads)
        self._cameras = cameras
        self._pause = pause
        self.store = PausedStore(state_path)
        self.control = EnabledControl(self.store, lambda: list(cameras()), pause, self._echo_enabled)
        self._names: list[str] = []
        self._rules: dict[str, list[str]] = {}
        self._heads: HeadSet | None = None
        self._custom: CustomSets = {}
        self._apply_lock = threading.Lock()           # _apply runs on the reload thread and the publisher's
        self._discovery: dict[str, str] = {}          # config topic -> payload (JSON) we publish

    @property
    def paused(self) -> frozenset[str]:
        return self.store.paused & frozenset(self._names)

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self, cameras: Sequence[str], rules: Sequence[RuleConfig], heads: HeadSet | None = None) -> None:
        t = self.topics
        self.client.subscribe(t.enabled_set_filter, self._on_enabled_set)
        if self.cfg.discovery_prefix:
            self.client.subscribe(t.discovery_index, self._on_discovery_index)
            self.client.subscribe(f"{self.cfg.discovery_prefix}/status", self._on_ha_status)
        self._apply(list(cameras), rules_by_camera(cameras, rules), heads)
        if self.paused:
            log.info("mqtt: cameras paused (from %s): %s", self.store.path, ", ".join(sorted(self.paused)))
        self._pause(self.paused)
        self.client.start()
        self.publisher.start()

    def stop(self, timeout: float = 1.5) -> None:
        self.publisher.stop(timeout=min(0.5, timeout / 3))
        self.client.stop(timeout=timeout * 2 / 3)

    def update(self, cameras: Sequence[str], rules: Sequence[RuleConfig], heads: HeadSet | None = None) -> None:
        """A reload: new entities published, removed ones cleared (discovery and retained state)."""
        self._apply(list(cameras), rules_by_camera(cameras, rules), heads)
        self._pause(self.paused)

    def on_event(self, kind: str, event: dict, image: np.ndarray | None,
                 predictions: Sequence[Prediction] = ()) -> None:
        self.publisher.on_event(kind, event, image, predictions)

    # -- internals ------------------------------------------------------------------------------------------

    def _apply(self, names: list[str], rules: dict[str, list[str]], heads: HeadSet | None) -> None:
        custom = custom_by_camera(names, heads)
        with self._apply_lock:
            self._heads = heads
            old_names, old_rules, old_custom = self._names, self._rules, self._custom
            removed = [c for c in old_names if c not in names]
            removed_pairs = [(c, r) for c in old_names for r in old_rules.get(c, ()) if r not in rules.get(c, ())]
            removed_sets = [(c, n) for c in old_names for n in old_custom.get(c, {}) if n not in custom.get(c, {})]
            self._names, self._rules = names, rules
            self.publisher.set_pairs((c, r) for c in names for r in rules.get(c, ()))  # first: no late ON/OFF ...
            self.publisher.forget(removed, removed_pairs)                            # ... after these clears
            for cam in names:
                self._echo_enabled(cam, cam not in self.store.paused)
            self._announce(custom)
        if removed or removed_pairs or removed_sets:
            log.info("mqtt: cleared removed entities: cameras %s, rules %s, custom classes %s", removed or "-",
                     ", ".join(f"{c}/{r}" for c, r in removed_pairs) or "-",
                     ", ".join(f"{c}/{n}" for c, n in removed_sets) or "-")

    def _announce(self, custom: CustomSets) -> None:
        """Discovery for self._names/_rules and `custom`: changed configs published, dropped ones cleared."""
        self._custom = custom
        if self.cfg.discovery_prefix:
            configs = discovery_configs(self.topics, self.cfg.discovery_prefix, self._names, self._rules, custom)
            new = {topic: json.dumps(payload) for topic, payload in configs.items()}
            for topic in self._discovery.keys() - new.keys():
                self.client.retain(topic, b"")
            for topic, payload in new.items():
                if self._discovery.get(topic) != payload:
                    self.client.retain(topic, payload)
            self._discovery = new
            self.client.retain(self.topics.discovery_index, json.dumps(sorted(new)))
        # after the discovery (one ordered queue): a result with new classes must not reach HA before the
        # options that allow it
        self.publisher.set_custom(custom)

    def _follow_heads(self) -> None:
        """Publisher round start: a head swapped in by a retrain with other classes gets its discovery again."""
        if custom_by_camera(self._names, self._heads) == self._custom:
            return
        with self._apply_lock:       # a reload may be applying its own view meanwhile: look again under the lock
            custom = custom_by_camera(self._names, self._heads)
            if custom == self._custom:
                return
            changed = sorted({n for c, sets in custom.items() for n, classes in sets.items()
                              if self._custom.get(c, {}).get(n) != classes})
            log.info("mqtt: classes of custom class set %s changed: re-publishing its discovery",
                     ", ".join(changed) or "-")
            self._announce(custom)

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
