"""The live view: per watched camera, one encoder thread and one fan-out thread shared by every viewer.

The encoder draws the overlay on the newest frame and JPEG-encodes it once, whatever the number of viewers,
at up to `stream.fps`, and only while someone watches (picamera2 frame_server style: the newest JPEG in a slot
behind a Condition). The fan-out thread writes each new JPEG to every viewer's socket without blocking: a viewer
still busy with an earlier frame (its bytes not yet taken) skips the new one, which is counted, and gets the
newest frame as soon as it is ready again; it never holds up the encoder, the camera or the other viewers.
One writer for all viewers costs one wake-up per frame instead of one per viewer per frame.
"""
from __future__ import annotations

import logging
import selectors
import socket
import struct
import threading
import time
from typing import Any, Callable

import cv2
import numpy as np

from monitor.config.types import StreamConfig

try:                                  # Linux/BSD: bytes still queued in a socket's send buffer
    import fcntl
    import termios
    _TIOCOUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):
    _TIOCOUTQ = None

log = logging.getLogger(__name__)

WAIT_TICK = 0.5           # longest wait before a loop looks at its stop event again
FRAME_TICK = 0.2          # longest wait for a camera frame (bounds how long stop() may take)
STALL_TIMEOUT = 10.0      # seconds a viewer may take nothing before it is dropped
BOUNDARY = "monitor-frame"


def render(app: Any, camera_name: str, image: np.ndarray, width: int) -> np.ndarray:
    """The frame as viewers see it: resized to `width` (0 = native) with the overlay drawn."""
    from monitor.inference.overlay import draw_overlay

    h, w = image.shape[:2]
    if width and width != w:
        height = max(1, int(round(h * width / w)))
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if width < w else cv2.INTER_LINEAR)
    result = app.results.get(camera_name)
    predictions = list(result.predictions) if result is not None else []
    camera = app.cameras.get(camera_name)
    fps = camera.status().get("fps_in") if camera is not None else None
    return draw_overlay(image, camera_name, predictions, fps, app.alerts.active(camera_name),
                        bool(app.classifier.untrained))


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def mjpeg_part(jpeg: bytes) -> bytes:
    """One part of the multipart/x-mixed-replace response: boundary, headers, JPEG, CRLF."""
    return b"".join((b"--", BOUNDARY.encode(), b"\r\nContent-Type: image/jpeg\r\nContent-Length: ",
                     str(len(jpeg)).encode(), b"\r\n\r\n", jpeg, b"\r\n"))


def _unsent(sock: socket.socket) -> int:
    """Bytes the viewer has not taken yet (kernel send queue); 0 where the platform cannot tell."""
    if _TIOCOUTQ is None:
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), _TIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return 0


class Viewer:
    """One connected viewer, written to by the fan-out thread only. `done` is set when it was dropped."""

    __slots__ = ("sock", "address", "first", "number", "pending", "busy_since", "sent", "skipped", "done",
                 "reason")
    # Skips are counted as gaps between the numbers of consecutive frames sent (and, when the viewer is
    # dropped, from the last one sent to the newest), so every frame is counted once: sent or skipped.

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address
        self.first = 0                        # encoder number of the first part sent
        self.number = 0                       # encoder number of the part sent last (or being sent)
        self.pending: memoryview | None = None
        self.busy_since: float | None = None  # since when it has been too busy to take a new frame
        self.sent = 0
        self.skipped = 0
        self.done = threading.Event()
        self.reason = ""


