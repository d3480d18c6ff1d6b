"""MQTT over TLS with a custom CA and a client certificate, against a real mosquitto on 127.0.0.1.

The certificates are made here with the `openssl` command line (testkit/certs.py): a CA signing the broker's
certificate (for 127.0.0.1) and a client certificate; a second, unrelated CA is the wrong one. The broker has a
plain listener, where the test subscribes as Home Assistant would, and a TLS listener requiring a client
certificate, where the daemon connects.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from monitor.config.loader import ConfigError, load_config, parse_config
from monitor.config.types import Config
from monitor.daemon import Daemon
from testkit.certs import Issued, encrypt_key, issue, make_ca
from testkit.mqtt import Mosquitto, Subscriber, TlsListener
from testkit.rtsp import free_port
from testkit.waiting import wait_until
from tests.daemon_helpers import classified


class Pki:
    def __init__(self, folder: Path) -> None:
        self.ca = make_ca(folder, "test-ca")
        self.server = issue(self.ca, folder, "broker", server=True)
        self.client = issue(self.ca, folder, "monitor", server=False)
        self.other = issue(self.ca, folder, "other", server=False)
        self.wrong_ca = make_ca(folder / "wrong", "wrong-ca")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    tls = TlsListener(free_port(), pki.ca.cert, pki.server.cert, pki.server.key, require_certificate=True)
    b = Mosquitto(free_port(), tmp_path_factory.mktemp("mosquitto-tls"), tls=tls).start()
    yield b
    b.kill()


def build(tmp: Path, weights: Path, video: Path, mqtt: dict[str, Any]) -> Config:
    return parse_config({
        "server": {"host": "127.0.0.1", "port": 0},
        "model": {"weights": str(weights), "threads": 2},
        "cameras": [{"name": "cars", "source": str(video), "loop": True, "fps": 5}],
        "events": {"database": str(tmp / "events.db")},
        "mqtt": mqtt,
    }, tmp)


@pytest.fixture(scope="module")
def video(videos_dir: Path) -> Path:
    return videos_dir / "car-detection.mp4"


def tls_mqtt(broker: Mosquitto, prefix: str, ca: Issued, client: Issued | None) -> dict[str, Any]:
    tls = {"ca_file": str(ca.cert)}
    if client is not None:
        tls.update(cert_file=str(client.cert), key_file=str(client.key))
    return {"host": "127.0.0.1", "port": broker.tls.port, "tls": tls, "topic_prefix": prefix,
            "client_id": f"monitor-{prefix}"}


def test_custom_ca_and_client_certificate_connect_and_publish(tmp_path, demo_weights, video, pki, broker, daemons,
                                                              subscribers, caplog) -> None:
    sub = Subscriber(broker.port, ("s1/#", "homeassistant/sensor/s1_cars_label/config"))
    subscribers.append(sub)
    caplog.set_level(logging.INFO, logger="monitor")
    d = Daemon(build(tmp_path, demo_weights, video, tls_mqtt(broker, "s1", pki.ca, pki.client)))
    daemons.append(d)
    d.start(web=False)
    sub.wait_topic("s1/status", "online")
    sub.wait_topic("homeassistant/sensor/s1_cars_label/config")
    sub.wait_topic("s1/cars/label", timeout=15)
    assert d.metrics.registry.get_sample_value("monitor_mqtt_connected") == 1
    assert any(f"connecting to 127.0.0.1:{broker.tls.port} (TLS)" in r.getMessage() for r in caplog.records)
    # the broker saw a TLS client that presented the certificate (mosquitto logs the client id per connection)
    log = (broker.dir / "mosquitto.log").read_text()
    assert f"on port {broker.tls.port}" in log and "as monitor-s1" in log
    d.stop()


def test_wrong_ca_or_no_client_certificate_one_error_line_and_the_daemon_runs_on(
        tmp_path, demo_weights, video, pki, broker, daemons, caplog) -> None:
    caplog.set_level(logging.INFO)
    wrong = Daemon(build(tmp_path / "a", demo_weights, video, tls_mqtt(broker, "s2", pki.wrong_ca, pki.client)))
    bare = Daemon(build(tmp_path / "b", demo_weights, video, tls_mqtt(broker, "s3", pki.ca, None)))
    daemons.extend([wrong, bare])
    wrong.start(web=True)
    bare.start(web=False)
    # paho retries with backoff (1 s, 2 s, ...): several failed handshakes, one error line each
    assert wait_until(lambda: classified(wrong, "cars") >= 10 and classified(bare, "cars") >= 10, timeout=20)
    time.sleep(3.5)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    refused = [m for m in errors if f"127.0.0.1:{broker.tls.port}" in m and "certificate was refused" in m]
    assert len(refused) == 1 and "mqtt.tls.ca_file" in refused[0], errors
    required = [m for m in errors if "requires a client certificate" in m]
    assert len(required) == 1 and "mqtt.tls.cert_file" in required[0], errors
    assert len(errors) == 2, errors
    for d in (wrong, bare):
        assert d.metrics.registry.get_sample_value("monitor_mqtt_connected") == 0 and d.ready()
    # the rest of the daemon is unaffected: the HTTP port answers
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{wrong.web.port}/healthz", timeout=10) as resp:
        assert resp.status == 200


def test_tls_config_errors_name_the_key_the_file_and_the_line(tmp_path, pki) -> None:
    encrypted = encrypt_key(pki.client.key, tmp_path / "encrypted.key", "s3cret")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")

    def errors(tls: Any) -> list[str]:
        with pytest.raises(ConfigError) as e:
            parse_config({"cameras": [{"name": "a", "source": "x.mp4"}], "mqtt": {"tls": tls}}, tmp_path)
        return e.value.errors

    assert errors({"ca_file": "missing-ca.pem"}) == [
        f"mqtt.tls.ca_file: cannot read '{tmp_path / 'missing-ca.pem'}': no such file"]
    assert errors({"ca_file": str(junk)}) == [
        f"mqtt.tls.ca_file: '{junk}' holds no PEM certificate (-----BEGIN CERTIFICATE-----)"]
    assert errors({"key_file": str(pki.client.key)}) == ["mqtt.tls.key_file: needs mqtt.tls.cert_file"]
    mismatch = errors({"cert_file": str(pki.client.cert), "key_file": str(pki.other.key)})
    assert len(mismatch) == 1 and mismatch[0].startswith(
        f"mqtt.tls.key_file: cannot load client certificate '{pki.client.cert}' with key '{pki.other.key}': ")
    assert "mismatch" in mismatch[0].lower()
    assert "encrypted with a passphrase" in errors({"cert_file": str(pki.client.cert), "key_file": str(encrypted)})[0]
    assert errors({"cert_file": str(pki.client.cert)})[0].startswith(
        f"mqtt.tls.cert_file: cannot load client certificate '{pki.client.cert}'")
    assert errors("yes") == ["mqtt.tls: must be true, false or a section with ca_file, cert_file, key_file "
                             "(got 'yes')"]
    assert errors({"cafile": "x"}) == [
        "mqtt.tls.cafile: unknown key (allowed: ca_file, cert_file, key_file); did you mean 'ca_file'?"]

    # from a file: the YAML line of the key; relative paths resolve against the config's folder
    (tmp_path / "ca.pem").write_bytes(pki.ca.cert.read_bytes())
    cfg = tmp_path / "monitor.yaml"
    cfg.write_text("cameras:\n  - {name: a, source: x.mp4}\nmqtt:\n  port: 8883\n  tls:\n    ca_file: ca.pem\n"
                   "    cert_file: nowhere/client.crt\n    key_file: client.key\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert e.value.errors == [
        f"mqtt.tls.cert_file: cannot read '{tmp_path / 'nowhere/client.crt'}': no such file (line 7)"]
    cfg.write_text("cameras:\n  - {name: a, source: x.mp4}\nmqtt:\n  tls:\n    ca_file: ca.pem\n")
    assert load_config(cfg).mqtt.tls.ca_file == tmp_path / "ca.pem"
    cfg.write_text("cameras:\n  - {name: a, source: x.mp4}\nmqtt:\n  tls: true\n")
    tls = load_config(cfg).mqtt.tls
    assert tls is not None and (tls.ca_file, tls.cert_file, tls.key_file) == (None, None, None)
    cfg.write_text("cameras:\n  - {name: a, source: x.mp4}\nmqtt:\n  tls: false\n")
    assert load_config(cfg).mqtt.tls is None
