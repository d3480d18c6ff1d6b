"""MQTT and Home Assistant discovery against a real mosquitto on 127.0.0.1 (started here, killed at teardown).

The daemon is the real one (cameras on a looping clip of a sample video, the demo model, the alert engine and
SQLite); a paho client subscribes as Home Assistant would (MQTT v5 with retain-as-published, so every message
shows the retain flag it was published with) and the tests assert what arrives. Faults: broker down at start,
killed and restarted, wrong credentials, SIGKILL of the daemon process (last will), a full outgoing queue.
"""
from __future__ import annotations

import json
import re
import logging
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from prometheus_client import generate_latest

from monitor.config.loader import ConfigError, parse_config
from monitor.config.types import Config, MqttConfig
from monitor.core.metrics import Metrics
from monitor.daemon import Daemon
from monitor.mqtt.client import MqttClient
from monitor.mqtt.discovery import discovery_configs
from monitor.mqtt.topics import Topics
from testkit.faults import clip, flicker_rule
from testkit.process import DaemonProcess
from testkit.mqtt import Mosquitto, Subscriber, retained_now
from testkit.rtsp import free_port
from testkit.waiting import wait_until
from tests.daemon_helpers import classified

START_TIMEOUT = 60.0          # a daemon process: interpreter + torch + model load on a busy 2-core machine
REQUIRED = {                  # keys Home Assistant's MQTT platforms need (besides the common ones below)
    "sensor": ("state_topic",),
    "binary_sensor": ("state_topic", "payload_on", "payload_off", "device_class"),
    "camera": ("topic",),
    "switch": ("command_topic", "state_topic", "payload_on", "payload_off"),
}
HA_BINARY_SENSOR_CLASSES = {"connectivity", "motion", "occupancy", "presence", "problem", "running", "safety"}


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[list[Mosquitto]]:
    """Brokers a test starts itself (faults); every one is killed at teardown."""
    made: list[Mosquitto] = []
    yield made
    for b in made:
        b.kill()


