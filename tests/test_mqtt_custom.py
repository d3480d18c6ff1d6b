"""MQTT topics and Home Assistant discovery for custom class sets (custom_classes), against a real mosquitto.

The daemon is the real one (cameras on a looping clip of a sample video, the demo model, heads on its pooled
features); a paho client subscribes as Home Assistant would and the tests assert what arrives: one enum sensor
per camera and set (options = the head's classes), the state and attributes topics, the discovery following a
head swapped in with other classes (a retrain), and a reload removing a set or a camera clearing its config.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from monitor.config.loader import parse_config
from monitor.config.types import Config
from monitor.daemon import Daemon
from monitor.inference.classifier import Classifier
from monitor.inference.heads import save_head
from monitor.inference.heads.head import Head
from monitor.mqtt.discovery import discovery_configs
from monitor.mqtt.topics import Topics
from testkit.faults import clip
from testkit.mqtt import Received, Subscriber, retained_now
from tests.test_mqtt import check_discovery

PORCH = ("none", "package")
DOOR = ("closed", "open", "ajar")


@pytest.fixture(scope="module")
def video(videos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clip(videos_dir / "car-detection.mp4", tmp_path_factory.mktemp("clip") / "cars-4s.mp4", 4)


@pytest.fixture(scope="module")
def backbone(demo_weights: Path) -> str:
    """The backbone identity the daemon's classifier reports for the demo weights (what a head must be trained on)."""
    return Classifier(demo_weights, threads=1).backbone_id


def random_head(name: str, classes: tuple[str, ...], sha: str, seed: int) -> Head:
    # Large weights: the argmax moves between frames, so labels change and every class shows up in the scores.
    rng = np.random.default_rng(seed)
    return Head(name, classes, (rng.normal(size=(len(classes), 512)) * 2.0).astype(np.float32),
                rng.normal(size=len(classes)).astype(np.float32), {"sha256": sha, "name": "demo"})


def config(tmp: Path, weights: Path, video: Path, heads: dict[str, Path], cameras: tuple[str, ...],
           sets: tuple[str, ...], mqtt: dict) -> Config:
    custom = {"porch": {"name": "porch", "head": str(heads["porch"]), "cameras": ["front"], "crop": [100, 50, 300, 200]},
              "door": {"name": "door", "head": str(heads["door"])}}
    return parse_config({
        "server": {"host": "127.0.0.1", "port": 0},
        "model": {"weights": str(weights), "threads": 2},
        "cameras": [{"name": c, "source": str(video), "loop": True, "fps": 5} for c in cameras],
        "custom_classes": [custom[s] for s in sets],
        "events": {"database": str(tmp / "events.db")},
        "mqtt": mqtt,
    }, tmp)


@pytest.fixture
def heads(tmp_path: Path, backbone: str) -> dict[str, Path]:
    return {"porch": save_head(random_head("porch", PORCH, backbone, 1), tmp_path / "porch.head"),
            "door": save_head(random_head("door", DOOR, backbone, 2), tmp_path / "door.head")}


def check_state(sub: Subscriber, prefix: str, camera: str, name: str, classes: tuple[str, ...],
                after: int = 0) -> Received:
    """The next label of set `name` on `camera`, checked against the attributes published just before it."""
    topic = f"{prefix}/{camera}/{name}/label"
    label = sub.wait_topic(topic, timeout=15, after=after)
    assert not label.retain and label.text in classes
    before = [m for m in sub.messages[:sub.messages.index(label)] if m.topic == f"{topic}/attributes"]
    attrs = before[-1].json()
    assert not before[-1].retain
    assert list(attrs["scores"]) == list(classes) and attrs["label"] == label.text
    assert attrs["score"] == max(attrs["scores"].values()) == attrs["scores"][label.text]
    assert abs(sum(attrs["scores"].values()) - 1.0) < 1e-3 and attrs["frame"] >= 1
    return label


