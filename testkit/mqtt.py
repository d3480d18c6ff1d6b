"""A real mosquitto broker on 127.0.0.1 for tests, and a subscriber that records what arrives (paho, MQTT v5)."""
from __future__ import annotations

import getpass
import json
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "mosquitto_passwd"


@dataclass(frozen=True)
class TlsListener:
    """A TLS listener on 127.0.0.1:`port` with the server's certificate and key and the CA that signs client
    certificates (required when require_certificate)."""
    port: int
    ca: Path
    cert: Path
    key: Path
    require_certificate: bool = False


class Mosquitto:
    """mosquitto with a generated config: one listener on 127.0.0.1:`port` (and a TLS one when `tls` is given),
    anonymous access unless `users` ({name: password}, written with mosquitto_passwd) is given, every topic open
    to every client unless `acl_file` (mosquitto's acl_file) is given. No persistence: a restart forgets retained
    messages, as a replaced broker would."""

    def __init__(self, port: int, workdir: Path, users: dict[str, str] | None = None,
                 tls: TlsListener | None = None, acl_file: Path | None = None) -> None:
        self.port = port
        self.tls = tls
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        # `user`: run as root (CI), mosquitto would switch to user mosquitto, who cannot read our temp folder
        lines = [f"user {getpass.getuser()}", f"listener {port} 127.0.0.1", "persistence false", "log_dest stderr", "log_type error",
                 "log_type warning", "log_type notice", "log_type information"]
        if users:
            pwfile = self.dir / "passwords"
            pwfile.write_text("")
            for name, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pwfile), name, password], check=True, timeout=20,
                               capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines += ["allow_anonymous true"]
        if acl_file is not None:
            lines += [f"acl_file {acl_file}"]
        if tls is not None:     # a second listener; the options after it are that listener's
            lines += [f"listener {tls.port} 127.0.0.1", f"cafile {tls.ca}", f"certfile {tls.cert}",
                      f"keyfile {tls.key}", f"require_certificate {'true' if tls.require_certificate else 'false'}"]
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=logf, stderr=logf, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                for port in (self.port, *((self.tls.port,) if self.tls else ())):
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        pass
                return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"mosquitto did not listen on 127.0.0.1:{self.port} within {timeout:g} s")

    def kill(self) -> None:
        """SIGKILL (a broker that dies, not one that shuts down) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float            # time.monotonic() on arrival

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """Subscribes to `topics` as any client would and records every message. MQTT v5 with retain-as-published,
    so the retain flag of every message is the publisher's (a v3 subscriber sees it only on retained replays)."""

    def __init__(self, port: int, topics: tuple[str, ...] = ("#",), username: str | None = None,
                 password: str | None = None) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        opts = SubscribeOptions(qos=1, retainAsPublished=True)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, opts) for t in topics])
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise TimeoutError(f"subscriber: no SUBACK from 127.0.0.1:{port}")

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))
            self._cond.notify_all()

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def wait(self, pred: Callable[[Received], bool], timeout: float = 10.0, after: int = 0) -> Received:
        """The first message from index `after` on that satisfies pred; TimeoutError listing what came."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages[after:]:
                    if pred(m):
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = sorted({m.topic for m in self.messages})
                    raise TimeoutError(f"no matching MQTT message within {timeout:g} s; topics seen: {seen}")
                self._cond.wait(min(remaining, 0.2))

    def wait_topic(self, topic: str, payload: str | bytes | None = None, timeout: float = 10.0,
                   after: int = 0) -> Received:
        want = payload.encode() if isinstance(payload, str) else payload
        return self.wait(lambda m: m.topic == topic and (want is None or m.payload == want), timeout, after)

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_now(port: int, topics: tuple[str, ...] = ("#",), settle: float = 0.7, **auth: Any) -> dict[str, Received]:
    """Everything the broker holds retained under `topics`, seen by a new client (empty payloads = cleared)."""
    sub = Subscriber(port, topics, **auth)
    try:
        time.sleep(settle)
        with sub._cond:
            return {m.topic: m for m in sub.messages if m.retain}
    finally:
        sub.close()
