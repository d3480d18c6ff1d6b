"""Home Assistant MQTT discovery payloads: one HA device per camera, its entities fed by our topics.

Follows https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery (and the shape of Viseron's
components/mqtt/homeassistant): config topic `<discovery_prefix>/<component>/<unique_id>/config`, `unique_id`,
a `device` block with `identifiers`, `origin`, and `availability` on `<prefix>/status` (online/offline, the
last will).

Entity ids: the same `<domain>.<node id>_<camera>_<key>` on every supported Home Assistant (2024.3 and later),
so that two daemons (two node ids) never get `_2` ids. Home Assistant reads a suggested entity id from one of two
keys and ignores the other, without a word in its log, so we send both:
- `object_id` (`<slug>`): read up to 2026.3; from 2025.10 deprecated, `default_entity_id` wins when both are
  there; from 2026.4 (HA PR #164460) it is ignored, and discovery does not fail on it;
- `default_entity_id` (`<domain>.<slug>`): read from 2025.10 (HA PR #151775); older versions drop it.
Home Assistant uses either only when it first creates an entity: an entity already in its registry keeps its id.

Enum `options` (custom class sensors) reach Home Assistant from 2024.9 (HA PR #123248): older versions drop the
key and show the enum sensor with its states but no option list. No other key an older version reads carries
them, so this is documented, not worked around.

Every unique id starts with the node id (object_id(topic_prefix)) and `_`: `owned_config_topic` tells whether a
topic is one of that shape, the only ones the daemon ever clears.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

from monitor import __version__
from monitor.mqtt.topics import Topics

ORIGIN = {"name": "monitor", "sw_version": __version__}
RULE_DEVICE_CLASS = "occupancy"      # "on means detected": what a watch-list rule reports for its classes
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")
COMPONENTS = ("sensor", "binary_sensor", "camera", "switch")     # the components we announce


def object_id(*parts: str) -> str:
    """A discovery object id / unique id from names: [A-Za-z0-9_-] only, other characters hex-escaped so that
    two different names never share an id ("a.b" -> "a_2e_b")."""
    return "_".join(_NOT_ID.sub(lambda m: f"_{ord(m.group(0)):x}_", p) for p in parts)


def _entity_slug(uid: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", uid.lower()).strip("_")


def owned_config_topic(topic: str, topics: Topics, discovery_prefix: str) -> bool:
    """True for `<discovery_prefix>/<one of COMPONENTS>/<node id>_<id>/config`: a topic of our unique-id scheme.
    Necessary, not sufficient, for it to be ours (a foreign id may start the same way): the bridge clears only
    topics that also are in its own record of what it announced."""
    head = f"{discovery_prefix}/"
    if not topic.startswith(head) or not topic.endswith("/config"):
        return False
    parts = topic[len(head):-len("/config")].split("/")
    node = object_id(topics.prefix)
    return (len(parts) == 2 and parts[0] in COMPONENTS and parts[1].startswith(f"{node}_")
            and len(parts[1]) > len(node) + 1 and not _NOT_ID.search(parts[1]))


def discovery_configs(topics: Topics, discovery_prefix: str, cameras: Sequence[str],
                      rules_by_camera: Mapping[str, Iterable[str]],
                      custom_by_camera: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
                      control: bool = True, language: str = "en") -> dict[str, dict]:
    """{config topic: payload} for every entity of every camera; rules_by_camera lists the watched rules,
    custom_by_camera the custom class sets running on each camera ({set name: its classes}); the `enabled`
    switch only with `control` (mqtt.control: without it nobody listens to its command topic)."""
    node = object_id(topics.prefix)
    availability = [{"topic": topics.status, "payload_available": "online", "payload_not_available": "offline"}]
    out: dict[str, dict] = {}

    def add(component: str, camera: str, key: str, payload: dict) -> None:
        uid = object_id(node, camera, key)
        out[f"{discovery_prefix}/{component}/{uid}/config"] = {
            "unique_id": uid,
            "object_id": _entity_slug(uid),                              # Home Assistant < 2025.10
            "default_entity_id": f"{component}.{_entity_slug(uid)}",      # Home Assistant >= 2025.10
            **payload,
            "availability": availability,
            "availability_mode": "all",
            "device": {
                "identifiers": [object_id(node, camera)],
                "name": camera,
                "manufacturer": "monitor",
                "model": "camera classifier (ResNet-18, ImageNet-1k)",
                "sw_version": __version__,
            },
            "origin": dict(ORIGIN),       # a copy: a caller editing its payload must not change the others
        }

    for cam in cameras:
        label = {"state_topic": topics.label(cam)}
        if language != "en":    # HA's state is the display name from the attributes; the label topic stays English
            label = {"state_topic": topics.label_attributes(cam), "value_template": "{{ value_json.display }}"}
        add("sensor", cam, "label", {
            "name": "Label", "icon": "mdi:label-outline", **label,
            "json_attributes_topic": topics.label_attributes(cam)})
        add("binary_sensor", cam, "connected", {
            "name": "Connected", "device_class": "connectivity", "entity_category": "diagnostic",
            "state_topic": topics.state(cam), "payload_on": "up", "payload_off": "down",
            "json_attributes_topic": topics.state_attributes(cam)})
        add("camera", cam, "snapshot", {"name": "Snapshot", "topic": topics.snapshot(cam)})
        if control:
            add("switch", cam, "enabled", {
                "name": "Enabled", "icon": "mdi:cctv", "entity_category": "config",
                "command_topic": topics.enabled_set(cam), "state_topic": topics.enabled_state(cam),
                "payload_on": "ON", "payload_off": "OFF", "optimistic": False})
        for rule in rules_by_camera.get(cam, ()):
            add("binary_sensor", cam, f"rule_{rule}", {
                "name": rule, "device_class": RULE_DEVICE_CLASS,
                "state_topic": topics.rule(cam, rule), "payload_on": "ON", "payload_off": "OFF"})
        for name, classes in (custom_by_camera or {}).get(cam, {}).items():
            # An enum sensor: HA offers the classes in automations and history shows them as states. The
            # options are the head's classes, so a retrained head with other classes needs this payload again.
            # Home Assistant reads `options` from 2024.9; older ones drop it (the sensor still shows its states).
            add("sensor", cam, f"custom_{name}", {
                "name": name, "icon": "mdi:shape-outline", "device_class": "enum", "options": list(classes),
                "state_topic": topics.custom_label(cam, name),
                "json_attributes_topic": topics.custom_label_attributes(cam, name)})
    return out
