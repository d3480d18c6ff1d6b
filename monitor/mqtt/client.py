"""MqttClient: the one connection to the broker (paho-mqtt 2.x), with a bounded outgoing queue of our own.

paho's network thread (loop_start) connects, keeps the session alive and reconnects with its exponential
backoff (reconnect_delay_set). We do not let paho queue publishes across an outage, because paho re-sends the
messages it queued *after* our on_connect publishes: a stale retained state would then overwrite the current
one. Instead publish() puts messages into a bounded deque (never blocks: a full queue drops the message and
counts it in monitor_mqtt_dropped_total) and our own "mqtt-out" thread hands them to paho only while connected.
After every (re)connect it first publishes `<prefix>/status online`, then what was queued during the outage
(older), then every retained state we hold (current), so the broker always ends up with the newest values.
resync() (Home Assistant came back) re-publishes the retained states too, except those retained with
`resync=False` (the snapshot JPEGs: the broker still holds them; only a reconnect, to a broker that may have
lost them, sends them again).

Messages the broker replays because they are retained on a topic we subscribe to are stale by definition: they
reach a handler only if its subscription asked for them (`retained=True`). A command or Home Assistant's
`online` retained by whoever could write it would otherwise act again after every reconnect and restart.
"""
from __future__ import annotations

import logging
import re
import ssl
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Callable, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

if TYPE_CHECKING:
    from monitor.config.types import MqttConfig
    from monitor.core.metrics import Metrics

log = logging.getLogger(__name__)

BACKOFF_MIN = 1.0              # seconds before the first reconnect attempt; paho doubles it per failure ...
BACKOFF_MAX = 30.0             # ... up to this
KEEPALIVE = 30                 # MQTT keepalive (seconds): a dead broker is noticed within 1.5x this
CONNECT_TIMEOUT = 5.0          # TCP connect of one attempt
_TICK = 0.25                   # the out thread's longest sleep without looking at the stop event
_INFLIGHT = 32                 # QoS 1 messages paho may hold unacknowledged (its own queue stays this small)
_DROP_LOG_EVERY = 30.0         # seconds between "queue full" warnings
_STATUS_ONLINE, _STATUS_OFFLINE = "online", "offline"
_NO_RESYNC, _LIGHT, _FULL = 0, 1, 2    # what a resync re-publishes: nothing pending, without resync=False, all
_IGNORED_LOGGED = 64                   # topics whose ignored retained replay was logged (one warning per topic)
_SENT, _BUSY, _DOWN = 0, 1, 2          # outcomes of handing one message to paho

Handler = Callable[[str, bytes], None]
_SSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)")     # OpenSSL's source line in ssl messages: noise in a log


