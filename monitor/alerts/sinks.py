"""Alert sinks (log, snapshot, webhook, command), each a thread behind a bounded queue, off the hot path.

Every sink reads the same immutable Event. The picture of an event (monitor.render.picture.EventPicture) is drawn
and JPEG-encoded once, by whichever sink needs it first (the snapshot sink, or a listener such as MQTT), and every
other one gets the same bytes.

Snapshot ordering: emit() computes the snapshot's path up front (cheap string formatting) and hands every sink of
that event a shared ticket. The snapshot sink writes the JPEG and marks the ticket done; the webhook and command
sinks wait on the ticket for at most `snapshot_wait` seconds before sending, then include the path only if the
file was really written. Why not chain snapshot -> webhook/command: a slow or broken snapshot disk would then
stall or drop every delivery behind it; with the ticket the sinks stay independent queues and the worst case
is a bounded delay, while a consumer that gets a path can always open the file.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from monitor import __version__
from monitor.alerts.event import Event
from monitor.alerts.events import sweep_snapshots
from monitor.alerts.snapshot_files import clean_snapshot_path, snapshot_path, temporary_path
from monitor.core.redact import redact_url, url_origin
from monitor.render.picture import EventPicture, render_event_picture

if TYPE_CHECKING:
    from monitor.inference.classifier import Prediction
    from monitor.config.types import AlertsConfig
    from monitor.alerts.events import EventStore
    from monitor.core.metrics import Metrics

log = logging.getLogger(__name__)

# listener(kind, the event as the webhook gets it (snapshot path once written), its picture at "start" or None)
EventListener = Callable[[str, Event, "EventPicture | None"], None]

_POLL = 0.25                    # sink loops wake this often to check the stop event
_DROP_LOG_EVERY = 10.0          # seconds between "queue full" warnings per sink
_BACKOFF_CAP = 30.0
_PLACEHOLDER = re.compile(r"\{(camera|rule|label|score|event_id|snapshot)\}")
_REMEMBERED_STARTS = 256        # start tickets kept so the matching "end" reports the same snapshot


class _SnapshotTicket:
    """Where the snapshot of one event goes, and whether it got there."""

    __slots__ = ("path", "done", "ok")

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.done = threading.Event()
        self.ok = False
        if path is None:
            self.done.set()

    def finish(self, ok: bool) -> None:
        self.ok = ok
        self.done.set()

    def result(self, wait: float) -> str | None:
        self.done.wait(wait)
        return self.path if self.ok else None


class _Picture:
    """An event's picture, rendered and encoded by the first sink that asks; the others get the same object.
    The frame is let go once rendered."""

    __slots__ = ("_lock", "_job", "_picture", "_language")

    def __init__(self, event: Event | None = None, image: np.ndarray | None = None,
                 predictions: Sequence[Prediction] = (), untrained: bool = False, language: str = "en") -> None:
        self._lock = threading.Lock()
        self._language = language
        self._job: tuple[Event, np.ndarray, list[Prediction], bool] | None = (
            (event, image, list(predictions), untrained) if event is not None and image is not None else None)
        self._picture: EventPicture | None = None

    def get(self) -> EventPicture | None:
        """The picture; None without a frame or when it cannot be rendered (logged once)."""
        with self._lock:
            if self._job is not None:
                ev, image, predictions, untrained = self._job
                self._job = None
                try:
                    self._picture = render_event_picture(image, ev.camera, ev.label, ev.started_at, predictions,
                                                         untrained, clean=ev.custom is not None,
                                                         language=self._language)
                except Exception as exc:      # cv2.error included: no picture, every delivery still goes out
                    log.warning("alerts: cannot render the picture of event %s: %s", ev.id, exc)
            return self._picture


_NO_PICTURE = _Picture()       # an end, or a start without its frame


@dataclass
class _Delivery:
    kind: str                                # "start" | "end"
    event: Event
    picture: _Picture = _NO_PICTURE
    ticket: _SnapshotTicket = field(default_factory=lambda: _SnapshotTicket(None))


class _Sink:
    """One delivery channel: a thread draining a bounded queue. Subclasses implement handle()."""

    name = "sink"
    kinds: tuple[str, ...] = ("start", "end")

    def __init__(self, owner: SinkSet, queue_size: int) -> None:
        self.owner = owner
        self.metrics = owner.metrics
        self.queue: queue.Queue[_Delivery] = queue.Queue(maxsize=max(1, queue_size))
        self.thread: threading.Thread | None = None
        self._dropped_since_log = 0
        self._last_drop_log = float("-inf")

    def offer(self, d: _Delivery) -> bool:
        try:
            self.queue.put_nowait(d)
            return True
        except queue.Full:
            self.metrics.sink_dropped.labels(self.name).inc()
            self._dropped_since_log += 1
            now = time.monotonic()
            if now - self._last_drop_log >= _DROP_LOG_EVERY:
                log.warning("alert sink %s: queue full (%d), dropped %d deliveries", self.name,
                            self.queue.maxsize, self._dropped_since_log)
                self._dropped_since_log = 0
                self._last_drop_log = now
            return False

    def fail(self, message: str, *args: object) -> None:
        self.metrics.sink_failures.labels(self.name).inc()
        log.warning("alert sink %s: " + message, self.name, *args)

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name=f"sink-{self.name}", daemon=True)
            self.thread.start()

    def _loop(self) -> None:
        stop = self.owner._stop
        while True:
            if stop.is_set() and (self.queue.empty() or time.monotonic() >= self.owner._deadline):
                return
            try:
                d = self.queue.get(timeout=_POLL)
            except queue.Empty:
                continue
            try:
                self.handle(d)
            except Exception as exc:   # a sink bug costs one delivery, never the thread
                self.metrics.sink_failures.labels(self.name).inc()
                log.exception("alert sink %s: delivery of event %s failed: %s", self.name, d.event.id, exc)

    def handle(self, d: _Delivery) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Called once the thread is gone (or was never started): let go of what the sink held."""