@pytest.fixture(scope="module")
def footage(demo_weights: Path, videos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A 6 s clip and a rule on the demo model's top class at a score where it flickers: events start and end
    every second or two (measured on the clip, see testkit.faults.flicker_rule)."""
    video = clip(videos_dir / "car-detection.mp4", tmp_path_factory.mktemp("clip") / "cars-6s.mp4", 6)
    label, min_score = flicker_rule(demo_weights, video)
    return video, {"name": "watch", "classes": [label], "min_score": min_score, "min_frames": 1, "end_after": 0.5,
                   "cooldown": 0}


def data(tmp: Path, weights: Path, cameras: list[dict], rules: list[dict], mqtt: dict) -> dict:
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "model": {"weights": str(weights), "threads": 2},
        "cameras": cameras,
        "watchlist": rules,
        "events": {"database": str(tmp / "events.db")},
        "mqtt": mqtt,
    }


def build(tmp: Path, weights: Path, cameras: list[dict], rules: list[dict], mqtt: dict) -> Config:
    return parse_config(data(tmp, weights, cameras, rules, mqtt), tmp)


def cam(name: str, video: Path, fps: float = 5) -> dict:
    return {"name": name, "source": str(video), "loop": True, "fps": fps}


def sample(d: Daemon, name: str) -> float:
    return d.metrics.registry.get_sample_value(name) or 0.0


def check_discovery(topic: str, payload: dict, prefix: str, discovery: str) -> str:
    """The keys HA requires, the rules of the issues (the same entity id through object_id, read before HA
    2025.10, and default_entity_id, read from 2025.10; availability); returns the component."""
    assert topic.startswith(f"{discovery}/") and topic.endswith("/config"), topic
    component, uid = topic.split("/")[1:3]
    assert payload["unique_id"] == uid
    assert payload["default_entity_id"] == f"{component}.{payload['object_id']}"
    assert re.fullmatch(r"[a-z0-9_]+", payload["object_id"]), payload["object_id"]
    assert payload["object_id"].startswith(f"{uid.lower().split('_')[0]}_")     # the node id: no `_2` ids
    assert payload["availability"] == [{"topic": f"{prefix}/status", "payload_available": "online",
                                        "payload_not_available": "offline"}]
    device = payload["device"]
    assert device["identifiers"] and device["name"]
    assert payload["origin"]["name"] == "monitor"
    for key in REQUIRED[component]:
        assert payload.get(key) not in (None, ""), (topic, key)
    if component == "binary_sensor":
        assert payload["device_class"] in HA_BINARY_SENSOR_CLASSES
    return component


# ---------------------------------------------------------------------------------------------------------
# Every topic, every discovery payload, control


def test_every_topic_and_discovery_payload(tmp_path, demo_weights, footage, broker, daemons, subscribers) -> None:
    video, rule = footage
    prefix, ha = "t1", "ha1"
    dead = free_port()    # nothing listens here: the camera is down, with a reason
    sub = Subscriber(broker.port, (f"{prefix}/#", f"{ha}/#"))
    subscribers.append(sub)
    d = Daemon(build(tmp_path, demo_weights, [cam("cars", video), {"name": "yard", "source": f"rtsp://u:pw@127.0.0.1:{dead}/x", "backoff_max": 1}],
                     [rule], {"port": broker.port, "topic_prefix": prefix, "discovery_prefix": ha,
                              "label_keepalive": "1.5s", "client_id": "monitor-test-1", "control": True}))
    daemons.append(d)
    d.start(web=False)

    sub.wait_topic(f"{prefix}/status", "online")
    start = sub.wait_topic(f"{prefix}/cars/watch", "ON", timeout=20)
    assert start.retain
    end = sub.wait_topic(f"{prefix}/cars/watch", "OFF", timeout=20, after=sub.messages.index(start))
    assert end.retain
    wait_until(lambda: len([m for m in sub.on(f"{prefix}/cars/label")]) >= 3, timeout=10)
    sub.wait_topic(f"{prefix}/yard/state", "down", timeout=15)

    # status, retained
    assert sub.on(f"{prefix}/status")[0].retain
    # events: one JSON per start and end, the webhook's event dict (the end follows the OFF)
    sub.wait(lambda m: m.topic == f"{prefix}/events" and m.json()["kind"] == "end")
    events = [m.json() for m in sub.on(f"{prefix}/events")]
    assert not any(m.retain for m in sub.on(f"{prefix}/events"))
    kinds = [e["kind"] for e in events]
    assert kinds[:2] == ["start", "end"], kinds
    for e in events:
        assert {"id", "camera", "rule", "label", "score", "peak_score", "started_at", "ended_at",
                "snapshot"} <= set(e)
        assert (e["camera"], e["rule"], e["label"]) == ("cars", "watch", rule["classes"][0])
        # node.name, by default the host name (made a valid name)
        assert e["node"] == re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64].strip(".")
    assert events[0]["id"] == events[1]["id"] and events[1]["ended_at"] >= events[0]["started_at"]
    # snapshot: a JPEG, retained, published before the rule went ON
    snaps = sub.on(f"{prefix}/cars/snapshot")
    assert snaps and snaps[0].retain and snaps[0].payload[:3] == b"\xff\xd8\xff" and len(snaps[0].payload) > 5000
    assert snaps[0].at <= start.at
    # label: only on change, plus the keepalive (1.5 s) while it stays the same; attributes carry top-k, fps
    labels = sub.on(f"{prefix}/cars/label")
    assert not any(m.retain for m in labels)
    for a, b in zip(labels, labels[1:]):
        assert a.payload != b.payload or b.at - a.at >= 1.2, (a, b)
    attrs = sub.on(f"{prefix}/cars/label/attributes")[-1].json()
    assert attrs["label"] == attrs["top"][0]["label"] and len(attrs["top"]) == 3
    assert attrs["fps"] > 0 and attrs["latency_ms"] > 0
    assert {lbl.text for lbl in labels} <= {a.json()["label"] for a in sub.on(f"{prefix}/cars/label/attributes")}
    # camera states: up / down with the reason as an attribute (credentials redacted), retained
    assert sub.on(f"{prefix}/cars/state")[-1].text == "up"
    yard = sub.on(f"{prefix}/yard/state/attributes")[-1].json()
    assert yard["camera_state"] == "down" and yard["reason"] and "pw" not in json.dumps(yard)
    assert all(m.retain for m in sub.on(f"{prefix}/yard/state"))

    # discovery: retained, the keys HA requires, one device per camera, every entity's topic really fed
    retained = retained_now(broker.port, (f"{prefix}/#", f"{ha}/#"))
    configs = {t: m.json() for t, m in retained.items() if t.startswith(f"{ha}/")}
    components = sorted(check_discovery(t, p, prefix, ha) for t, p in configs.items())
    assert components == sorted(["sensor", "binary_sensor", "camera", "switch", "binary_sensor"] * 2), components
    by_device: dict[str, list[dict]] = {}
    for p in configs.values():
        by_device.setdefault(p["device"]["identifiers"][0], []).append(p)
    assert len(by_device) == 2
    rules = [p for p in configs.values() if p["unique_id"].endswith("_rule_watch")]
    assert len(rules) == 2 and all(p["device_class"] == "occupancy" for p in rules)
    for p in configs.values():
        fed = p.get("state_topic") or p.get("topic")
        if p["device"]["name"] == "cars" and not fed.endswith("/label"):
            assert fed in retained, f"{p['unique_id']}: nothing retained on {fed}"
    assert json.loads(retained[f"{prefix}/discovery_index"].payload) == sorted(configs)
    assert retained[f"{prefix}/cars/enabled/state"].text == "ON"
    assert retained[f"{prefix}/yard/watch"].text == "OFF"
    assert sample(d, "monitor_mqtt_connected") == 1 and sample(d, "monitor_mqtt_dropped_total") == 0

    # Home Assistant restarts: discovery is published again
    mark = sub.mark()
    sub.publish(f"{ha}/status", "online")
    sub.wait_topic(f"{ha}/switch/t1_cars_enabled/config", after=mark)

    # control: OFF pauses classification (echoed, persisted), ON resumes
    mark = sub.mark()
    sub.publish(f"{prefix}/cars/enabled/set", "OFF")
    assert sub.wait_topic(f"{prefix}/cars/enabled/state", after=mark).text == "OFF"
    time.sleep(0.5)
    paused_at = classified(d, "cars")
    time.sleep(1.5)
    assert classified(d, "cars") == paused_at
    state_file = tmp_path / "events-paused.json"
    assert json.loads(state_file.read_text()) == {"paused": ["cars"]}
    mark = sub.mark()
    sub.publish(f"{prefix}/cars/enabled/set", "bogus")
    sub.publish(f"{prefix}/nosuch/enabled/set", "ON")
    sub.publish(f"{prefix}/cars/enabled/set", "on")
    assert sub.wait_topic(f"{prefix}/cars/enabled/state", after=mark).text == "ON"
    assert wait_until(lambda: classified(d, "cars") > paused_at + 2, timeout=10)
    assert json.loads(state_file.read_text()) == {"paused": []}

    # a clean stop: the open event ends (OFF) and the status goes offline, retained
    mark = sub.mark()
    d.stop()
    assert sub.wait_topic(f"{prefix}/status", after=mark).text == "offline"
    assert retained_now(broker.port, (f"{prefix}/status",))[f"{prefix}/status"].text == "offline"


def test_paused_survives_restart_and_removed_entities_are_cleared(tmp_path, demo_weights, footage, broker,
                                                                  daemons, subscribers) -> None:
    video, rule = footage
    prefix, ha = "t2", "ha2"
    mqtt = {"port": broker.port, "topic_prefix": prefix, "discovery_prefix": ha, "client_id": "monitor-test-2",
            "control": True}
    sub = Subscriber(broker.port, (f"{prefix}/#", f"{ha}/#"))
    subscribers.append(sub)
    first = Daemon(build(tmp_path, demo_weights, [cam("a", video), cam("b", video), cam("c", video)], [rule], mqtt))
    daemons.append(first)
    first.start(web=False)
    sub.wait_topic(f"{ha}/camera/t2_c_snapshot/config")
    sub.publish(f"{prefix}/b/enabled/set", "OFF")
    sub.wait_topic(f"{prefix}/b/enabled/state", "OFF")
    first.stop()

    # restarted without camera c: its configs (a previous run's, found through the retained index) are cleared;
    # b is still paused
    second = Daemon(build(tmp_path, demo_weights, [cam("a", video), cam("b", video)], [rule], mqtt))
    daemons.append(second)
    mark = sub.mark()
    second.start(web=True)
    c_configs = [t for t in json.loads(sub.on(f"{prefix}/discovery_index")[0].payload) if "_c_" in t]
    assert len(c_configs) == 5
    for t in c_configs:
        assert sub.wait_topic(t, b"", after=mark).retain
    assert sub.wait_topic(f"{prefix}/b/enabled/state", after=mark).text == "OFF"
    assert second.worker.paused == {"b"}
    with urllib.request.urlopen(f"http://127.0.0.1:{second.web.port}/api/status", timeout=10) as resp:
        status = json.load(resp)
    assert {c["name"]: c["paused"] for c in status["cameras"]} == {"a": False, "b": True}
    wait_until(lambda: classified(second, "a") >= 5, timeout=15)
    assert classified(second, "b") == 0
    retained = retained_now(broker.port, (f"{ha}/#",))
    assert not [t for t in retained if "_c_" in t]
    assert len(retained) == 10

    # reload without the rule and without camera b: their configs and retained states are cleared
    mark = sub.mark()
    second.reload(build(tmp_path, demo_weights, [cam("a", video)], [], mqtt))
    for t in (f"{ha}/binary_sensor/t2_a_rule_watch/config", f"{ha}/switch/t2_b_enabled/config",
              f"{prefix}/b/enabled/state", f"{prefix}/a/watch"):
        assert sub.wait_topic(t, b"", after=mark).retain
    retained = retained_now(broker.port, (f"{ha}/#", f"{prefix}/#"))
    assert sorted(t for t in retained if t.startswith(ha)) == sorted(
        f"{ha}/{c}/t2_a_{k}/config" for c, k in
        (("sensor", "label"), ("binary_sensor", "connected"), ("camera", "snapshot"), ("switch", "enabled")))
    assert not [t for t in retained if t.startswith(f"{prefix}/b/")]


def test_client_queue_bounds_and_resync_of_many_retained_values(broker, subscribers) -> None:
    """MqttClient alone: before the first connect, retained values only wait in the map (no queue slot), other
    messages fill the bounded queue and the rest are dropped and counted; after the connect, the queued ones go
    out in order and every retained value (more than paho's in-flight window) reaches the broker."""
    metrics = Metrics()
    client = MqttClient(MqttConfig(port=broker.port, topic_prefix="t6", client_id="monitor-test-6", queue_size=10),
                        metrics)
    sub = Subscriber(broker.port, ("t6/#",))
    subscribers.append(sub)
    for i in range(300):
        client.retain(f"t6/r/{i}", f"v{i}")
    client.retain("t6/r/0", "v0-new")
    sent = [client.publish("t6/live", f"m{i}") for i in range(25)]
    assert sent == [True] * 10 + [False] * 15
    assert metrics.registry.get_sample_value("monitor_mqtt_dropped_total") == 15
    client.start()
    try:
        sub.wait_topic("t6/r/299", "v299", timeout=15)
        assert [m.text for m in sub.on("t6/live")] == [f"m{i}" for i in range(10)]
        assert sub.on("t6/status")[0].text == "online"
        held = retained_now(broker.port, ("t6/r/#",))
        assert len(held) == 300 and held["t6/r/0"].text == "v0-new"
        assert metrics.registry.get_sample_value("monitor_mqtt_connected") == 1
    finally:
        client.stop(timeout=2)
    assert retained_now(broker.port, ("t6/status",))["t6/status"].text == "offline"
    assert metrics.registry.get_sample_value("monitor_mqtt_connected") == 0


# ---------------------------------------------------------------------------------------------------------
# Faults


def test_broker_down_at_start_then_killed_and_restarted(tmp_path, demo_weights, footage, brokers, daemons,
                                                        subscribers, caplog) -> None:
    video, rule = footage
    port = free_port()
    prefix = "t3"
    d = Daemon(build(tmp_path, demo_weights, [cam("cars", video)], [rule],
                     {"port": port, "topic_prefix": prefix, "discovery_prefix": "ha3", "queue_size": 4,
                      "client_id": "monitor-test-3", "control": True}))
    daemons.append(d)
    caplog.set_level(logging.INFO, logger="monitor")
    d.start(web=False)
    # the pipeline runs on while the broker is away; the bounded queue drops and counts
    assert wait_until(lambda: classified(d, "cars") >= 10, timeout=15)
    assert wait_until(lambda: sample(d, "monitor_mqtt_dropped_total") > 0, timeout=10)
    assert sample(d, "monitor_mqtt_connected") == 0
    cannot = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(cannot) == 1, [r.getMessage() for r in caplog.records]
    assert f"127.0.0.1:{port}" in cannot[0].getMessage() and "refused" in cannot[0].getMessage().lower()

    b = Mosquitto(port, tmp_path / "broker").start()
    brokers.append(b)
    assert wait_until(lambda: sample(d, "monitor_mqtt_connected") == 1, timeout=20)
    # what the full queue dropped is not lost for good: the retained state is re-published on connect
    def all_configs() -> dict | None:
        held = retained_now(port, (f"{prefix}/#", "ha3/#"))
        return held if len([t for t in held if t.startswith("ha3/")]) == 5 else None

    retained = wait_until(all_configs, timeout=10)
    assert retained, retained_now(port, (f"{prefix}/#", "ha3/#"))
    assert retained[f"{prefix}/status"].text == "online"
    assert retained[f"{prefix}/cars/state"].text == "up"
    assert retained[f"{prefix}/cars/enabled/state"].text == "ON"

    # the broker dies (SIGKILL) and a fresh one (no retained messages) takes its port: reconnect, re-publish
    b.kill()
    assert wait_until(lambda: sample(d, "monitor_mqtt_connected") == 0, timeout=10)
    before = classified(d, "cars")
    assert wait_until(lambda: classified(d, "cars") > before + 5, timeout=10)
    b.start()
    assert wait_until(lambda: sample(d, "monitor_mqtt_connected") == 1, timeout=20)
    sub = Subscriber(port, (f"{prefix}/#", "ha3/#"))
    subscribers.append(sub)
    sub.wait_topic(f"{prefix}/status", "online")
    sub.wait_topic("ha3/switch/t3_cars_enabled/config")
    sub.wait_topic(f"{prefix}/cars/label", timeout=15)
    assert any("lost the connection" in r.getMessage() for r in caplog.records)


def test_wrong_credentials_one_error_and_right_ones_connect(tmp_path, demo_weights, footage, brokers, daemons,
                                                          subscribers, caplog) -> None:
    video, rule = footage
    b = Mosquitto(free_port(), tmp_path / "broker", users={"monitor": "s3cret-Pass", "ha": "ha-pass"}).start()
    brokers.append(b)
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    right = tmp_path / "mqtt-password"
    right.write_text("s3cret-Pass\n")
    caplog.set_level(logging.DEBUG)
    bad = Daemon(build(tmp_path, demo_weights, [cam("cars", video)], [rule],
                       {"port": b.port, "username": "monitor", "password_file": str(wrong), "topic_prefix": "t4",
                        "client_id": "monitor-test-4"}))
    daemons.append(bad)
    bad.start(web=False)
    # paho retries with backoff (1 s, 2 s, ...): several refusals, one error line; the daemon keeps working
    assert wait_until(lambda: classified(bad, "cars") >= 10, timeout=15)
    time.sleep(3.5)
    refused = [r for r in caplog.records if "refused the connection" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR, [r.getMessage() for r in caplog.records]
    assert "not authori" in refused[0].getMessage().lower() and "mqtt.password_file" in refused[0].getMessage()
    assert sample(bad, "monitor_mqtt_connected") == 0 and bad.ready()
    text = "\n".join(r.getMessage() for r in caplog.records)
    metrics = generate_latest(bad.metrics.registry).decode()
    for secret in ("not-the-password", "s3cret-Pass"):
        assert secret not in text and secret not in metrics and secret not in repr(bad.config)
    bad.stop()

    good = Daemon(build(tmp_path / "good", demo_weights, [cam("cars", video)], [rule],
                        {"port": b.port, "username": "monitor", "password_file": str(right), "topic_prefix": "t4",
                         "client_id": "monitor-test-4b"}))
    daemons.append(good)
    sub = Subscriber(b.port, ("t4/#",), username="ha", password="ha-pass")
    subscribers.append(sub)
    good.start(web=False)
    sub.wait_topic("t4/status", "online")
    sub.wait_topic("t4/cars/label", timeout=15)


def test_sigkill_of_the_daemon_process_publishes_the_last_will(tmp_path, demo_weights, footage, broker,
                                                               subscribers) -> None:
    video, rule = footage
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(data(tmp_path, demo_weights, [cam("cars", video)], [rule], {
        "port": broker.port, "topic_prefix": "t5", "discovery_prefix": "ha5", "client_id": "monitor-test-5"})))
    sub = Subscriber(broker.port, ("t5/#",))
    subscribers.append(sub)
    proc = DaemonProcess(cfg)
    try:
        proc.wait_line(r"mqtt: connected to ", START_TIMEOUT)
        sub.wait_topic("t5/status", "online")
        sub.wait_topic("t5/cars/label", timeout=15)
        mark = sub.mark()
        proc.kill()
        will = sub.wait_topic("t5/status", after=mark, timeout=10)
        assert will.text == "offline" and will.retain
    finally:
        proc.kill()
    assert retained_now(broker.port, ("t5/status",))["t5/status"].text == "offline"


# ---------------------------------------------------------------------------------------------------------
# Config


def test_config_section_errors(tmp_path, demo_weights) -> None:
    def errors(mqtt: Any, rules: list[dict] | None = None) -> list[str]:
        with pytest.raises(ConfigError) as e:
            parse_config(data(tmp_path, demo_weights, [{"name": "a", "source": "x.mp4"}], rules or [], mqtt), tmp_path)
        return e.value.errors

    assert errors({"port": 0, "topic_prefix": "a/#", "password": "x"}) == [
        "mqtt.port: must be between 1 and 65535 (got 0)",
        "mqtt.topic_prefix: must be an MQTT topic without wildcards (+ #), blanks or control characters (got 'a/#')",
        "mqtt.password: unknown key (allowed: host, port, username, password_file, tls, topic_prefix, "
        "discovery_prefix, client_id, label_keepalive, queue_size, control)"]
    assert errors({"password_file": "/nonexistent/pw"}) == ["mqtt.password_file: needs mqtt.username"]
    assert errors({"username": "u", "password_file": "/nonexistent/pw"}) == [
        "mqtt.password_file: cannot read '/nonexistent/pw': no such file"]
    assert errors({"discovery_prefix": "monitor"}) == [
        "mqtt.discovery_prefix: must differ from mqtt.topic_prefix (got 'monitor')"]
    found = errors({}, [{"name": "label", "classes": ["dog"]}])
    assert found == ["watchlist[0].name: 'label' is taken by an MQTT topic of every camera "
                     "(reserved with mqtt: label, snapshot, state, enabled)"]
    cfg = parse_config(data(tmp_path, demo_weights, [{"name": "a", "source": "x.mp4"}], [], {"discovery_prefix": None}),
                       tmp_path)
    assert cfg.mqtt is not None and cfg.mqtt.discovery_prefix is None and cfg.mqtt.client_id.startswith("monitor-")
    plain = dict(data(tmp_path, demo_weights, [{"name": "a", "source": "x.mp4"}], [], {}))
    del plain["mqtt"]
    assert parse_config(plain, tmp_path).mqtt is None


def test_readme_shows_the_discovery_payload_we_publish() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## MQTT and Home Assistant", 1)[1].split("\n## ", 1)[0]
    shown = json.loads(re.search(r"```json\n(.+?)\n```", section, re.DOTALL).group(1))
    topic = "homeassistant/binary_sensor/monitor_driveway_rule_vehicle/config"
    assert topic in section
    ours = discovery_configs(Topics("monitor"), "homeassistant", ["driveway"], {"driveway": ["vehicle"]})[topic]
    for payload in (shown, ours):   # the version changes with releases; the shape must not
        payload["device"].pop("sw_version")
        payload["origin"].pop("sw_version")
    assert shown == ours
    check_discovery(topic, shown, "monitor", "homeassistant")
