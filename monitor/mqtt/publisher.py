"""Turns what the pipeline knows into MQTT messages: labels, camera states (polled by one thread of ours) and
events (handed over by the alert sinks). Nothing here runs on the capture or inference threads.

- `<prefix>/<camera>/label` (+ `/attributes` JSON): when the top-1 label changes, and again every `keepalive`
  seconds while results keep coming; not retained (a stale label must not look current).
- `<prefix>/<camera>/<custom set>/label` (+ `/attributes` JSON with every class's score): the same, per custom
  class set running on the camera; only results whose classes are the ones discovery announced (set_custom).
- Home Assistant's `online` (resend_states(), at most once per resync interval): the current label and custom
  class states again, since they are not retained and HA would read `unknown` until the next keepalive.
- `<prefix>/<camera>/state` up/down (+ `/attributes` with `camera_state` and the reason): retained, on change.
  Not `state`: Home Assistant drops an attribute of that name (MQTT_ATTRIBUTES_BLOCKED) without a word.
- `<prefix>/<camera>/<rule>` ON/OFF: retained; `<prefix>/events`: one JSON per start and end;
  `<prefix>/<camera>/snapshot`: JPEG of the frame that started the latest event, retained (the snapshot file's
  very bytes: the alert sinks render and encode an event's picture once).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

from monitor.core.labels import class_names
from monitor.mqtt.topics import Topics

if TYPE_CHECKING:
    from monitor.alerts.event import Event
    from monitor.capture.camera import Camera
    from monitor.inference.results import CustomResult, Result, ResultBoard
    from monitor.mqtt.client import MqttClient
    from monitor.render.picture import EventPicture

log = logging.getLogger(__name__)

_TICK = 0.25              # seconds between looks at the result board and the camera states
# After Home Assistant's `online`, the states wait this long: HA sends `online` once its discovery has cooled
# down, and the entities it just created from the retained configs subscribe to their state topics shortly
# after; a label sent before that subscription would be lost (it is not retained).
RESEND_DELAY = 1.0


class Publisher:
    """One thread ("mqtt-publisher") polling the ResultBoard and Camera.status(); on_event() for the alerts."""

    def __init__(self, client: MqttClient, topics: Topics, results: ResultBoard,
                 cameras: Callable[[], Mapping[str, Camera]], keepalive: float,
                 before_poll: Callable[[], None] | None = None, language: str = "en",
                 node: str | None = None) -> None:
        self.client = client
        self.names = class_names(language)   # display names: the attributes carry them beside the English label
        self.language = language
        self.node = node                     # node.name in the events JSON: which daemon of several sent it
        self.topics = topics
        self.results = results
        self.cameras = cameras
        self.keepalive = keepalive
        self.before_poll = before_poll       # runs first in every round (the bridge checks for swapped heads)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[str, tuple[int, float]] = {}      # camera -> (frame seq, time) of the last result seen
        self._label: dict[str, tuple[str, float]] = {}     # camera -> (label published, monotonic time)
        self._state: dict[str, tuple[str, str]] = {}       # camera -> (up|down, reason) published
        self._active: set[tuple[str, str]] = set()         # (camera, rule) currently ON
        self._pairs: frozenset[tuple[str, str]] = frozenset()   # (camera, rule) watched now
        self._custom: dict[str, dict[str, tuple[str, ...]]] = {}  # camera -> {custom set: classes announced}
        self._custom_label: dict[tuple[str, str], tuple[str, float]] = {}   # (camera, set) -> as _label
        self._resend_at: float | None = None      # monotonic time to re-send the current states (HA came back)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(_TICK):
            try:
                self.poll()
            except Exception:
                log.exception("mqtt publisher: round failed; continuing")

    # -- polled: labels and camera states --------------------------------------------------------------------

    def resend_states(self, delay: float = RESEND_DELAY) -> None:
        """Home Assistant is online (again): the next round `delay` s from now publishes every camera's current
        label and custom class states, whether they changed or not. Quick (paho's thread calls it); the caller
        limits how often (resync.ResyncLimiter)."""
        with self._lock:
            self._resend_at = time.monotonic() + delay

    def poll(self) -> None:
        if self.before_poll is not None:
            self.before_poll()
        now = time.monotonic()
        with self._lock:
            resend = self._resend_at is not None and now >= self._resend_at
            if resend:
                self._resend_at = None
        wall = time.time()
        for name, cam in list(self.cameras().items()):
            self._poll_result(name, now, resend and self._current(name, wall))
            self._poll_state(name, cam)

    def _current(self, name: str, wall: float) -> bool:
        """A state worth re-sending: the camera's last result is at most `keepalive` old (results still come, so
        the keepalive would be re-sending it anyway); an older one (a camera down or paused) is not current."""
        result = self.results.get(name)
        return result is not None and wall - result.classified_at <= self.keepalive

    def _poll_result(self, name: str, now: float, resend: bool = False) -> None:
        result = self.results.get(name)
        if result is None:
            return
        key = (result.frame.seq, result.classified_at)   # not the Result itself: it holds a whole frame
        if self._seen.get(name) == key and not resend:
            return
        self._seen[name] = key
        if resend:        # forget what went out last: the label and every custom state go out now
            self._label.pop(name, None)
            for k in [k for k in self._custom_label if k[0] == name]:
                self._custom_label.pop(k, None)
        if result.predictions:
            self._publish_label(name, result, now)
        for custom_set, classes in self._custom.get(name, {}).items():
            answer = result.custom.get(custom_set)
            # A result of a head swapped in (or out) after the last discovery round: its classes may not be
            # the announced options (HA refuses an enum state outside them). The next round announces them.
            if answer is not None and tuple(answer.classes) == classes:
                self._publish_custom(name, custom_set, answer, result, now)

    def _publish_label(self, name: str, result: Result, now: float) -> None:
        top = result.predictions[0]
        last = self._label.get(name)
        if last is not None and last[0] == top.label and now - last[1] < self.keepalive:
            return
        self._label[name] = (top.label, now)
        attributes = {
            "label": top.label,
            "index": int(top.index),
            "display": self.names[top.index],
            "score": round(float(top.probability), 4),
            "top": [{"label": p.label, "index": int(p.index), "display": self.names[p.index],
                     "score": round(float(p.probability), 4)} for p in result.predictions],
            "fps": round(self.results.fps_out(name), 2),
            "latency_ms": round(result.latency * 1000.0, 1),
            "frame": result.frame.seq,
            "classified_at": round(result.classified_at, 3),
        }
        # attributes first: an automation triggered by the label finds them current
        self.client.publish(self.topics.label_attributes(name), json.dumps(attributes))
        self.client.publish(self.topics.label(name), top.label)

    def _publish_custom(self, name: str, custom_set: str, answer: CustomResult, result: Result,
                        now: float) -> None:
        label = answer.label
        last = self._custom_label.get((name, custom_set))
        if last is not None and last[0] == label and now - last[1] < self.keepalive:
            return
        self._custom_label[(name, custom_set)] = (label, now)
        attributes = {
            "label": label,
            "score": round(answer.probability, 4),
            "scores": {c: round(float(p), 4) for c, p in zip(answer.classes, answer.probabilities)},
            "frame": result.frame.seq,
            "classified_at": round(result.classified_at, 3),
        }
        self.client.publish(self.topics.custom_label_attributes(name, custom_set), json.dumps(attributes))
        self.client.publish(self.topics.custom_label(name, custom_set), label)

    def _poll_state(self, name: str, cam: Camera) -> None:
        st = cam.status()
        raw = str(st.get("state", ""))
        state = "up" if raw == "up" else "down"
        reason = str(st.get("reason") or ("connecting" if raw == "connecting" else ""))
        if self._state.get(name) == (state, reason):
            return
        self._state[name] = (state, reason)
        self.client.retain(self.topics.state_attributes(name), json.dumps({
            "camera_state": raw, "reason": reason, "source": st.get("source"), "reconnects": st.get("reconnects"),
            "width": st.get("width"), "height": st.get("height")}))
        self.client.retain(self.topics.state(name), state)

    # -- pushed: events (from the alert sink thread) ----------------------------------------------------------

    def on_event(self, kind: str, event: Event, picture: EventPicture | None) -> None:
        camera, rule = event.camera, event.rule
        if not camera or not rule:
            return
        if kind == "clip":      # the follow-up with the clip's URL: the rule's state is not touched
            self.client.publish(self.topics.events, json.dumps(event.payload(kind, self.language, self.node), default=str))
            return
        if kind == "start" and picture is not None and camera in {c for c, _ in self._pairs}:
            # resync=False: Home Assistant coming back finds it on the broker; re-sending tens of kB for each
            # `online` was the bulk of an amplification (only a reconnect, to a broker that may have lost it,
            # sends it again)
            self.client.retain(self.topics.snapshot(camera), picture.jpeg, resync=False)
        on = kind == "start"
        with self._lock:
            # The end of an event of a rule or camera a reload removed may come after its topic was cleared:
            # it must not bring the retained topic back.
            if on and (camera, rule) in self._pairs:
                self._active.add((camera, rule))
            else:
                self._active.discard((camera, rule))
            if (camera, rule) in self._pairs:     # under the lock: forget() cannot clear it in between
                self.client.retain(self.topics.rule(camera, rule), "ON" if on else "OFF")
        self.client.publish(self.topics.events, json.dumps(event.payload(kind, self.language, self.node), default=str))

    # -- initial and removed states ---------------------------------------------------------------------------

    def set_pairs(self, pairs: Iterable[tuple[str, str]]) -> None:
        """The (camera, rule) pairs watched now; OFF for each one not active (a fresh start or a reload)."""
        pairs = frozenset(pairs)
        with self._lock:
            self._pairs = pairs
            active = set(self._active)
        for camera, rule in sorted(pairs):
            if (camera, rule) not in active:
                self.client.retain(self.topics.rule(camera, rule), "OFF")

    def set_custom(self, custom: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
        """The custom class sets per camera ({camera: {set: classes}}) whose discovery is out: only their
        results are published; a (camera, set) no longer listed starts afresh if it comes back."""
        new = {cam: {name: tuple(classes) for name, classes in sets.items()} for cam, sets in custom.items()}
        for key in list(self._custom_label):
            if new.get(key[0], {}).get(key[1]) != self._custom.get(key[0], {}).get(key[1]):
                self._custom_label.pop(key, None)   # gone or other classes: the next result goes out at once
        self._custom = new       # replaced whole: the publisher thread reads it without a lock

    def forget(self, cameras: Iterable[str], pairs: Iterable[tuple[str, str]]) -> None:
        """Clear the retained topics of removed cameras and removed (camera, rule) pairs."""
        t = self.topics
        for camera in cameras:
            for topic in (t.state(camera), t.state_attributes(camera), t.snapshot(camera), t.enabled_state(camera)):
                self.client.retain(topic, b"")
            self._seen.pop(camera, None)
            self._label.pop(camera, None)
            self._state.pop(camera, None)
        for camera, rule in pairs:
            with self._lock:
                self._active.discard((camera, rule))
                self.client.retain(t.rule(camera, rule), b"")
