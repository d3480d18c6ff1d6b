"""What Home Assistant keeps of what we publish (issue 23), against a real mosquitto and the real daemon.

Home Assistant drops some keys without a word in its log; these tests hold the daemon to what every supported
Home Assistant (2024.3 and later) reads:
- entity ids: `object_id` (read before HA 2025.10) and `default_entity_id` (from 2025.10) name the same
  `<domain>.<node id>_<camera>_<key>`, so a second daemon (another node id) never gets `_2` ids;
- attributes: no key Home Assistant blocks (its MQTT_ATTRIBUTES_BLOCKED: a camera's `state` never arrived);
- HA's `online` re-sends the label and custom class states (not retained) within the resync's rate limit, so
  the sensors do not read `unknown` until the next keepalive; HA coming back (its will `offline`, then `online`)
  is answered at once even within the interval, bursts are coalesced.

The camera watches a still picture (every frame the same JPEG), so its label never changes: any label message
after the first one is a re-send (or a keepalive, here 60 s away).
"""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import pytest
from prometheus_client import CollectorRegistry, Counter

from monitor.config.loader import parse_config
from monitor.config.types import Config
from monitor.daemon import Daemon
from monitor.inference.classifier import Classifier
from monitor.inference.heads import save_head
from monitor.mqtt.discovery import discovery_configs
from monitor.mqtt.resync import RESYNC_INTERVAL, ResyncLimiter
from monitor.mqtt.topics import Topics
from testkit.mqtt import Mosquitto, Subscriber, retained_now
from testkit.rtsp import free_port
from tests.test_mqtt import check_discovery
from tests.test_mqtt_custom import PORCH, random_head

# homeassistant/components/mqtt/entity.py, MQTT_ATTRIBUTES_BLOCKED (the same set in 2024.3 and 2025.x): a JSON
# attribute with one of these names is dropped silently.
HA_ATTRIBUTES_BLOCKED = {
    "assumed_state", "available", "device_class", "device_info", "entity_category", "entity_picture",
    "entity_registry_enabled_default", "extra_state_attributes", "force_update", "icon", "name", "should_poll",
    "state", "supported_features", "unique_id", "unit_of_measurement",
}
KEEPALIVE = "60s"      # the default: without the re-send, HA would wait up to this long for a label


