"""The daemon as a real Home Assistant shows it (issue 23): HA 2024.3.3 (the newest on Python 3.11) in a venv of
its own (testkit.hass: built once with uv, cached under ~/.cache/monitor-ha-venv), a real mosquitto, the daemon as
a process. MQTT is set up through HA's config flow, as a user does; everything is checked through HA's REST API:
the entities with their ids, states and attributes, the device, the switch pausing the camera, SIGKILL of the
daemon making every entity unavailable (the last will) and a restart bringing them back, HA restarting (twice,
the second time sooner than the daemon's resync interval) and finding the label sensors' states within 5 s of
its MQTT birth message (`homeassistant/status` `online`, watched on the broker), and no MQTT warning or error
in HA's log (nor an integration that failed to set up).

Supported Home Assistant: 2024.3 to the current release. The payloads are the same for all of them; what an
older one ignores, without a word in its log:
- `default_entity_id` (read from 2025.10): older ones name the entity from `object_id`, which we send too, so
  the ids are `<domain>.<prefix>_<camera>_<key>` everywhere (2026.4 drops `object_id`);
- the enum sensor's `options` (read from 2024.9, HA PR #123248): 2024.3 to 2024.8 show the custom class sensor
  with its states but no list of options (asserted below against HA_VERSION).
Older than 2024.3 is not tested (2024.3 is the newest HA that runs on the Python of our CI).

In the default run: on a machine without the cached venv the test builds it first (uv, from the package index:
see testkit.hass.ha_venv for the figures), and skips, saying so, when no package index is reachable.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from testkit.hass import HA_VERSION, HomeAssistant, IndexUnreachable, ha_venv, write_config
from testkit.mqtt import Mosquitto, Subscriber, retained_now
from testkit.process import DaemonProcess
from testkit.rtsp import free_port
from testkit.waiting import wait_until
from tests.test_mqtt_ha import PORCH, porch_head, still  # noqa: F401  (fixtures)

START_TIMEOUT = 60.0
LABELLED_WITHIN = 5.0    # seconds from HA's MQTT birth message to the label sensors' states (issue 23)
FRONT = ["sensor.monitor_front_label", "sensor.monitor_front_custom_porch", "binary_sensor.monitor_front_connected",
         "binary_sensor.monitor_front_rule_vehicle", "camera.monitor_front_snapshot", "switch.monitor_front_enabled"]
YARD = ["sensor.monitor_yard_label", "binary_sensor.monitor_yard_connected", "binary_sensor.monitor_yard_rule_vehicle",
        "camera.monitor_yard_snapshot", "switch.monitor_yard_enabled"]
GONE = ("unavailable", "unknown")


@pytest.fixture(scope="module")
def hass_python() -> Path:
    try:
        python, built = ha_venv()
    except IndexUnreachable as e:
        pytest.skip(f"Home Assistant {HA_VERSION} is not installed here and cannot be: {e}")
    print(f"\nHome Assistant {HA_VERSION} venv: {'built in %.0f s' % built if built else 'cached'} ({python})")
    return python


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(free_port(), tmp_path / "mosquitto").start()
    yield b
    b.kill()


def daemon_config(tmp: Path, weights: Path, still: Path, head: Path, port: int) -> Path:  # noqa: F811
    cfg = tmp / "monitor.yaml"
    cfg.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": 0},
        "model": {"weights": str(weights), "threads": 2},
        "cameras": [{"name": "front", "source": str(still), "loop": True, "fps": 5},
                    {"name": "yard", "source": f"rtsp://127.0.0.1:{free_port()}/x", "backoff_max": 1}],
        "watchlist": [{"name": "vehicle", "classes": ["sports car"], "min_score": 0.5}],
        "custom_classes": [{"name": "porch", "head": str(head), "cameras": ["front"]}],
        "events": {"database": str(tmp / "events.db")},
        "mqtt": {"port": port, "topic_prefix": "monitor", "discovery_prefix": "homeassistant",
                 "control": True, "client_id": "monitor-ha-real"},
    }))
    return cfg


# The default 300 s per test includes the venv's build on a machine without it (about 60 s here, uv on a fresh
# machine); a slow package index must not turn that into a timeout of a test that would pass.
@pytest.mark.timeout(600)
def test_home_assistant_shows_every_entity_and_follows_the_daemon(  # noqa: F811 (still, porch_head: fixtures)
        tmp_path, hass_python, demo_weights, still, porch_head, broker) -> None:
    port = free_port()
    ha = HomeAssistant(hass_python, tmp_path / "ha", port, write_config(tmp_path / "ha", port))
    proc: DaemonProcess | None = None
    begin = time.monotonic()

    def lap(what: str) -> None:      # where the test's time goes (shown with -s, or on a failure)
        print(f"{time.monotonic() - begin:6.1f} s  {what}")
    try:
        # the daemon and HA start side by side; MQTT is set up in HA once the daemon is connected: HA connects to a
        # broker that already holds the configs, and has the label states (not retained) only from the daemon's
        # answer to its `online`
        proc = DaemonProcess(daemon_config(tmp_path, demo_weights, still, porch_head, broker.port))
        took = ha.start()
        lap(f"HA running ({took:.1f} s)")
        assert "frontend" in ha.get("/api/config")["components"]        # not recovery mode
        proc.wait_line(r"mqtt: connected to ", START_TIMEOUT)
        lap("daemon connected")
        ha.setup_mqtt(broker.port)

        # every entity, under the ids the README gives, with the states the daemon publishes
        def shown() -> dict[str, dict]:
            states = ha.states()
            return {e: states[e] for e in FRONT + YARD if e in states}
        assert wait_until(lambda: all(s["state"] not in GONE for e, s in shown().items()
                                      if e not in ("camera.monitor_yard_snapshot", "sensor.monitor_yard_label",
                                                   "camera.monitor_front_snapshot"))
                          and len(shown()) == 11, timeout=60), (shown(), ha.tail())
        lap("every entity shown")
        # HA writes a sensor's state and its JSON attributes as two updates: wait for the attributes too
        assert wait_until(lambda: "label" in ha.states()["sensor.monitor_front_label"]["attributes"], timeout=15), \
            ha.states()["sensor.monitor_front_label"]
        states = ha.states()
        assert not [e for e in states if re.match(r"\w+\.(monitor_)?(front|yard)_.*_2$", e)]
        assert sorted(e for e in states if "front" in e or "yard" in e) == sorted(FRONT + YARD)
        retained = retained_now(broker.port, ("monitor/#",))
        label = states["sensor.monitor_front_label"]
        assert label["attributes"]["label"] == label["attributes"]["top"][0]["label"] == label["state"]
        assert label["attributes"]["friendly_name"] == "front Label"
        porch = states["sensor.monitor_front_custom_porch"]
        assert porch["state"] in PORCH and porch["attributes"]["device_class"] == "enum"
        assert set(porch["attributes"]["scores"]) == set(PORCH)
        assert ("options" in porch["attributes"]) == (tuple(map(int, HA_VERSION.split(".")[:2])) >= (2024, 9))
        front = states["binary_sensor.monitor_front_connected"]
        assert front["state"] == "on" and front["attributes"]["camera_state"] == "up"
        yard = states["binary_sensor.monitor_yard_connected"]
        assert yard["state"] == "off" and yard["attributes"]["camera_state"] in ("down", "connecting")
        assert yard["attributes"]["reason"]
        assert states["binary_sensor.monitor_front_rule_vehicle"]["state"] == "off"
        assert states["switch.monitor_front_enabled"]["state"] == "on"
        assert retained["monitor/front/enabled/state"].text == "ON"
        # one device per camera, holding its entities
        assert ha.template("{{ device_attr('sensor.monitor_front_label', 'name') }}") == "front"
        assert ha.template("{{ device_entities(device_id('sensor.monitor_front_label')) | sort | join(',') }}") \
            == ",".join(sorted(FRONT))

        # the switch pauses the camera: the daemon says so and echoes OFF
        mark = len(proc.lines)
        ha.post("/api/services/switch/turn_off", {"entity_id": "switch.monitor_front_enabled"})
        proc.wait_line(r"PAUSED|paused", 10, start=mark)
        assert wait_until(lambda: ha.states()["switch.monitor_front_enabled"]["state"] == "off", timeout=10)
        assert retained_now(broker.port, ("monitor/front/enabled/state",))["monitor/front/enabled/state"].text == "OFF"
        ha.post("/api/services/switch/turn_on", {"entity_id": "switch.monitor_front_enabled"})
        assert wait_until(lambda: ha.states()["switch.monitor_front_enabled"]["state"] == "on", timeout=10)
        lap("switch paused and resumed the camera")

        # SIGKILL: the last will makes every entity unavailable; a restart brings them back
        proc.kill()
        t0 = time.monotonic()
        assert wait_until(lambda: len(shown()) == 11 and all(s["state"] == "unavailable" for s in shown().values()),
                          timeout=10), shown()
        gone_after = time.monotonic() - t0
        lap(f"every entity unavailable {gone_after:.2f} s after the daemon's SIGKILL")
        proc = DaemonProcess(daemon_config(tmp_path, demo_weights, still, porch_head, broker.port))
        proc.wait_line(r"mqtt: connected to ", START_TIMEOUT)
        assert wait_until(lambda: shown()["binary_sensor.monitor_front_connected"]["state"] == "on"
                          and shown()["sensor.monitor_front_label"]["state"] not in GONE, timeout=30), shown()
        lap("daemon restarted, entities back")

        # Home Assistant restarts: the label sensors have their states again soon after its MQTT birth message
        # (the daemon's answer to `online`), not at the next keepalive. Measured from the birth, as seen on the
        # broker: HA connects to MQTT while it starts, and sends `online` once running and its discovery settled.
        sub = Subscriber(broker.port, ("homeassistant/status", "monitor/front/label"))
        try:
            mark = sub.mark()
            stopping = time.monotonic()
            ha.stop()
            will = sub.wait_topic("homeassistant/status", "offline", timeout=10, after=mark)  # its will
            started = time.monotonic()
            ha.start()
            running = time.monotonic()
            birth = sub.wait_topic("homeassistant/status", "online", timeout=30, after=mark)
            labelled = wait_until(lambda: all(shown()[e]["state"] not in GONE for e in
                                              ("sensor.monitor_front_label", "sensor.monitor_front_custom_porch")),
                                  timeout=LABELLED_WITHIN + 10, interval=0.05)
            states_at = time.monotonic()
            sent = sub.wait(lambda m: m.topic == "monitor/front/label" and m.at >= birth.at, timeout=1)
            connected = ha.logged_at(r"Connected to MQTT server", since=started)
            lap(f"HA restarted: stopped in {started - stopping:.1f} s (its will 'offline' on the broker at "
                f"{will.at - stopping:.1f} s); from HA's process start: MQTT connected {connected - started:.2f} s, "
                f"running {running - started:.2f} s, birth {birth.at - started:.2f} s; from the birth: our label "
                f"on the broker {sent.at - birth.at:.2f} s, in HA's states {states_at - birth.at:.2f} s")
            assert labelled, shown()
            assert states_at - birth.at <= LABELLED_WITHIN, states_at - birth.at
        finally:
            sub.close()

        # HA set up every integration it was asked to (the venv holds every requirement HA imports)
        assert not ha.failed_setups(), "\n".join(ha.failed_setups())

        # nothing about our payloads in HA's log
        bad = [line for line in ha.output.read_text(errors="replace").splitlines()
               if re.search(r" (WARNING|ERROR) .*\[homeassistant\.components\.mqtt", line)]
        assert not bad, "\n".join(bad)
        lap("HA's log checked")
    finally:
        if proc is not None:
            proc.kill()
        ha.stop()