class _LogSink(_Sink):
    name = "log"

    def handle(self, d: _Delivery) -> None:
        ev = d.event
        if d.kind == "start":
            log.info("ALERT start: event %s camera=%s rule=%s label=%s score=%.3f", ev.id, ev.camera, ev.rule,
                     ev.label, ev.score)
        else:
            log.info("ALERT end: event %s camera=%s rule=%s label=%s peak=%.3f", ev.id, ev.camera, ev.rule,
                     ev.label, ev.peak_score)


class _SnapshotSink(_Sink):
    name = "snapshot"
    kinds = ("start",)

    def __init__(self, owner: SinkSet, queue_size: int, root: Path, max_bytes: int | None = None) -> None:
        super().__init__(owner, queue_size)
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._held: int | None = None       # bytes of snapshots in the folder: measured once, then counted up
        self._new_bytes = 0

    def path_for(self, ev: Event) -> str:
        return str(snapshot_path(self.root, ev))

    def handle(self, d: _Delivery) -> None:
        ok = False
        try:
            ok = self._write(d)
        finally:
            d.ticket.finish(ok)
        self._keep_under_cap()

    def _keep_under_cap(self) -> None:
        """alerts.snapshots_max_bytes between the hourly retention passes: a burst of events must not fill the
        disk. The folder is measured at the first write and counted up after; over the cap, the oldest go."""
        if self.max_bytes is None:
            return
        if self._held is not None:
            self._held += self._new_bytes
        self._new_bytes = 0
        if self._held is None or self._held > self.max_bytes:
            self._held = sweep_snapshots(self.root, max_bytes=self.max_bytes, store=self.owner.store).left

    def _write(self, d: _Delivery) -> bool:
        ev = d.event
        path = Path(d.ticket.path) if d.ticket.path else None
        if path is None:
            return False
        picture = d.picture.get()
        if picture is None:
            self.fail("no picture to write for event %s", ev.id)
            return False
        if picture.clean_jpeg is not None:
            # A custom-class event can be marked right or wrong, which files its frame as a training example:
            # that needs the picture without the overlay.
            self._write_file(picture.clean_jpeg, clean_snapshot_path(path))
        if not self._write_file(picture.jpeg, path):
            return False
        store = self.owner.store
        if store is not None and ev.id is not None:
            store.set_snapshot(ev.id, str(path))
        return True

    def _write_file(self, data: bytes, path: Path) -> bool:
        tmp = temporary_path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)   # readers see the whole JPEG or nothing
            self._new_bytes += len(data)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            self.fail("cannot write snapshot %s: %s", path, exc)
            return False
        return True


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """urllib follows 301/302/303 by re-sending a POST as a GET without its body: the receiver would get an
    empty request and we would count it delivered. A redirect is reported as the failure it is instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None              # urllib then raises HTTPError(code) for the 3xx response itself


_OPENER = urllib.request.build_opener(_RefuseRedirects)


class _WebhookSink(_Sink):
    name = "webhook"
    kinds = ("start", "end", "clip")

    def __init__(self, owner: SinkSet, queue_size: int, url: str, timeout: float, retries: int) -> None:
        super().__init__(owner, queue_size)
        self.url = url
        self.timeout = timeout
        self.retries = max(0, retries)
        # Only scheme://host:port reaches the log: a webhook's path or query is often its secret (Slack, Discord,
        # Home Assistant webhook ids, ?token=...), which no pattern could tell from a harmless path.
        self.safe_url = url_origin(url)

    def handle(self, d: _Delivery) -> None:
        event = self.owner.with_clip(replace(d.event, snapshot=d.ticket.result(self.owner.snapshot_wait)))
        body = json.dumps(event.payload(d.kind, self.owner.language, self.owner.node), default=str).encode("utf-8")
        stop = self.owner._stop
        last_error = ""
        attempts = 0
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(_BACKOFF_CAP, self.owner.retry_backoff * (2 ** (attempt - 1)))
                if stop.wait(delay):    # shutting down: do not sit out the backoff
                    last_error += " (gave up retrying: stopping)"
                    break
            attempts += 1
            error, permanent = self._post(body)
            if error is None:
                return
            last_error = error
            if permanent:
                break
        self.fail("POST %s for event %s (%s) failed after %d attempt(s): %s", self.safe_url, d.event.id,
                  d.kind, attempts, last_error)

    def _post(self, body: bytes) -> tuple[str | None, bool]:
        """One attempt: (None, _) on success, else (error text, whether retrying is pointless)."""
        req = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": f"monitor/{__version__}"})
        try:
            with _OPENER.open(req, timeout=self.timeout) as resp:
                resp.read(65536)
                return None, False
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                # Retrying would get the same answer: the configured url is wrong.
                location = str(exc.headers.get("Location", "")) if exc.headers is not None else ""
                where = self._shown_location(location) if location else ""
                return (f"HTTP {exc.code} {exc.reason}: redirect{f' to {where}' if where else ''} not followed "
                        "(set alerts.webhook.url to the final address)"), True
            # Client errors will not fix themselves, except timeouts and rate limiting.
            permanent = 400 <= exc.code < 500 and exc.code not in (408, 425, 429)
            return f"HTTP {exc.code} {exc.reason}", permanent
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return self._scrub(f"{type(exc).__name__}: {reason}"), isinstance(exc, ValueError)
        except Exception as exc:   # http.client.HTTPException and friends: a broken server, worth a retry
            return self._scrub(f"{type(exc).__name__}: {exc}"), False

    def _shown_location(self, location: str) -> str:
        """A redirect target as scheme://host:port and whether the path stays: an http -> https redirect keeps
        the (secret) path, and a signed redirect carries one of its own."""
        try:
            target = urllib.parse.urljoin(self.url, location)
            same = urllib.parse.urlsplit(target)[2:4] == urllib.parse.urlsplit(self.url)[2:4]
        except ValueError:
            return "an unreadable Location"
        return f"{url_origin(target)} ({'same' if same else 'another'} path)"

    def _scrub(self, text: str) -> str:
        """An error text without the url or its path (urllib and http.client quote them: "unknown url type",
        InvalidURL "can't contain control characters")."""
        try:
            parts = urllib.parse.urlsplit(self.url)
        except ValueError:
            return redact_url(text.replace(self.url, url_origin(self.url)))
        tail = self.url[len(f"{parts.scheme}://{parts.netloc}"):]
        for secret in (self.url, tail, parts.path, parts.query):
            if len(secret) > 1:
                text = text.replace(secret, "/…")
        return redact_url(text)


class _CommandSink(_Sink):
    name = "command"
    kinds = ("start",)

    def __init__(self, owner: SinkSet, queue_size: int, argv: Sequence[str], timeout: float) -> None:
        super().__init__(owner, queue_size)
        self.argv = tuple(argv)
        self.timeout = timeout

    def handle(self, d: _Delivery) -> None:
        ev = d.event
        snapshot = d.ticket.result(self.owner.snapshot_wait)
        values = {
            "camera": ev.camera, "rule": ev.rule, "label": ev.label, "score": f"{ev.score:.3f}",
            "event_id": "" if ev.id is None else str(ev.id), "snapshot": snapshot or "",
        }
        # Per argument, no shell: a label can never become shell syntax. str.format is avoided so other braces
        # in the argv (a jq filter, JSON) stay as written.
        argv = [_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in self.argv]
        try:
            # A session of its own: on timeout the whole process group dies, children of a shell included.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
        except OSError as exc:
            self.fail("cannot run %s: %s", argv[0], exc)
            return
        deadline = time.monotonic() + self.timeout
        stop = self.owner._stop
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (stop.is_set() and time.monotonic() >= self.owner._deadline):
                self._kill(proc)
                self.fail("%s for event %s killed after %.1f s (timeout %.1f s)", argv[0], ev.id,
                          self.timeout - max(0.0, remaining), self.timeout)
                return
            try:
                _, err = proc.communicate(timeout=min(_POLL, remaining))
                break
            except subprocess.TimeoutExpired:
                continue
        if proc.returncode != 0:
            tail = (err or b"").decode("utf-8", "replace").strip()[-500:]
            self.fail("%s for event %s exited with %s%s", argv[0], ev.id, proc.returncode,
                      f": {tail}" if tail else "")

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        try:
            proc.communicate(timeout=2.0)
        except subprocess.TimeoutExpired:   # pipe held by a process outside the group; reap and move on
            proc.wait(timeout=2.0)


class _ListenerSink(_Sink):
    """A later stage's event consumer (MQTT): called with the event the webhook gets and, at its start, the
    event's picture (the snapshot file's very bytes), on a thread and bounded queue of its own like every sink."""

    def __init__(self, owner: SinkSet, queue_size: int, name: str, listener: EventListener,
                 kinds: tuple[str, ...] = ("start", "end")) -> None:
        super().__init__(owner, queue_size)
        self.name = name
        self.listener = listener
        self.kinds = kinds

    def handle(self, d: _Delivery) -> None:
        event = self.owner.with_clip(replace(d.event, snapshot=d.ticket.result(self.owner.snapshot_wait)))
        self.listener(d.kind, event, d.picture.get() if d.kind == "start" else None)


class SinkSet:
    """The configured sinks. emit() only enqueues (put_nowait), so it never blocks the inference worker.

    The log sink always exists; snapshot, webhook, command and notify (monitor.alerts.notify) exist when
    configured. Snapshots, commands and notifications run for "start" only; log, webhook and listeners (later stages, e.g. MQTT) get "start" and "end".
    """

    def __init__(self, cfg: AlertsConfig, metrics: Metrics, store: EventStore | None, *, untrained: bool = False,
                 retry_backoff: float = 0.5, snapshot_wait: float = 2.0, language: str = "en",
                 node: str | None = None, listeners: Sequence[tuple[str, EventListener]] = (),
                 extra: Sequence[Callable[[SinkSet, int], _Sink]] = (), clips: bool = False,
                 clip_followers: Sequence[str] = ()) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.store = store
        self.untrained = untrained
        self.retry_backoff = retry_backoff
        self.language = language        # labels.language: the webhook adds the label's display name in it
        self.node = node                # node.name: the webhook says which daemon sent the event
        self.snapshot_wait = snapshot_wait
        self._stop = threading.Event()
        self._deadline = float("inf")
        self._lock = threading.Lock()
        self._starts: OrderedDict[tuple, _SnapshotTicket] = OrderedDict()
        size = cfg.queue_size
        self._snapshot: _SnapshotSink | None = (
            _SnapshotSink(self, size, cfg.snapshots, cfg.snapshots_max_bytes) if cfg.snapshots else None)
        sinks: list[_Sink] = [_LogSink(self, size)]
        if self._snapshot is not None:
            sinks.append(self._snapshot)
        if cfg.webhook is not None:
            sinks.append(_WebhookSink(self, size, cfg.webhook.url, cfg.webhook.timeout, cfg.webhook.retries))
        if cfg.command:
            sinks.append(_CommandSink(self, size, cfg.command, cfg.command_timeout))
        sinks += [make(self, size) for make in extra]      # sinks of their own module (notify)
        # clips: some camera records clips, so an end may find its clip complete (re-read from the store);
        # clip_followers: the listeners that take the "clip" follow-up (MQTT; never the clip stage itself)
        self.clips = clips
        sinks += [_ListenerSink(self, size, name, fn, ("start", "end", "clip") if name in clip_followers
                                else ("start", "end")) for name, fn in listeners]
        self._sinks = tuple(sinks)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self._sinks]

    def start(self) -> None:
        self._stop.clear()
        self._deadline = float("inf")
        for s in self._sinks:
            s.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued until `timeout`, then give up; sink threads are daemons, a hung one is left."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        for s in self._sinks:
            if s.thread is not None:
                s.thread.join(max(0.0, self._deadline - time.monotonic()))
            if s.thread is not None and s.thread.is_alive():
                log.warning("alert sink %s: still busy at shutdown, %d deliveries abandoned", s.name,
                            s.queue.qsize())
            else:
                s.thread = None
                s.close()

    def take_over(self, old: SinkSet) -> None:
        """Adopt the snapshot tickets of the set this one replaces (reload), so the "end" of an event that
        started before still reports the snapshot its "start" had."""
        with old._lock:
            starts = list(old._starts.items())
        with self._lock:
            for key, ticket in starts:
                self._starts.setdefault(key, ticket)
            while len(self._starts) > _REMEMBERED_STARTS:
                self._starts.popitem(last=False)

    def with_clip(self, event: Event) -> Event:
        """`event` with its clip fields as stored now: an end sent after its clip completed carries the URL."""
        if not self.clips or self.store is None or event.id is None or event.clip_state == "complete":
            return event
        try:
            row = self.store.get(event.id)
        except Exception as exc:        # the history unreadable: the message goes out without the clip
            log.debug("alerts: cannot read event %s for its clip: %s", event.id, exc)
            return event
        if row is None:
            return event
        return replace(event, clip=row.clip, clip_seconds=row.clip_seconds, clip_state=row.clip_state)

    def emit_clip(self, event: Event) -> None:
        """The clip of `event` is complete (a ClipListener call, on a recorder thread: only enqueues). An event
        still open gets its URL in its end message; an ended one gets a follow-up of kind "clip"."""
        if event.clip_state != "complete" or event.ended_at is None:
            return
        d = _Delivery("clip", event)
        for s in self._sinks:
            if "clip" in s.kinds:
                s.offer(d)

    def emit(self, kind: str, event: Event, frame: np.ndarray | None,
             predictions: Sequence[Prediction] = ()) -> None:
        """Queue `event` for every sink (kind "start" | "end"); never blocks, drops are counted per sink. At
        "start", `frame` and `predictions` make the event's picture (rendered later, once, on a sink thread)."""
        if kind not in ("start", "end"):
            raise ValueError(f"SinkSet.emit: kind must be 'start' or 'end' (got {kind!r})")
        key = (event.camera, event.rule, event.started_at)
        snap = self._snapshot
        picture = _NO_PICTURE
        if kind == "start":
            ticket = _SnapshotTicket(snap.path_for(event) if snap is not None and frame is not None else None)
            with self._lock:
                self._starts[key] = ticket
                while len(self._starts) > _REMEMBERED_STARTS:
                    self._starts.popitem(last=False)
            if frame is not None:
                picture = _Picture(event, frame, predictions, self.untrained, self.language)
        else:
            with self._lock:
                ticket = self._starts.pop(key, None) or _SnapshotTicket(None)
            if ticket.path is None and event.snapshot:
                ticket = _SnapshotTicket(event.snapshot)
                ticket.finish(True)
        d = _Delivery(kind, event, picture, ticket)
        for s in self._sinks:
            if kind not in s.kinds:
                continue
            if not s.offer(d) and s is snap:
                ticket.path = None       # never written: nobody should wait for it or be told about it
                ticket.finish(False)