@pytest.fixture(scope="module")
def still(videos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 s MJPEG clip of one frame of the sample video, repeated: every decoded frame is the same."""
    cap = cv2.VideoCapture(str(videos_dir / "car-detection.mp4"))
    try:
        for _ in range(30):
            ok, frame = cap.read()
            assert ok
    finally:
        cap.release()
    path = tmp_path_factory.mktemp("still") / "still.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (frame.shape[1], frame.shape[0]))
    for _ in range(20):
        out.write(frame)
    out.release()
    assert path.stat().st_size > 10_000
    return path


@pytest.fixture(scope="module")
def porch_head(demo_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    backbone = Classifier(demo_weights, threads=1).backbone_id
    return save_head(random_head("porch", PORCH, backbone, 1), tmp_path_factory.mktemp("heads") / "porch.head")


def config(tmp: Path, weights: Path, still: Path, head: Path, port: int, prefix: str, ha: str) -> Config:
    dead = free_port()      # nothing listens here: camera `yard` is down, with a reason
    return parse_config({
        "server": {"host": "127.0.0.1", "port": 0},
        "model": {"weights": str(weights), "threads": 2},
        "cameras": [{"name": "front", "source": str(still), "loop": True, "fps": 5},
                    {"name": "yard", "source": f"rtsp://127.0.0.1:{dead}/x", "backoff_max": 1}],
        "watchlist": [{"name": "vehicle", "classes": ["sports car"], "min_score": 0.5}],
        "custom_classes": [{"name": "porch", "head": str(head), "cameras": ["front"]}],
        "events": {"database": str(tmp / "events.db")},
        "mqtt": {"port": port, "topic_prefix": prefix, "discovery_prefix": ha,
                 "label_keepalive": KEEPALIVE, "control": True, "client_id": f"monitor-{prefix}"},
    }, tmp)


def started(tmp: Path, weights: Path, still: Path, head: Path, broker: Mosquitto, prefix: str, ha: str,
            daemons: list[Daemon]) -> Daemon:
    d = Daemon(config(tmp, weights, still, head, broker.port, prefix, ha))
    daemons.append(d)
    d.start(web=False)
    return d


def test_entity_ids_are_the_same_on_every_supported_home_assistant(tmp_path, demo_weights, still, porch_head,
                                                                     broker, daemons, subscribers) -> None:
    prefix, ha = "ha1", "hass1"
    sub = Subscriber(broker.port, (f"{prefix}/#", f"{ha}/#"))
    subscribers.append(sub)
    started(tmp_path, demo_weights, still, porch_head, broker, prefix, ha, daemons)
    sub.wait_topic(f"{ha}/sensor/{prefix}_front_custom_porch/config", timeout=30)

    retained = retained_now(broker.port, (f"{prefix}/#", f"{ha}/#"))
    configs = {t: m.json() for t, m in retained.items() if t.startswith(f"{ha}/")}
    for topic, payload in configs.items():
        check_discovery(topic, payload, prefix, ha)
    # the entity ids Home Assistant gives them, whichever of the two keys it reads
    ids = sorted(p["default_entity_id"] for p in configs.values())
    assert ids == sorted(f"{c}.{p['object_id']}" for c, p in ((t.split("/")[1], p) for t, p in configs.items()))
    assert ids == sorted([
        "sensor.ha1_front_label", "sensor.ha1_front_custom_porch", "binary_sensor.ha1_front_connected",
        "binary_sensor.ha1_front_rule_vehicle", "camera.ha1_front_snapshot", "switch.ha1_front_enabled",
        "sensor.ha1_yard_label", "binary_sensor.ha1_yard_connected", "binary_sensor.ha1_yard_rule_vehicle",
        "camera.ha1_yard_snapshot", "switch.ha1_yard_enabled"])
    # a second daemon (another topic prefix: another node id) with the same camera names: other ids, no `_2`
    other = discovery_configs(Topics("garage"), ha, ["front", "yard"], {"front": ["vehicle"], "yard": ["vehicle"]},
                              {"front": {"porch": PORCH}}, control=True)
    theirs = {p["object_id"] for p in other.values()}
    assert len(theirs) == len(configs) and not theirs & {p["object_id"] for p in configs.values()}



def test_no_attribute_is_one_home_assistant_blocks(tmp_path, demo_weights, still, porch_head, broker, daemons,
                                                    subscribers) -> None:
    prefix, ha = "ha3", "hass3"
    sub = Subscriber(broker.port, (f"{prefix}/#", f"{ha}/#"))
    subscribers.append(sub)
    started(tmp_path, demo_weights, still, porch_head, broker, prefix, ha, daemons)
    sub.wait_topic(f"{prefix}/front/label", timeout=30)
    sub.wait_topic(f"{prefix}/front/porch/label", timeout=15)
    sub.wait_topic(f"{prefix}/yard/state", "down", timeout=15)
    retained = retained_now(broker.port, (f"{prefix}/#", f"{ha}/#"))
    configs = {t: m.json() for t, m in retained.items() if t.startswith(f"{ha}/")}

    # every attributes topic: no key Home Assistant blocks; the camera's state is there as camera_state
    attribute_topics = {p["json_attributes_topic"] for p in configs.values() if "json_attributes_topic" in p}
    assert attribute_topics == {f"{prefix}/{c}/state/attributes" for c in ("front", "yard")} | {
        f"{prefix}/front/label/attributes", f"{prefix}/front/porch/label/attributes", f"{prefix}/yard/label/attributes"}
    seen = 0
    for topic in sorted(attribute_topics):
        for m in sub.on(topic):
            keys = set(m.json())
            assert not keys & HA_ATTRIBUTES_BLOCKED, (topic, keys & HA_ATTRIBUTES_BLOCKED)
            seen += 1
    assert seen >= 4
    front = retained[f"{prefix}/front/state/attributes"].json()
    yard = retained[f"{prefix}/yard/state/attributes"].json()
    assert front["camera_state"] == "up" and not front["reason"]
    assert yard["camera_state"] in ("down", "connecting") and yard["reason"]


def test_home_assistant_online_gets_the_label_and_custom_states_within_the_rate_limit(
        tmp_path, demo_weights, still, porch_head, broker, daemons, subscribers) -> None:
    prefix, ha = "ha2", "hass2"
    topics = [f"{prefix}/front/label/attributes", f"{prefix}/front/label",
              f"{prefix}/front/porch/label/attributes", f"{prefix}/front/porch/label"]
    sub = Subscriber(broker.port, (f"{prefix}/#", f"{ha}/#"))
    subscribers.append(sub)
    started(tmp_path, demo_weights, still, porch_head, broker, prefix, ha, daemons)
    first = sub.wait_topic(f"{prefix}/front/label", timeout=30)
    custom = sub.wait_topic(f"{prefix}/front/porch/label", timeout=15)
    # a still picture: nothing more until the keepalive (60 s) unless something asks for it
    mark = sub.mark()
    _quiet(sub, topics, mark, 2.0)

    # Home Assistant (re)starts: the states come again, each after its attributes, with the same values
    mark = sub.mark()
    online_at = time.monotonic()
    sub.publish(f"{ha}/status", "online")
    label = sub.wait_topic(f"{prefix}/front/label", timeout=5, after=mark)
    again = sub.wait_topic(f"{prefix}/front/porch/label", timeout=5, after=mark)
    assert (label.text, again.text) == (first.text, custom.text)
    assert not label.retain and not again.retain
    for state, attrs in ((label, f"{prefix}/front/label/attributes"),
                         (again, f"{prefix}/front/porch/label/attributes")):
        before = [m for m in sub.messages[mark:sub.messages.index(state)] if m.topic == attrs]
        assert len(before) == 1 and before[0].json()["label"] == state.text
    sub.wait_topic(f"{ha}/sensor/{prefix}_front_label/config", after=mark)     # and the configs, as before
    assert not [m for m in sub.messages[mark:] if m.topic == f"{prefix}/yard/label"]   # nothing to re-send there

    # a second `online` within the interval: coalesced, answered once at the interval's end, not at once
    mark = sub.mark()
    sub.publish(f"{ha}/status", "online")
    sub.publish(f"{ha}/status", "online")
    _quiet(sub, topics, mark, max(0.0, online_at + RESYNC_INTERVAL - 1.5 - time.monotonic()))
    late = sub.wait_topic(f"{prefix}/front/label", timeout=RESYNC_INTERVAL, after=mark)
    assert late.text == first.text
    assert sub.wait_topic(f"{prefix}/front/porch/label", timeout=3, after=mark).text == custom.text
    time.sleep(1.0)
    assert len([m for m in sub.messages[mark:] if m.topic in topics]) == 4      # one re-send for three `online`

    # Home Assistant comes back (its will `offline`, then `online`) well within the interval after that re-send:
    # answered at once, not at the interval's end; a second comeback within the same interval is coalesced
    mark = sub.mark()
    sub.publish(f"{ha}/status", "offline")
    sub.publish(f"{ha}/status", "online")
    assert sub.wait_topic(f"{prefix}/front/label", timeout=3, after=mark).text == first.text
    assert sub.wait_topic(f"{prefix}/front/porch/label", timeout=2, after=mark).text == custom.text
    time.sleep(0.5)
    mark = sub.mark()
    sub.publish(f"{ha}/status", "offline")
    sub.publish(f"{ha}/status", "online")
    _quiet(sub, topics, mark, 2.5)


def test_a_comeback_is_answered_at_once_and_a_flood_of_comebacks_twice_per_interval() -> None:
    """ResyncLimiter on a clock of its own: `online` after `offline` (HA's will) fires at once even within the
    interval, at most once per interval; bursts of `online` alone stay coalesced to one per interval."""
    now = [1000.0]
    fired: list[float] = []
    suppressed = Counter("test_resyncs_suppressed", "", registry=CollectorRegistry())
    limiter = ResyncLimiter(lambda: fired.append(now[0]), suppressed, interval=10.0, clock=lambda: now[0])
    limiter.request("start")
    assert fired == [1000.0]
    now[0] = 1003.0                      # HA restarted in 3 s: its will, then its birth
    limiter.offline()
    limiter.request("restart")
    assert fired == [1000.0, 1003.0]
    now[0] = 1004.0                      # `online` alone, within the interval: waits for its end
    limiter.request("burst")
    limiter.poll()
    assert fired == [1000.0, 1003.0]
    now[0] = 1013.0
    limiter.poll()
    assert fired == [1000.0, 1003.0, 1013.0]
    # a flood of `offline`/`online` pairs for 60 s: at most two re-publishes in any interval
    fired.clear()
    t = 1013.0
    while t < 1073.0:
        now[0] = t
        limiter.offline()
        limiter.request("flood")
        limiter.poll()
        t += 0.01
    assert 6 <= len(fired) <= 13, fired
    assert all(b - a >= 10.0 for a, b in zip(fired, fired[2:])), fired


def _quiet(sub: Subscriber, topics: list[str], after: int, seconds: float) -> None:
    """No message on `topics` from index `after` on for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = [m.topic for m in sub.messages[after:] if m.topic in topics]
        assert not got, got
        time.sleep(0.1)
    assert not [m.topic for m in sub.messages[after:] if m.topic in topics]
