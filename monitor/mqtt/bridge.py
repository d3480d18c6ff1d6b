"""MqttBridge: the MQTT stage assembled (client, publisher, enabled control, Home Assistant discovery).

The daemon owns one bridge when `mqtt:` is configured: start() after the alert sinks, stop() before them (it
only reads the pipeline), update() on reload. The alert sinks feed events through `on_event` (a listener of
SinkSet, so a slow broker can only fill that sink's bounded queue).

Stale discovery configs: the config topics we announce are recorded in the daemon's state directory
(record.DiscoveryRecord, `<events db>-discovery.json`); at start every recorded one we no longer announce (a
camera or rule removed while we were stopped) is cleared with an empty retained payload, a reload clears what it
removed directly. Only topics of our own unique-id scheme (discovery.owned_config_topic) that this daemon
announced are ever cleared: nothing read from the broker can add one. `<prefix>/discovery_index` still lists
them, retained, for people and tools; we never read it back (whoever could write it could have listed a
foreign device's config there).

Trust: `mqtt.control` (default off) decides whether `<prefix>/<camera>/enabled/set` is subscribed, the HA switch
announced and a paused set kept from earlier applied. Home Assistant's `online` is answered by at most one
re-publish per resync.RESYNC_INTERVAL, without the snapshots, with the current label and custom class states
(not retained: Home Assistant would read `unknown` until the next keepalive). Retained messages on the topics we
subscribe to (a command or an `online` left on the broker) are ignored: only live ones act.

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
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from monitor.mqtt.client import MqttClient
from monitor.mqtt.control import EnabledControl, PausedStore
from monitor.mqtt.discovery import discovery_configs, owned_config_topic
from monitor.mqtt.publisher import Publisher
from monitor.mqtt.record import DiscoveryRecord, discovery_record_path
from monitor.mqtt.resync import ResyncLimiter
from monitor.mqtt.topics import Topics

if TYPE_CHECKING:
    from monitor.alerts.event import Event
    from monitor.capture.camera import Camera
    from monitor.config.types import MqttConfig, RuleConfig
    from monitor.core.metrics import Metrics
    from monitor.inference.heads.headset import HeadSet
    from monitor.inference.results import ResultBoard
    from monitor.render.picture import EventPicture

log = logging.getLogger(__name__)


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
                 state_path: Path, language: str = "en", node: str | None = None,
                 node_name: str | None = None) -> None:
        self.cfg = cfg
        self.language = language          # labels.language: the display names in the label attributes and HA
        self.metrics = metrics
        self.topics = Topics(cfg.topic_prefix, node)    # node: a fleet node's own availability topic
        self.client = MqttClient(cfg, metrics, status_topic=self.topics.status)
        self.publisher = Publisher(self.client, self.topics, results, cameras, cfg.label_keepalive, language=language,
                                   before_poll=self._round, node=node_name)
        self._cameras = cameras
        self._pause = pause
        self.store = PausedStore(state_path)
        self.control = EnabledControl(self.store, lambda: list(cameras()), self._set_paused, self._echo_enabled)
        self.resyncs = ResyncLimiter(self._resync, metrics.mqtt_resyncs_suppressed)
        self.record = DiscoveryRecord(discovery_record_path(state_path), self._owned)
        self._previous: frozenset[str] | None = None  # the previous run's record (None: there was none)
        self._announced = False                       # the first announcement (which clears the previous run's)
        self._gauged: set[str] = set()                # cameras with a monitor_camera_paused series
        self._gauge_lock = threading.Lock()           # _set_paused runs on paho's thread and the reload thread
        self._names: list[str] = []
        self._rules: dict[str, list[str]] = {}
        self._heads: HeadSet | None = None
        self._custom: CustomSets = {}
        self._apply_lock = threading.Lock()           # _apply runs on the reload thread and the publisher's
        self._discovery: dict[str, str] = {}          # config topic -> payload (JSON) we publish

    @property
    def paused(self) -> frozenset[str]:
        """Cameras paused over MQTT; always none without mqtt.control (a paused set kept from earlier included)."""
        if not self.cfg.control:
            return frozenset()
        return self.store.paused & frozenset(self._names)

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self, cameras: Sequence[str], rules: Sequence[RuleConfig], heads: HeadSet | None = None) -> None:
        t = self.topics
        if self.cfg.control:
            self.client.subscribe(t.enabled_set_filter, self._on_enabled_set)
        if self.cfg.discovery_prefix:
            self.client.subscribe(f"{self.cfg.discovery_prefix}/status", self._on_ha_status)
            self._previous = self.record.load()
        self._apply(list(cameras), rules_by_camera(cameras, rules), heads)
        kept = self.store.paused & frozenset(self._names)
        if kept and self.cfg.control:
            log.warning("mqtt: cameras PAUSED (not classified, no alerts) since a previous run, as %s records: %s; "
                        "send ON to %s to resume", self.store.path, ", ".join(sorted(kept)),
                        t.enabled_set("<camera>"))
        elif kept:
            log.warning("mqtt: %s records paused cameras (%s) but mqtt.control is off: they are classified",
                        self.store.path, ", ".join(sorted(kept)))
        self._set_paused(self.paused)
        self.client.start()
        self.publisher.start()

    def stop(self, timeout: float = 1.5) -> None:
        self.publisher.stop(timeout=min(0.5, timeout / 3))
        self.client.stop(timeout=timeout * 2 / 3)

    def update(self, cameras: Sequence[str], rules: Sequence[RuleConfig], heads: HeadSet | None = None) -> None:
        """A reload: new entities published, removed ones cleared (discovery and retained state)."""
        self._apply(list(cameras), rules_by_camera(cameras, rules), heads)
        self._set_paused(self.paused)

    def on_event(self, kind: str, event: Event, picture: EventPicture | None) -> None:
        """SinkSet listener ("mqtt" sink): rule ON/OFF, the events JSON, the snapshot's bytes at a start."""
        self.publisher.on_event(kind, event, picture)

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
                self._echo_enabled(cam, cam not in self.paused)
            self._announce(custom)
        if removed or removed_pairs or removed_sets:
            log.info("mqtt: cleared removed entities: cameras %s, rules %s, custom classes %s", removed or "-",
                     ", ".join(f"{c}/{r}" for c, r in removed_pairs) or "-",
                     ", ".join(f"{c}/{n}" for c, n in removed_sets) or "-")

    def _owned(self, topic: str) -> bool:
        return bool(self.cfg.discovery_prefix) and owned_config_topic(topic, self.topics, self.cfg.discovery_prefix)

    def _announce(self, custom: CustomSets) -> None:
        """Discovery for self._names/_rules and `custom`: changed configs published, dropped ones cleared."""
        self._custom = custom
        dp = self.cfg.discovery_prefix
        if dp:
            configs = discovery_configs(self.topics, dp, self._names, self._rules, custom, control=self.cfg.control,
                                        language=self.language)
            new = {topic: json.dumps(payload) for topic, payload in configs.items()}
            gone = set(self._discovery.keys() - new.keys())
            if not self._announced:
                previous = self._previous_run(custom) - new.keys()
                if previous:
                    log.info("mqtt: clearing %d discovery configs a previous run announced and this one does not",
                             len(previous))
                gone |= previous
            for topic in sorted(gone):
                if self._owned(topic):          # all of them are: a second look costs nothing
                    self.client.retain(topic, b"")
            for topic, payload in new.items():
                if self._discovery.get(topic) != payload:
                    self.client.retain(topic, payload)
            self._discovery, self._announced = new, True
            self.record.save(new)
            self.client.retain(self.topics.discovery_index, json.dumps(sorted(new)))
        # after the discovery (one ordered queue): a result with new classes must not reach HA before the
        # options that allow it
        self.publisher.set_custom(custom)

    def _previous_run(self, custom: CustomSets) -> frozenset[str]:
        """The configs the previous run announced: its record; without one (the first run of a version that
        keeps it), the `enabled` switches an earlier version announced for these cameras, ours by construction."""
        if self._previous is not None:
            return self._previous
        if self.cfg.control or not self._names:
            return frozenset()
        with_control = discovery_configs(self.topics, self.cfg.discovery_prefix, self._names, self._rules, custom)
        return frozenset(t for t in with_control if t.startswith(f"{self.cfg.discovery_prefix}/switch/"))

    def _round(self) -> None:
        """Start of every publisher round (mqtt-publisher thread): a coalesced resync due, heads swapped."""
        self.resyncs.poll()
        self._follow_heads()

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

    def _set_paused(self, names: frozenset[str]) -> None:
        """Apply the paused set to the pipeline and to monitor_camera_paused{camera} (1/0 per camera)."""
        self._pause(names)
        with self._gauge_lock:
            current = set(self._names)
            for cam in self._gauged - current:
                try:
                    self.metrics.camera_paused.remove(cam)
                except KeyError:
                    pass
            for cam in current:
                self.metrics.camera_paused.labels(cam).set(1 if cam in names else 0)
            self._gauged = current

    def _echo_enabled(self, camera: str, enabled: bool) -> None:
        self.client.retain(self.topics.enabled_state(camera), "ON" if enabled else "OFF")

    def _on_enabled_set(self, topic: str, payload: bytes) -> None:
        self.control.handle(self.topics.camera_of_enabled_set(topic), payload, topic)

    def _resync(self) -> None:
        """Home Assistant is online (ResyncLimiter: at most once per interval): the retained values (discovery
        included) again, and the current label and custom class states, which the broker does not keep."""
        self.client.resync()
        self.publisher.resend_states()

    def _on_ha_status(self, topic: str, payload: bytes) -> None:
        word = payload.strip().lower()
        if word == b"online":
            self.resyncs.request(f"via MQTT topic {topic}")
        elif word == b"offline":
            self.resyncs.offline()
