"""Who may steer the daemon over MQTT (issue 17, "Trust the control surface"), against a real mosquitto and the
real daemon (cameras on a looping clip, the demo model, alerts, SQLite).

- A discovery index (or anything else) written to the broker by someone else clears no config the daemon did
  not announce itself; a camera removed while the daemon was stopped still has its configs cleared.
- A flood of Home Assistant `online` messages costs at most one re-publish per interval, never the snapshot.
- Without `mqtt.control: true` nothing on MQTT pauses a camera, not even a paused set kept from earlier; with it,
  a pause is a WARNING naming the topic, a gauge and a line of /readyz, and a retained command is not one.
- systemd/mosquitto-acl.example, loaded by a real mosquitto with a password file: anonymous clients cannot
  connect, an authenticated client without ACL lines can neither pause a camera nor clear a config, the daemon's
  own user can publish everything it publishes, Home Assistant's user can pause and resume.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from monitor.daemon import Daemon
from monitor.mqtt import resync
from testkit.mqtt import Mosquitto, Subscriber, retained_now
from testkit.rtsp import free_port
from testkit.waiting import wait_until
from tests.daemon_helpers import classified
from tests.test_mqtt import build, cam, footage  # noqa: F401 (footage: a fixture)

ACL_EXAMPLE = Path(__file__).resolve().parents[1] / "systemd" / "mosquitto-acl.example"
FOREIGN_LIGHT = {"unique_id": "kitchen_ceiling", "name": "Kitchen", "command_topic": "zigbee2mqtt/kitchen/set",
                 "schema": "json", "device": {"identifiers": ["0x00158d0001"], "name": "Kitchen light"}}


@pytest.fixture
def brokers() -> Iterator[list[Mosquitto]]:
    made: list[Mosquitto] = []
    yield made
    for b in made:
        b.kill()


def gauge(d: Daemon, name: str, **labels: str) -> float | None:
    return d.metrics.registry.get_sample_value(name, labels)


class Client:
    """A bare MQTT v5 client that remembers the broker's answer to each QoS 1 publish (PUBACK reason code)."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        self.acks: dict[int, str] = {}
        self.connack: str | None = None
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        with self._cond:
            self._cond.wait_for(lambda: self.connack is not None, 10)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._cond:
            self.connack = str(reason)
            self._cond.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._cond:
            # 0x10 "No matching subscribers" is a success too
            self.acks[mid] = str(reason) if getattr(reason, "is_failure", False) else "Success"
            self._cond.notify_all()

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> str:
        """Publish with QoS 1 and return the broker's reason code ("Success", "Not authorized", ...)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._cond:
            self._cond.wait_for(lambda: info.mid in self.acks, 10)
            return self.acks.get(info.mid, "no PUBACK")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---------------------------------------------------------------------------------------------------------
# 1. The discovery clean-up: only what this daemon announced


def test_a_discovery_index_from_the_broker_clears_no_foreign_config(tmp_path, demo_weights, footage, broker,
                                                                     daemons, subscribers) -> None:
    """The finding: whoever wrote `<prefix>/discovery_index` made the daemon clear any `…/config` topic (a foreign
    light's retained config was deleted). Forged indexes, retained before the start, live while running and left
    again for the restart, list a foreign light, a foreign plug and a config in our id namespace that we never
    announced. A camera removed while the daemon was stopped still has its configs cleared (our own record)."""
    video, _ = footage
    prefix, ha = "s1", "ha_s1"
    mqtt = {"port": broker.port, "topic_prefix": prefix, "discovery_prefix": ha, "client_id": "monitor-sec-1"}
    foreign = {f"{ha}/light/kitchen_ceiling/config": json.dumps(FOREIGN_LIGHT),
               f"{ha}/switch/zigbee_plug/config": json.dumps({"unique_id": "zigbee_plug", "command_topic": "z/p"}),
               f"{ha}/sensor/s1_garage_label/config": json.dumps({"unique_id": "s1_garage_label"})}
    forged = json.dumps(sorted(foreign))
    attacker = Subscriber(broker.port, (f"{prefix}/#", f"{ha}/#"))
    subscribers.append(attacker)
    for topic, payload in foreign.items():
        attacker.publish(topic, payload, retain=True)
    attacker.publish(f"{prefix}/discovery_index", forged, retain=True)

    first = Daemon(build(tmp_path, demo_weights, [cam("a", video), cam("b", video)], [], mqtt))
    daemons.append(first)
    first.start(web=False)
    attacker.wait(lambda m: m.topic == f"{ha}/camera/s1_b_snapshot/config" and m.payload)
    attacker.publish(f"{prefix}/discovery_index", forged, retain=True)        # live, while it runs
    time.sleep(1.5)
    first.stop()
    attacker.publish(f"{prefix}/discovery_index", forged, retain=True)        # waiting for the restart

    second = Daemon(build(tmp_path, demo_weights, [cam("a", video)], [], mqtt))
    daemons.append(second)
    mark = attacker.mark()
    second.start(web=False)
    attacker.wait_topic(f"{ha}/camera/s1_a_snapshot/config", after=mark)
    time.sleep(1.0)
    held = retained_now(broker.port, (f"{ha}/#",))
    for topic, payload in foreign.items():
        assert topic in held and held[topic].text == payload, f"{topic} was cleared"
    for key, component in (("label", "sensor"), ("connected", "binary_sensor"), ("snapshot", "camera")):
        assert attacker.wait_topic(f"{ha}/{component}/s1_b_{key}/config", b"", after=mark).retain
    assert sorted(held) == sorted([*foreign, *(f"{ha}/{c}/s1_a_{k}/config" for c, k in (
        ("sensor", "label"), ("binary_sensor", "connected"), ("camera", "snapshot")))])
    cleared = sorted(m.topic for m in attacker.messages if m.topic.startswith(f"{ha}/") and not m.payload)
    assert not [t for t in cleared if t in foreign], cleared
    record = json.loads((tmp_path / "events-discovery.json").read_text())
    assert record == {"topics": sorted(t for t in held if t.startswith(f"{ha}/") and t not in foreign)}


# ---------------------------------------------------------------------------------------------------------
# 2. Amplification: a flood of `online`


FLOOD = 1316          # the finding's figure: 1,316 `online` on homeassistant/status in 3 s
FLOOD_SECONDS = 3.0


def test_a_flood_of_online_costs_one_resync_per_interval_and_no_snapshot(tmp_path, demo_weights, footage,
                                                                         broker, daemons, subscribers) -> None:
    video, rule = footage
    prefix, ha = "s2", "ha_s2"
    sub = Subscriber(broker.port, (f"{prefix}/#", f"{ha}/#"))
    subscribers.append(sub)
    d = Daemon(build(tmp_path, demo_weights, [cam("cars", video)], [rule],
                     {"port": broker.port, "topic_prefix": prefix, "discovery_prefix": ha,
                      "client_id": "monitor-sec-2"}))
    daemons.append(d)
    d.start(web=False)
    sub.wait(lambda m: m.topic == f"{prefix}/cars/snapshot" and len(m.payload) > 5000, timeout=30)
    configs = sorted(t for t in retained_now(broker.port, (f"{ha}/#",)) if t.endswith("/config"))
    assert len(configs) >= 4       # label, connected, snapshot camera, rule (no switch: mqtt.control is off)

    flooder = Client(broker.port)
    try:
        mark, published = sub.mark(), gauge(d, "monitor_mqtt_published_total") or 0.0
        t0 = time.monotonic()
        for i in range(FLOOD):
            flooder.client.publish(f"{ha}/status", "online", qos=0)
            time.sleep(max(0.0, t0 + FLOOD_SECONDS * (i + 1) / FLOOD - time.monotonic()))
        flood_took = time.monotonic() - t0
        # the coalesced re-publish comes at the end of the interval that the first `online` opened
        time.sleep(max(0.0, t0 + resync.RESYNC_INTERVAL + 2.0 - time.monotonic()))
    finally:
        flooder.close()
    after = sub.messages[mark:]
    sent = (gauge(d, "monitor_mqtt_published_total") or 0.0) - published
    ours = [m for m in after if m.topic != f"{ha}/status"]
    volume = sum(len(m.payload) for m in ours)
    suppressed = gauge(d, "monitor_mqtt_resyncs_suppressed_total") or 0.0
    received = len([m for m in after if m.topic == f"{ha}/status"])
    print(f"\n{received} 'online' in {flood_took:.1f} s: the daemon published {sent:.0f} messages, "
          f"{volume / 1e3:.1f} kB within {resync.RESYNC_INTERVAL + 2:g} s; suppressed resyncs {suppressed:.0f}")

    assert received >= FLOOD * 0.95
    for topic in configs:       # the first `online` answered at once, the rest of the burst once at its end
        assert len([m for m in after if m.topic == topic]) == 2, topic
    starts = [m for m in after if m.topic == f"{prefix}/events" and m.json()["kind"] == "start"]
    snapshots = [m for m in after if m.topic == f"{prefix}/cars/snapshot"]
    assert len(snapshots) == len(starts), "a snapshot went out again without an event of its own"
    assert suppressed >= received - 2 - 30     # a few may still be on the way
    assert sent < 300 and volume < 1_000_000, (sent, volume)


# ---------------------------------------------------------------------------------------------------------
# 3. Control: off by default; when on, a pause is loud


def test_without_control_nothing_on_mqtt_pauses_a_camera(tmp_path, demo_weights, footage, broker, daemons,
                                                        subscribers, caplog) -> None:
    """The finding: an anonymous OFF on `<prefix>/<cam>/enabled/set` stopped classification and survived a
    restart. Default config (no `control`): a paused set left by an earlier run is not applied, a live OFF (also
    retained) is not taken, no switch is announced."""
    video, _ = footage
    prefix, ha = "s3", "ha_s3"
    (tmp_path / "events-paused.json").write_text(json.dumps({"paused": ["cars"]}))
    sub = Subscriber(broker.port, (f"{prefix}/#", f"{ha}/#"))
    subscribers.append(sub)
    caplog.set_level(logging.INFO, logger="monitor")
    d = Daemon(build(tmp_path, demo_weights, [cam("cars", video)], [],
                     {"port": broker.port, "topic_prefix": prefix, "discovery_prefix": ha,
                      "client_id": "monitor-sec-3"}))
    daemons.append(d)
    d.start(web=False)
    assert wait_until(lambda: classified(d, "cars") >= 3, timeout=20), "a pause kept from earlier was applied"
    assert any(r.levelno == logging.WARNING and "mqtt.control is off" in r.getMessage() for r in caplog.records)
    sub.wait_topic(f"{ha}/camera/s3_cars_snapshot/config")

    mark = sub.mark()
    sub.publish(f"{prefix}/cars/enabled/set", "OFF")
    sub.publish(f"{prefix}/cars/enabled/set", "OFF", retain=True)
    before = classified(d, "cars")
    time.sleep(2.0)
    assert classified(d, "cars") > before + 3, "classification stopped"
    assert d.paused == frozenset() and gauge(d, "monitor_camera_paused", camera="cars") == 0
    assert not [m for m in sub.messages[mark:] if m.topic == f"{prefix}/cars/enabled/state" and m.text == "OFF"]
    assert json.loads((tmp_path / "events-paused.json").read_text()) == {"paused": ["cars"]}   # untouched
    held = retained_now(broker.port, (f"{ha}/#", f"{prefix}/#"))
    assert not [t for t in held if t.startswith(f"{ha}/switch/")]
    assert held[f"{prefix}/cars/enabled/state"].text == "ON"


def test_with_control_a_pause_is_a_warning_a_gauge_and_a_readyz_line(tmp_path, demo_weights, footage, broker,
                                                                     daemons, subscribers, caplog) -> None:
    """`mqtt.control: true`: Home Assistant's switch works, each pause is a WARNING naming the topic it came
    through, monitor_camera_paused{camera} is 1, /readyz stays 200 and says which cameras are paused. A command
    retained on the broker (planted before the start) is not a command."""
    video, _ = footage
    prefix, ha = "s4", "ha_s4"
    sub = Subscriber(broker.port, (f"{prefix}/#", f"{ha}/#"))
    subscribers.append(sub)
    sub.publish(f"{prefix}/cars/enabled/set", "OFF", retain=True)
    caplog.set_level(logging.INFO, logger="monitor")
    d = Daemon(build(tmp_path, demo_weights, [cam("cars", video), cam("yard", video)], [],
                     {"port": broker.port, "topic_prefix": prefix, "discovery_prefix": ha,
                      "client_id": "monitor-sec-4", "control": True}))
    daemons.append(d)
    d.start(web=True)
    switch = sub.wait_topic(f"{ha}/switch/s4_cars_enabled/config").json()
    assert switch["command_topic"] == f"{prefix}/cars/enabled/set"
    assert wait_until(lambda: classified(d, "cars") >= 3, timeout=20), "the retained OFF paused the camera"
    assert d.paused == frozenset() and gauge(d, "monitor_camera_paused", camera="cars") == 0
    assert any(r.levelno == logging.WARNING and "retained on s4/cars/enabled/set" in r.getMessage()
               for r in caplog.records)

    def readyz() -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{d.web.port}/readyz", timeout=10) as resp:
            return resp.status, resp.read().decode()

    assert readyz() == (200, "ready\n")
    mark = sub.mark()
    sub.publish(f"{prefix}/cars/enabled/set", "OFF")
    assert sub.wait_topic(f"{prefix}/cars/enabled/state", after=mark).text == "OFF"
    assert wait_until(lambda: gauge(d, "monitor_camera_paused", camera="cars") == 1, timeout=5)
    assert gauge(d, "monitor_camera_paused", camera="yard") == 0
    pauses = [r for r in caplog.records if "PAUSED" in r.getMessage()]
    assert len(pauses) == 1 and pauses[0].levelno == logging.WARNING
    assert "via MQTT topic s4/cars/enabled/set" in pauses[0].getMessage()
    assert readyz() == (200, "ready\npaused: cars\n")

    mark = sub.mark()
    sub.publish(f"{prefix}/cars/enabled/set", "ON")
    assert sub.wait_topic(f"{prefix}/cars/enabled/state", after=mark).text == "ON"
    assert wait_until(lambda: gauge(d, "monitor_camera_paused", camera="cars") == 0, timeout=5)
    assert readyz() == (200, "ready\n")
    sub.publish(f"{prefix}/cars/enabled/set", "", retain=True)


# ---------------------------------------------------------------------------------------------------------
# 4. The recommended broker ACL, loaded by a real mosquitto


def test_recommended_acl_lets_only_home_assistant_pause_and_nobody_clear_our_configs(
        tmp_path, demo_weights, footage, brokers, daemons, caplog) -> None:
    video, _ = footage
    users = {"monitor": "mon-Pass-1", "homeassistant": "ha-Pass-2", "intruder": "in-Pass-3"}
    b = Mosquitto(free_port(), tmp_path / "broker", users=users, acl_file=ACL_EXAMPLE).start()
    brokers.append(b)
    password = tmp_path / "mqtt-password"
    password.write_text(users["monitor"] + "\n")

    anonymous = Client(b.port)
    intruder = Client(b.port, "intruder", users["intruder"])
    ha = Client(b.port, "homeassistant", users["homeassistant"])
    clients = [anonymous, intruder, ha]
    try:
        assert anonymous.connack == "Not authorized", anonymous.connack
        assert ha.publish("homeassistant/light/kitchen_ceiling/config", json.dumps(FOREIGN_LIGHT),
                          retain=True) == "Success"
        caplog.set_level(logging.INFO, logger="monitor")
        d = Daemon(build(tmp_path, demo_weights, [cam("cars", video)], [],
                         {"port": b.port, "username": "monitor", "password_file": str(password),
                          "client_id": "monitor-sec-5", "control": True}))
        daemons.append(d)
        d.start(web=False)
        auth = {"username": "homeassistant", "password": users["homeassistant"]}

        # everything the daemon publishes is allowed to its user (mosquitto drops a denied publish silently)
        def everything() -> dict | None:
            held = retained_now(b.port, ("monitor/#", "homeassistant/#"), settle=0.4, **auth)
            return held if len([t for t in held if t.endswith("/config")]) == 5 and "monitor/cars/state" in held \
                else None
        held = wait_until(everything, timeout=20)
        assert held, retained_now(b.port, ("monitor/#", "homeassistant/#"), **auth)
        assert held["monitor/status"].text == "online" and held["monitor/cars/enabled/state"].text == "ON"
        assert "homeassistant/switch/monitor_cars_enabled/config" in held
        assert "monitor/discovery_index" in held

        # an authenticated client without ACL lines: every write refused by the broker, nothing changes
        denied = {
            "pause": intruder.publish("monitor/cars/enabled/set", "OFF"),
            "clear our config": intruder.publish("homeassistant/switch/monitor_cars_enabled/config", b"",
                                                 retain=True),
            "clear a foreign config": intruder.publish("homeassistant/light/kitchen_ceiling/config", b"",
                                                       retain=True),
            "forge the index": intruder.publish("monitor/discovery_index",
                                                json.dumps(["homeassistant/light/kitchen_ceiling/config"]),
                                                retain=True),
            "fake online": intruder.publish("homeassistant/status", "online"),
            "fake offline": intruder.publish("monitor/status", "offline", retain=True),
        }
        assert set(denied.values()) == {"Not authorized"}, denied
        # Home Assistant's user may command, not impersonate the daemon
        assert ha.publish("monitor/status", "offline", retain=True) == "Not authorized"
        before = classified(d, "cars")
        time.sleep(1.5)
        assert classified(d, "cars") > before + 3 and d.paused == frozenset()
        now = retained_now(b.port, ("monitor/#", "homeassistant/#"), **auth)
        assert {t: m.payload for t, m in now.items() if t.endswith("/config") or t.endswith("status")} == \
            {t: m.payload for t, m in held.items() if t.endswith("/config") or t.endswith("status")}
        assert now["homeassistant/light/kitchen_ceiling/config"].json() == FOREIGN_LIGHT

        # Home Assistant's user: the switch works
        assert ha.publish("monitor/cars/enabled/set", "OFF") == "Success"
        assert wait_until(lambda: gauge(d, "monitor_camera_paused", camera="cars") == 1, timeout=5)
        paused_at = classified(d, "cars")
        time.sleep(1.0)
        assert classified(d, "cars") <= paused_at + 1
        assert any(r.levelno == logging.WARNING and "via MQTT topic monitor/cars/enabled/set" in r.getMessage()
                   for r in caplog.records)
        assert ha.publish("monitor/cars/enabled/set", "ON") == "Success"
        assert wait_until(lambda: classified(d, "cars") > paused_at + 3, timeout=10)
    finally:
        for c in clients:
            c.close()
