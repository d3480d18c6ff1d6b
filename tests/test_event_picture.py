"""An event's picture is drawn and JPEG-encoded once: the snapshot file and the MQTT snapshot are the same bytes.

Real parts: the SinkSet with its snapshot and webhook sinks, the MQTT publisher as the daemon wires it (a sink
listener) on a real MqttClient, a real mosquitto on 127.0.0.1, a webhook receiver, SQLite. Every call of OpenCV's
JPEG encoder in the process is counted.
"""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from monitor.alerts.event import Event
from monitor.alerts.events import EventStore
from monitor.alerts.sinks import SinkSet
from monitor.alerts.snapshot_files import clean_snapshot_path
from monitor.config.types import AlertsConfig, MqttConfig, WebhookConfig
from monitor.core.metrics import Metrics
from monitor.inference.classifier import Prediction
from monitor.inference.results import ResultBoard
from monitor.mqtt.client import MqttClient
from monitor.mqtt.publisher import Publisher
from monitor.mqtt.topics import Topics
from testkit.mqtt import Mosquitto, Subscriber
from testkit.webhook import Receiver

# What the webhook POSTs and the MQTT events topic carries, unchanged by the typed Event.
WIRE_KEYS = ["id", "camera", "rule", "label", "score", "peak_score", "started_at", "ended_at", "snapshot",
             "clip_url", "kind", "display"]


def frame() -> np.ndarray:
    """A 320x240 frame with detail (JPEG sizes and decoded differences mean something)."""
    rng = np.random.default_rng(5)
    img = (np.add.outer(np.arange(240), np.arange(320)) % 256).astype(np.uint8)[..., None].repeat(3, axis=2)
    return cv2.add(img, rng.integers(0, 8, img.shape, dtype=np.uint8))


@pytest.mark.parametrize("label, encodes", [("dog", 1), ("porch:package", 2)])
def test_one_encode_per_event_and_mqtt_carries_the_snapshot_files_bytes(
        tmp_path: Path, broker: Mosquitto, subscribers: list, monkeypatch: pytest.MonkeyPatch, label: str,
        encodes: int) -> None:
    """A start reaches the snapshot sink, the webhook and MQTT: one encode of the picture with the overlay (plus
    one of the clean frame for a custom-class event), whichever sink asked first; the retained MQTT snapshot is
    byte for byte the file; the events JSON is the webhook's body."""
    encoded: list[tuple[int, ...]] = []
    real_imencode = cv2.imencode

    def counting_imencode(ext: str, img: np.ndarray, params: object = ()) -> tuple[bool, np.ndarray]:
        encoded.append(img.shape)
        return real_imencode(ext, img, params)

    monkeypatch.setattr(cv2, "imencode", counting_imencode)
    prefix = f"pic{encodes}"
    metrics = Metrics()
    store = EventStore(tmp_path / "events.db", metrics)
    client = MqttClient(MqttConfig(port=broker.port, topic_prefix=prefix, client_id=f"monitor-test-{prefix}"),
                        metrics)
    publisher = Publisher(client, Topics(prefix), ResultBoard(), dict, keepalive=60.0)
    publisher.set_pairs({("yard", "dogs")})
    sub = Subscriber(broker.port, (f"{prefix}/#",))
    subscribers.append(sub)
    image = frame()
    with Receiver("ok") as rx:
        sinks = SinkSet(AlertsConfig(snapshots=tmp_path / "snaps",
                                     webhook=WebhookConfig(url=rx.url, timeout=2.0, retries=0)),
                        metrics, store, listeners=[("mqtt", publisher.on_event)])
        client.start()
        sinks.start()
        try:
            ev = store.insert(Event(camera="yard", rule="dogs", label=label, score=0.9, peak_score=0.9,
                                    started_at=time.time()))
            sinks.emit("start", ev, image, predictions=[Prediction("dog", 208, 0.9)])
            snapshot = sub.wait_topic(f"{prefix}/yard/snapshot", timeout=10)
            events = sub.wait(lambda m: m.topic == f"{prefix}/events", timeout=10)
            assert rx.wait_for(1, 5.0)
        finally:
            sinks.stop(5.0)
            client.stop(timeout=2)
    row = store.get(ev.id)
    store.close()
    assert row is not None and row.snapshot
    path = Path(row.snapshot)
    data = path.read_bytes()
    assert data[:3] == b"\xff\xd8\xff" and snapshot.retain
    assert snapshot.payload == data                                  # the same bytes, not a second encode
    assert encoded == [image.shape] * encodes, encoded               # one encode per picture, in the process
    drawn = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == image.shape and drawn[-2, -2, 2] > 200     # the overlay's red event banner
    clean = clean_snapshot_path(path)
    if encodes == 2:      # a custom-class event: the frame as captured, for labelling, encoded once too
        plain = cv2.imread(str(clean))
        assert plain is not None and float(np.abs(plain.astype(int) - image.astype(int)).mean()) < 4.0
        assert plain[-2, -2, 2] < 120                                 # no banner
    else:
        assert not clean.exists()
    # The wire: the webhook's body and the MQTT events JSON are one document, with the keys they always had.
    body = rx.requests[0]
    assert list(body) == WIRE_KEYS and events.json() == body
    assert (body["id"], body["label"], body["kind"], body["snapshot"]) == (ev.id, label, "start", str(path))
    assert metrics.registry.get_sample_value("monitor_sink_failures_total", {"sink": "snapshot"}) in (None, 0.0)