def tls_reason(exc: ssl.SSLError) -> str:
    """What went wrong in a TLS handshake, in one line, with the config keys that decide it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or str(exc)
        return (f"the broker's certificate was refused: {why}; check mqtt.tls.ca_file (the CA that signed it) "
                f"and that mqtt.host is a name in it")
    why = exc.reason or str(exc)
    if why == "WRONG_VERSION_NUMBER":
        return f"{why}: is mqtt.port the broker's TLS listener?"
    return f"{why}; check mqtt.tls"


class _Message(NamedTuple):
    topic: str
    payload: bytes
    retain: bool
    qos: int
    resync: bool = True          # retained: re-published by resync() too (else only after a reconnect)


class MqttClient:
    """Connects to the broker named in `cfg`, publishes without ever blocking the caller, dispatches
    subscriptions to handlers (called on paho's network thread: they must be quick).

    `retain(topic, payload)` records the topic's current retained value (re-published after every reconnect and
    by resync()); an empty payload clears the topic on the broker and forgets it. The last will is
    `<prefix>/status offline`, retained; a clean stop() publishes it itself (a broker sends the will only when
    the connection dies without a DISCONNECT).
    """

    def __init__(self, cfg: MqttConfig, metrics: Metrics, on_connected: Callable[[], None] | None = None,
                 status_topic: str | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.status_topic = status_topic or f"{cfg.topic_prefix}/status"     # Topics.status (per node in a fleet)
        self.where = f"{cfg.host}:{cfg.port}"        # never with credentials: this is what logs show
        self._on_connected = on_connected
        self._cond = threading.Condition()
        self._queue: deque[_Message] = deque()
        self._retained: dict[str, _Message] = {}
        self._handlers: dict[str, tuple[Handler, bool]] = {}    # filter -> (handler, takes retained replays)
        self._ignored_logged: set[str] = set()
        self._connected = False
        self._resync = _NO_RESYNC
        self._stop = threading.Event()
        self._drain_until = 0.0
        self._thread: threading.Thread | None = None
        self._client: paho.Client | None = None
        self._problem = ""                            # the last connection problem logged (logged once each)
        self._socket_error = ""                       # paho's last socket error (it reports it only to its log)
        self._dropped_since_log = 0
        self._last_drop_log = float("-inf")
        self.metrics.mqtt_connected.set(0)

    # -- public ---------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> None:
        cfg = self.cfg
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id, clean_session=True,
                             protocol=paho.MQTTv311, reconnect_on_failure=True)
        client.will_set(self.status_topic, _STATUS_OFFLINE, qos=1, retain=True)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password or None)
        if cfg.tls is not None and not self._set_tls(client):
            client = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._out_loop, name="mqtt-out", daemon=True)
        self._thread.start()
        if client is None:
            return                   # the queue still bounds and counts what the pipeline hands over
        client.reconnect_delay_set(min_delay=int(BACKOFF_MIN), max_delay=int(BACKOFF_MAX))
        client.max_inflight_messages_set(_INFLIGHT)
        client.max_queued_messages_set(_INFLIGHT * 2)
        client.connect_timeout = CONNECT_TIMEOUT
        client.on_connect = self._paho_connect
        client.on_connect_fail = self._paho_connect_fail
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        client.on_log = self._paho_log
        self._client = client
        log.info("mqtt: connecting to %s%s as %s", self.where, " (TLS)" if cfg.tls else "", cfg.client_id)
        client.connect_async(cfg.host, cfg.port, keepalive=KEEPALIVE)
        client.loop_start()

    def _set_tls(self, client: paho.Client) -> bool:
        """paho's tls_set with the configured files (checked when the config was read; they may have changed
        since). False, after one error line, when they cannot be used: the daemon runs on without MQTT."""
        tls = self.cfg.tls
        files = {"ca_certs": tls.ca_file, "certfile": tls.cert_file, "keyfile": tls.key_file}
        try:
            client.tls_set(**{k: str(v) for k, v in files.items() if v is not None}, cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ValueError) as exc:      # ssl.SSLError is an OSError
            log.error("mqtt: cannot set up TLS from mqtt.tls (%s: %s); not connecting to %s", type(exc).__name__,
                      exc, self.where)
            return False
        return True

    def stop(self, timeout: float = 1.5) -> None:
        """Publish `offline` (if connected, waiting at most half the budget), disconnect, end both threads."""
        deadline = time.monotonic() + timeout
        client = self._client
        # what is queued (the ends of the events closed at shutdown) goes out first, within a third of the budget
        self._drain_until = time.monotonic() + timeout / 3
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(max(0.05, (deadline - time.monotonic()) / 2))
            self._thread = None
        if client is None:
            return
        if self._connected:
            info = client.publish(self.status_topic, _STATUS_OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.05, (deadline - time.monotonic()) / 2))
            except (RuntimeError, ValueError):
                pass                 # the connection went away meanwhile: the broker sends the will instead
        client.disconnect()
        # paho's loop_stop() joins without a timeout, and its thread may sit in a TCP connect for up to
        # CONNECT_TIMEOUT: join it from a helper thread so that our stop keeps the daemon's deadline.
        stopper = threading.Thread(target=client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(max(0.05, deadline - time.monotonic()))
        if stopper.is_alive():
            log.warning("mqtt: network thread still busy at shutdown (connecting to %s); left behind", self.where)
        self._set_connected(False)
        self._client = None

    def publish(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1) -> bool:
        """Queue one message; never blocks. False (and counted) when the queue is full."""
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        return self._put(_Message(topic, data, retain, qos))

    def retain(self, topic: str, payload: bytes | str, qos: int = 1, resync: bool = True) -> bool:
        """Set the retained value of `topic` (remembered for re-publishing); b"" clears it on the broker.
        resync=False: re-published after a reconnect only, not by resync() (large payloads the broker keeps)."""
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        msg = _Message(topic, data, True, qos, resync)
        with self._cond:
            if data:
                self._retained[topic] = msg
                if not self._connected:
                    return True      # goes out with the others after the connect: no queue slot needed
            else:
                self._retained.pop(topic, None)
        return self._put(msg)

    def subscribe(self, topic: str, handler: Handler, retained: bool = False) -> None:
        """Subscribe now (if connected) and after every reconnect; `handler(topic, payload)` runs on paho's
        network thread. retained=False: the broker's replays of retained messages are dropped (and logged once
        per topic) before the handler; only messages published while we are subscribed reach it."""
        with self._cond:
            self._handlers[topic] = (handler, retained)
        client = self._client
        if client is not None and self._connected:
            client.subscribe(topic, qos=1)

    def resync(self) -> None:
        """Re-publish the retained values but those retained with resync=False (Home Assistant came back online
        and wants the configs again). The caller bounds how often (MqttBridge: one per RESYNC_INTERVAL)."""
        with self._cond:
            self._resync = max(self._resync, _LIGHT)
            self._cond.notify_all()

    # -- paho callbacks (network thread) ----------------------------------------------------------------------

    def _paho_connect(self, client: paho.Client, userdata: object, flags: object, reason: object,
                      properties: object) -> None:
        if getattr(reason, "is_failure", False):
            hint = ""
            if "authori" in str(reason).lower() or "password" in str(reason).lower():
                hint = " (check mqtt.username and mqtt.password_file)"
            self._problem_once(logging.ERROR, f"mqtt: broker {self.where} refused the connection: {reason}{hint}; "
                                              f"retrying with backoff up to {BACKOFF_MAX:g} s")
            return
        with self._cond:
            topics = list(self._handlers)
        for topic in topics:
            client.subscribe(topic, qos=1)
        log.info("mqtt: connected to %s", self.where)
        self._problem = ""
        with self._cond:
            self._resync = _FULL
        self._set_connected(True)
        if self._on_connected is not None:
            try:
                self._on_connected()
            except Exception:
                log.exception("mqtt: on-connect hook failed")

    def _paho_connect_fail(self, client: paho.Client, userdata: object) -> None:
        # paho calls this inside its `except OSError` block: the exception tells the reason.
        exc = sys.exc_info()[1]
        if isinstance(exc, ssl.SSLError):
            # A certificate problem does not go away by retrying: an error, with the keys to look at.
            self._problem_once(logging.ERROR, f"mqtt: TLS with {self.where} failed ({tls_reason(exc)}); "
                                              f"retrying with backoff up to {BACKOFF_MAX:g} s")
            return
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "connection failed"
        self._problem_once(logging.WARNING, f"mqtt: cannot connect to {self.where} ({reason}); "
                                            f"retrying with backoff up to {BACKOFF_MAX:g} s")

    def _paho_disconnect(self, client: paho.Client, userdata: object, flags: object, reason: object,
                         properties: object) -> None:
        was = self._connected
        self._set_connected(False)
        cut, self._socket_error = self._socket_error, ""
        if self._stop.is_set():
            return
        if was:
            self._problem_once(logging.WARNING, f"mqtt: lost the connection to {self.where} ({reason}); "
                                                f"reconnecting with backoff up to {BACKOFF_MAX:g} s")
        elif cut:
            # Cut before the broker's CONNACK: with TLS 1.3 a broker that wants a client certificate says so
            # only after our handshake has completed, and paho tells only its log why.
            hint = ("; the broker requires a client certificate: set mqtt.tls.cert_file and mqtt.tls.key_file"
                    if "CERTIFICATE_REQUIRED" in cut.upper() else "")
            self._problem_once(logging.ERROR, f"mqtt: {self.where} closed the connection before accepting it "
                                              f"({cut}){hint}; retrying with backoff up to {BACKOFF_MAX:g} s")

    def _paho_log(self, client: paho.Client, userdata: object, level: int, text: str) -> None:
        if level == paho.MQTT_LOG_ERR and text.startswith("failed to receive on socket"):
            self._socket_error = _SSL_SOURCE.sub("", text.removeprefix("failed to receive on socket: "))

    def _paho_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self._cond:
            handlers = list(self._handlers.items())
        for pattern, (handler, retained) in handlers:
            if paho.topic_matches_sub(pattern, message.topic):
                if message.retain and not retained:
                    self._ignored_retained(message.topic, len(message.payload))
                    continue
                try:
                    handler(message.topic, bytes(message.payload))
                except Exception:
                    log.exception("mqtt: handling a message on %s failed", message.topic)

    # -- internals ------------------------------------------------------------------------------------------

    def _ignored_retained(self, topic: str, size: int) -> None:
        if not size:
            return           # an empty retained message is no message (a cleared topic)
        with self._cond:
            first = topic not in self._ignored_logged and len(self._ignored_logged) < _IGNORED_LOGGED
            if first:
                self._ignored_logged.add(topic)
        if first:
            log.warning("mqtt: ignored a message retained on %s (only messages published while we listen are "
                        "taken there; clear it with: mosquitto_pub -r -n -t '%s')", topic, topic)

    def _problem_once(self, level: int, text: str) -> None:
        """One line per distinct problem, not one per retry: a wrong password must not flood the log."""
        if text != self._problem:
            self._problem = text
            log.log(level, "%s", text)

    def _set_connected(self, value: bool) -> None:
        with self._cond:
            self._connected = value
            self._cond.notify_all()
        self.metrics.mqtt_connected.set(1 if value else 0)

    def _put(self, msg: _Message) -> bool:
        with self._cond:
            if len(self._queue) >= self.cfg.queue_size:
                dropped = True
            else:
                self._queue.append(msg)
                self._cond.notify_all()
                dropped = False
        if dropped:
            self._count_drop(1)
        return not dropped

    def _count_drop(self, n: int) -> None:
        self.metrics.mqtt_dropped.inc(n)
        self._dropped_since_log += n
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_EVERY:
            log.warning("mqtt: outgoing queue full (%d, %s), dropped %d messages", self.cfg.queue_size,
                        "connected" if self._connected else f"broker {self.where} unreachable",
                        self._dropped_since_log)
            self._dropped_since_log = 0
            self._last_drop_log = now

    def _out_loop(self) -> None:
        while True:
            with self._cond:
                if self._stop.is_set() and (not self._connected or not self._queue
                                            or time.monotonic() >= self._drain_until):
                    return
                if not self._connected or (not self._queue and not self._resync):
                    self._cond.wait(_TICK)
                    continue
                resync, self._resync = self._resync, _NO_RESYNC
                batch: list[_Message] = []
                if resync:
                    # online first, then what waited in the queue (older), then the current retained values
                    batch.append(_Message(self.status_topic, _STATUS_ONLINE.encode(), True, 1))
                    # a queued retained value the map holds is older than (or equal to) the map's: skip it
                    batch.extend(m for m in self._queue if not (m.retain and m.topic in self._retained))
                    self._queue.clear()
                    batch.extend(m for m in self._retained.values() if resync == _FULL or m.resync)
                else:
                    batch.append(self._queue.popleft())
            for i, msg in enumerate(batch):
                outcome = self._send(msg)
                while outcome == _BUSY:
                    # paho's own small window of unacknowledged messages is full: wait for acks, keep the order
                    if self._stop.is_set() and time.monotonic() >= self._drain_until:
                        outcome = _DOWN
                        break
                    time.sleep(0.01)
                    outcome = self._send(msg)
                if outcome == _DOWN:
                    self._requeue(batch[i:], resync)
                    break

    def _send(self, msg: _Message) -> int:
        client = self._client
        if client is None or not self._connected:
            return _DOWN
        try:
            info = client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        except (ValueError, TypeError) as exc:       # a bad topic is a bug of ours: lose the message, not the thread
            log.error("mqtt: cannot publish to %r: %s", msg.topic, exc)
            return _SENT
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            return _BUSY
        if info.rc == paho.MQTT_ERR_NO_CONN and msg.qos == 0:
            return _DOWN
        # MQTT_ERR_NO_CONN with QoS 1: paho holds the message and sends it after the reconnect
        self.metrics.mqtt_published.inc()
        return _SENT

    def _requeue(self, rest: list[_Message], resync: int) -> None:
        with self._cond:
            if resync:
                self._resync = max(self._resync, resync)   # the retained values go out after the next connect
                rest = [m for m in rest if m.topic not in self._retained and m.topic != self.status_topic]
            room = max(0, self.cfg.queue_size - len(self._queue))
            keep, lost = rest[:room], len(rest) - min(len(rest), room)
            self._queue.extendleft(reversed(keep))
        if lost:
            self._count_drop(lost)