def test_custom_sets_publish_discovery_and_states_and_follow_a_swapped_head(
        tmp_path, demo_weights, video, heads, backbone, broker, daemons, subscribers) -> None:
    prefix, ha = "c1", "hac1"
    sub = Subscriber(broker.port, (f"{prefix}/#", f"{ha}/#"))
    subscribers.append(sub)
    d = Daemon(config(tmp_path, demo_weights, video, heads, ("front", "back"), ("porch", "door"),
                      {"port": broker.port, "topic_prefix": prefix, "discovery_prefix": ha, "label_keepalive": "1s",
                       "client_id": "monitor-test-c1"}))
    daemons.append(d)
    d.start(web=False)

    # discovery: an enum sensor per camera and set it runs on (porch: front only), on the camera's device
    wanted = {("front", "porch"): PORCH, ("front", "door"): DOOR, ("back", "door"): DOOR}
    for (camera, name), classes in wanted.items():
        msg = sub.wait_topic(f"{ha}/sensor/{prefix}_{camera}_custom_{name}/config")
        payload = msg.json()
        assert msg.retain and check_discovery(msg.topic, payload, prefix, ha) == "sensor"
        assert payload["device_class"] == "enum" and payload["options"] == list(classes)
        assert payload["state_topic"] == f"{prefix}/{camera}/{name}/label"
        assert payload["json_attributes_topic"] == f"{prefix}/{camera}/{name}/label/attributes"
        assert payload["default_entity_id"] == f"sensor.{prefix}_{camera}_custom_{name}"
        label_sensor = sub.wait_topic(f"{ha}/sensor/{prefix}_{camera}_label/config").json()
        assert payload["device"] == label_sensor["device"]
    # states: the top class, attributes with the score and every class's score, not retained
    for (camera, name), classes in wanted.items():
        check_state(sub, prefix, camera, name, classes)
    held = retained_now(broker.port, (f"{ha}/#", f"{prefix}/discovery_index"))
    assert f"{ha}/sensor/{prefix}_back_custom_porch/config" not in held
    assert sorted(t for t in held if "_custom_" in t) == sorted(
        f"{ha}/sensor/{prefix}_{c}_custom_{n}/config" for c, n in wanted)
    assert set(json.loads(held[f"{prefix}/discovery_index"].payload)) == {t for t in held if t.startswith(ha)}

    # a retrain swaps in a door head with other classes: its discovery follows before any state of it
    mark = sub.mark()
    swapped = ("closed", "open", "gone", "broken")
    d.heads.swap("door", random_head("door", swapped, backbone, 3))
    for camera in ("front", "back"):
        announced = sub.wait(lambda m: m.topic == f"{ha}/sensor/{prefix}_{camera}_custom_door/config" and m.payload
                             and m.json()["options"] == list(swapped), after=mark)
        assert announced.retain
        first = sub.wait(lambda m: m.topic == f"{prefix}/{camera}/door/label/attributes"
                         and list(m.json()["scores"]) == list(swapped), timeout=15, after=mark)
        assert sub.messages.index(announced) < sub.messages.index(first)
        later = [m.json() for m in sub.messages[sub.messages.index(announced):]
                 if m.topic == f"{prefix}/{camera}/door/label/attributes"]
        assert later and all(list(a["scores"]) == list(swapped) for a in later)
        check_state(sub, prefix, camera, "door", swapped, after=sub.messages.index(first))
    # the porch set was not touched
    assert not [m for m in sub.messages[mark:] if m.topic == f"{ha}/sensor/{prefix}_front_custom_porch/config"]


def test_reload_removing_a_set_or_camera_clears_its_discovery(
        tmp_path, demo_weights, video, heads, broker, daemons, subscribers) -> None:
    prefix, ha = "c2", "hac2"
    mqtt = {"port": broker.port, "topic_prefix": prefix, "discovery_prefix": ha, "label_keepalive": "1s",
            "client_id": "monitor-test-c2"}
    sub = Subscriber(broker.port, (f"{prefix}/#", f"{ha}/#"))
    subscribers.append(sub)
    d = Daemon(config(tmp_path, demo_weights, video, heads, ("front", "back"), ("porch", "door"), mqtt))
    daemons.append(d)
    d.start(web=False)
    porch = f"{ha}/sensor/{prefix}_front_custom_porch/config"
    sub.wait_topic(porch)
    check_state(sub, prefix, "front", "porch", PORCH)

    # reload without the porch set and without camera back: both configs cleared (empty, retained)
    mark = sub.mark()
    d.reload(config(tmp_path, demo_weights, video, heads, ("front",), ("door",), mqtt))
    cleared = sub.wait_topic(porch, b"", after=mark)
    assert cleared.retain
    assert sub.wait_topic(f"{ha}/sensor/{prefix}_back_custom_door/config", b"", after=mark).retain
    held = retained_now(broker.port, (f"{ha}/#",))
    assert sorted(t for t in held if "_custom_" in t) == [f"{ha}/sensor/{prefix}_front_custom_door/config"]
    # the door set keeps going; no porch state after the clear (two door labels later, one keepalive apart)
    after = check_state(sub, prefix, "front", "door", DOOR, after=sub.messages.index(cleared))
    check_state(sub, prefix, "front", "door", DOOR, after=sub.messages.index(after) + 1)
    assert not [m for m in sub.messages[sub.messages.index(after):] if m.topic.startswith(f"{prefix}/front/porch/")]
    d.stop()

    # restarted with camera back instead of front: the previous run's front configs (found through the retained
    # discovery index) are cleared at start
    mark = sub.mark()
    again = Daemon(config(tmp_path, demo_weights, video, heads, ("back",), ("door",), mqtt))
    daemons.append(again)
    again.start(web=False)
    assert sub.wait_topic(f"{ha}/sensor/{prefix}_front_custom_door/config", b"", after=mark).retain
    sub.wait_topic(f"{ha}/sensor/{prefix}_back_custom_door/config", after=mark)
    held = retained_now(broker.port, (f"{ha}/#",))
    assert sorted(t for t in held if "_custom_" in t) == [f"{ha}/sensor/{prefix}_back_custom_door/config"]


def test_readme_shows_the_custom_class_sensor_we_publish() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## MQTT and Home Assistant", 1)[1].split("\n## ", 1)[0]
    topic = "homeassistant/sensor/monitor_front_custom_porch/config"
    assert topic in section and "<prefix>/<camera>/<custom class>/label" in section
    shown = [json.loads(b) for b in re.findall(r"```json\n(.+?)\n```", section, re.DOTALL)]
    shown = [p for p in shown if p.get("unique_id") == "monitor_front_custom_porch"]
    assert len(shown) == 1
    ours = discovery_configs(Topics("monitor"), "homeassistant", ["front"], {}, {"front": {"porch": PORCH}})[topic]
    for payload in (shown[0], ours):   # the version changes with releases; the shape must not
        payload["device"].pop("sw_version")
        payload["origin"].pop("sw_version")
    assert shown[0] == ours
    check_discovery(topic, shown[0], "monitor", "homeassistant")