class StreamEncoder:
    """Encodes one camera's frames at up to cfg.fps into a single shared slot, and fans them out."""

    def __init__(self, app: Any, camera: str, cfg: StreamConfig, metrics: Any = None,
                 stall_timeout: float = STALL_TIMEOUT) -> None:
        self.app = app
        self.camera = camera
        self.cfg = cfg
        self.encoded_frames = 0           # JPEGs produced by this encoder (one per frame, not per viewer)
        self.errors = 0
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._part = b""                  # the JPEG framed as a multipart part, built once for all viewers
        self._number = 0                  # 1, 2, 3 ... per encoded JPEG
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mjpeg-{camera}", daemon=True)
        skipped = metrics.stream_frames_skipped.labels(camera=camera) if metrics is not None else None
        self.fanout = FanOut(self, skipped, stall_timeout)

    def start(self) -> None:
        self._thread.start()
        self.fanout.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask both threads to end; join only when a timeout is given (a leaving viewer must not wait)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self.fanout.stop(timeout)
        if timeout is not None and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def is_alive(self) -> bool:
        return self._thread.is_alive() or self.fanout.is_alive()

    def latest(self) -> tuple[int, bytes] | None:
        """(number, JPEG) of the newest encoded frame, None before the first."""
        with self._cond:
            return (self._number, self._jpeg) if self._jpeg is not None else None

    def latest_part(self) -> tuple[int, bytes, int]:
        """(number, framed part, JPEG size) of the newest frame; number 0 before the first."""
        with self._cond:
            return self._number, self._part, len(self._jpeg or b"")

    def wait_newer(self, number: int, timeout: float) -> tuple[int, bytes] | None:
        """The newest (number, JPEG) with number > `number`, or None after `timeout` / once stopped."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._number <= number or self._jpeg is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(remaining)
            return self._number, self._jpeg

    def _run(self) -> None:
        period = 1.0 / self.cfg.fps if self.cfg.fps > 0 else 0.0
        seq = 0
        current = None
        next_at = time.monotonic()
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            # Looked up every round: a config reload replaces Camera objects (new seq numbers) or removes them.
            camera = self.app.cameras.get(self.camera)
            if camera is None:
                log.info("mjpeg %s: camera removed; ending its live view", self.camera)
                self.stop()
                break
            if camera is not current:
                current, seq = camera, 0
            frame = camera.wait_newer(seq, FRAME_TICK)
            if frame is None:
                continue
            seq = frame.seq
            started = time.monotonic()
            try:
                jpeg = encode_jpeg(render(self.app, self.camera, frame.image, self.cfg.width), self.cfg.quality)
            except Exception:                 # a bad frame must not end the live view for everyone
                self.errors += 1
                log.exception("mjpeg %s: cannot render frame %d", self.camera, frame.seq)
                next_at = started + max(period, WAIT_TICK)
                continue
            part = mjpeg_part(jpeg)
            with self._cond:
                self._number += 1
                self._jpeg = jpeg
                self._part = part
                self.encoded_frames += 1
                self._cond.notify_all()
            self.fanout.poke()
            # Paced from the encode start so the rate is cfg.fps, not cfg.fps minus the encode time.
            next_at = started + period


class FanOut:
    """The one thread that writes an encoder's parts to all its viewers, with non-blocking sends."""

    def __init__(self, encoder: StreamEncoder, skipped_metric: Any, stall_timeout: float) -> None:
        self.encoder = encoder
        self.stall_timeout = stall_timeout
        self._skipped = skipped_metric
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._joining: list[Viewer] = []
        self._leaving: list[Viewer] = []
        self._viewers: list[Viewer] = []
        self._offered = 0                 # encoder number last offered to the viewers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mjpeg-out-{encoder.camera}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self.poke()
        if timeout is not None and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> list[dict[str, Any]]:
        """Per viewer: address, frames sent and skipped, the newest frame number it was sent."""
        return [{"address": v.address, "sent": v.sent, "skipped": v.skipped, "first": v.first, "number": v.number,
                 "busy": v.pending is not None or v.busy_since is not None} for v in list(self._viewers)]

    def poke(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass                              # a wake-up byte is already pending, or we are closing

    def add(self, sock: socket.socket, address: str) -> Viewer:
        """Hand a connection (response headers already sent) to the fan-out; wait on `viewer.done`."""
        viewer = Viewer(sock, address)
        if self._stop.is_set():
            viewer.reason = "stream stopped"
            viewer.done.set()
            return viewer
        sock.setblocking(False)
        with self._lock:
            self._joining.append(viewer)
        self.poke()
        return viewer

    def remove(self, viewer: Viewer) -> None:
        """The viewer's handler is leaving (server stopping): stop writing to its socket."""
        with self._lock:
            self._leaving.append(viewer)
        self.poke()

    # -- the thread -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for key, mask in self._sel.select(WAIT_TICK):
                    if key.fileobj is self._wake_r:
                        self._drain_wake()
                        continue
                    viewer: Viewer = key.data
                    if mask & selectors.EVENT_READ:
                        self._readable(viewer)
                    if mask & selectors.EVENT_WRITE and not viewer.done.is_set():
                        self._write(viewer)
                self._admit()
                number, part, size = self.encoder.latest_part()
                if number > self._offered:
                    self._offered = number
                    for viewer in list(self._viewers):
                        self._offer(viewer, number, part, size)
                self._check_stalls()
        except Exception:
            log.exception("mjpeg %s: fan-out failed; dropping its viewers", self.encoder.camera)
        finally:
            with self._lock:
                joining, self._joining = self._joining, []
            for viewer in self._viewers + joining:
                self._drop(viewer, "stream stopped")
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _admit(self) -> None:
        with self._lock:
            joining, self._joining = self._joining, []
            leaving, self._leaving = self._leaving, []
        for viewer in leaving:
            self._drop(viewer, "left")
        number, part, size = self.encoder.latest_part()
        for viewer in joining:
            try:
                self._sel.register(viewer.sock, selectors.EVENT_READ, viewer)
            except (OSError, ValueError, KeyError):
                viewer.reason = "socket closed"
                viewer.done.set()
                continue
            self._viewers.append(viewer)
            if number:                        # a new viewer gets the current frame at once
                self._offer(viewer, number, part, size)

    def _offer(self, viewer: Viewer, number: int, part: bytes, size: int) -> None:
        if viewer.done.is_set() or number <= viewer.number:
            return
        # Busy with an earlier frame: still sending it, or its bytes still sit in the kernel queue (slow link).
        # It is offered the newest frame again once its write completes, or at the next frame.
        if viewer.pending is not None or _unsent(viewer.sock) > size // 2:
            if viewer.busy_since is None:
                viewer.busy_since = time.monotonic()
            return
        viewer.busy_since = None
        if viewer.number:
            self._skip(viewer, number - viewer.number - 1)     # published while it was busy: never sent
        else:
            viewer.first = number
        viewer.number = number
        viewer.pending = memoryview(part)
        self._write(viewer)

    def _write(self, viewer: Viewer) -> None:
        data = viewer.pending
        if data is None:
            self._watch(viewer, write=False)
            return
        try:
            sent = viewer.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:                  # EPIPE, ECONNRESET: the viewer is gone
            self._drop(viewer, f"send failed: {e.strerror or e}")
            return
        if sent < len(data):
            viewer.pending = data[sent:]
            self._watch(viewer, write=True)
            return
        viewer.pending = None
        viewer.sent += 1
        self._watch(viewer, write=False)
        # Done with its frame: if newer ones came meanwhile, it gets the newest now rather than at the next one.
        number, part, size = self.encoder.latest_part()
        if number > viewer.number:
            self._offer(viewer, number, part, size)

    def _watch(self, viewer: Viewer, write: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
        try:
            if self._sel.get_key(viewer.sock).events != events:
                self._sel.modify(viewer.sock, events, viewer)
        except (KeyError, ValueError, OSError):
            pass

    def _readable(self, viewer: Viewer) -> None:
        # A viewer sends nothing after its request: readable means it hung up (or sent junk, ignored).
        try:
            data = viewer.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._drop(viewer, f"connection error: {e.strerror or e}")
            return
        if not data:
            self._drop(viewer, "hung up")

    def _skip(self, viewer: Viewer, count: int) -> None:
        viewer.skipped += count
        if self._skipped is not None:
            self._skipped.inc(count)

    def _check_stalls(self) -> None:
        now = time.monotonic()
        for viewer in list(self._viewers):
            if viewer.busy_since is not None and now - viewer.busy_since > self.stall_timeout:
                log.debug("mjpeg %s: viewer %s took nothing for %.0f s; dropped", self.encoder.camera,
                          viewer.address, now - viewer.busy_since)
                self._drop(viewer, "stalled")

    def _drop(self, viewer: Viewer, reason: str) -> None:
        if viewer in self._viewers:
            self._viewers.remove(viewer)
            newest = self.encoder.latest_part()[0]
            if viewer.number and newest > viewer.number:
                self._skip(viewer, newest - viewer.number)      # published, never delivered
        try:
            self._sel.unregister(viewer.sock)
        except (KeyError, ValueError, OSError):
            pass
        viewer.pending = None
        if not viewer.done.is_set():
            viewer.reason = reason
            viewer.done.set()


class ViewerLimit(Exception):
    """max_viewers reached."""


class StreamHub:
    """Owns the encoders: started by the first viewer of a camera, stopped when its last viewer leaves."""

    def __init__(self, app: Any, cfg: StreamConfig, metrics: Any, stall_timeout: float = STALL_TIMEOUT,
                 encoder_factory: Callable[..., StreamEncoder] = StreamEncoder) -> None:
        self.app = app
        self.cfg = cfg
        self.metrics = metrics
        self.stall_timeout = stall_timeout
        self._factory = encoder_factory
        self._lock = threading.Lock()
        self._encoders: dict[str, StreamEncoder] = {}
        self._viewers: dict[str, int] = {}
        self._total = 0
        self._closed = False

    @property
    def viewers(self) -> int:
        with self._lock:
            return self._total

    def viewers_of(self, camera: str) -> int:
        with self._lock:
            return self._viewers.get(camera, 0)

    def encoder(self, camera: str) -> StreamEncoder | None:
        """The running encoder of `camera`, None while nobody watches it."""
        with self._lock:
            return self._encoders.get(camera)

    def join(self, camera: str) -> StreamEncoder:
        """Register a viewer; raise ViewerLimit past max_viewers (over all cameras)."""
        with self._lock:
            if self._closed or self._total >= self.cfg.max_viewers:
                raise ViewerLimit(f"{self._total} viewers already (server.stream.max_viewers: {self.cfg.max_viewers})")
            enc = self._encoders.get(camera)
            if enc is None or enc.stopped:
                enc = self._encoders[camera] = self._factory(self.app, camera, self.cfg, self.metrics,
                                                             self.stall_timeout)
                enc.start()
            self._viewers[camera] = self._viewers.get(camera, 0) + 1
            self._total += 1
            self.metrics.stream_viewers.labels(camera=camera).set(self._viewers[camera])
            return enc

    def leave(self, camera: str) -> None:
        with self._lock:
            count = self._viewers.get(camera, 0) - 1
            if count < 0:
                return
            self._total -= 1
            self._viewers[camera] = count
            if count == 0 and camera not in self.app.cameras:
                # The last viewer of a camera removed by a reload: its series goes, it does not come back as 0.
                self._viewers.pop(camera, None)
                try:
                    self.metrics.stream_viewers.remove(camera)
                except KeyError:
                    pass
            else:
                self.metrics.stream_viewers.labels(camera=camera).set(count)
            if count == 0:
                enc = self._encoders.pop(camera, None)
                if enc is not None:
                    enc.stop()

    def close(self, timeout: float = 5.0) -> None:
        """Stop every encoder (server shutdown); their viewers are dropped and end their responses."""
        with self._lock:
            self._closed = True
            encoders = list(self._encoders.values())
            self._encoders.clear()
        deadline = time.monotonic() + timeout
        for enc in encoders:
            enc.stop(max(0.0, deadline - time.monotonic()))
