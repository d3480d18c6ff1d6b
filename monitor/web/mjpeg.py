"""The live view: per watched camera, one encoder thread shared by every viewer.

The encoder draws the overlay on the newest frame and JPEG-encodes it once, whatever the number of viewers,
at up to `stream.fps`, and only while someone watches (picamera2 frame_server style: the newest JPEG in a slot
behind a Condition), on its own thread so the event loop never encodes. Each new JPEG wakes the viewers' coroutines
on the event loop once (one thread-safe call per frame). A viewer still busy with an earlier frame (its bytes
not yet taken by the client) skips the new one, which is counted, and gets the newest frame as soon as it is
ready again; it never holds up the encoder, the camera or the other viewers; one that takes nothing for
`stall_timeout` is dropped.
"""
from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time
from typing import Any, Awaitable, Callable

import cv2
import numpy as np

from monitor.config.types import StreamConfig
from monitor.core.metrics import Metrics
from monitor.render.jpeg import encode_jpeg
from monitor.render.overlay import draw_overlay
from monitor.web.services import WebServices

try:                                  # Linux/BSD: bytes still queued in a socket's send buffer
    import fcntl
    import termios
    _TIOCOUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):
    _TIOCOUTQ = None

log = logging.getLogger(__name__)

WAIT_TICK = 0.5           # longest wait before a loop looks at its stop event again
FRAME_TICK = 0.2          # longest wait for a camera frame (bounds how long stop() may take)
BUSY_TICK = 0.05          # how often a busy viewer's socket is looked at again
STALL_TIMEOUT = 10.0      # seconds a viewer may take nothing before it is dropped
BOUNDARY = "monitor-frame"


def render(services: WebServices, camera_name: str, image: np.ndarray, width: int) -> np.ndarray:
    """The frame as viewers see it: resized to `width` (0 = native) with the overlay drawn."""
    h, w = image.shape[:2]
    scale = 1.0
    if width and width != w:
        height = max(1, int(round(h * width / w)))
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if width < w else cv2.INTER_LINEAR)
        scale = width / w
    result = services.results.get(camera_name)
    predictions = list(result.predictions) if result is not None else []
    camera = services.cameras.get(camera_name)
    fps = camera.status().get("fps_in") if camera is not None else None
    heatmap = None
    if (result is not None and result.heatmap is not None and result.box is not None
            and camera_name in services.heatmaps):
        heatmap = (result.heatmap, [int(round(v * scale)) for v in result.box])
    labels = services.config.labels
    return draw_overlay(image, camera_name, predictions, fps, services.alerts.active(camera_name),
                        bool(services.classifier.untrained), custom=list(result.custom.values()) if result else (),
                        heatmap=heatmap, language=labels.language, font=labels.font)


def mjpeg_part(jpeg: bytes) -> bytes:
    """One part of the multipart/x-mixed-replace response: boundary, headers, JPEG, CRLF."""
    return b"".join((b"--", BOUNDARY.encode(), b"\r\nContent-Type: image/jpeg\r\nContent-Length: ",
                     str(len(jpeg)).encode(), b"\r\n\r\n", jpeg, b"\r\n"))


class Viewer:
    """One connected viewer. Skips are counted as gaps between the numbers of consecutive frames sent (and,
    when it leaves, from the last one sent to the newest), so every frame is counted once: sent or skipped."""

    __slots__ = ("address", "first", "number", "busy_since", "sent", "skipped", "reason", "wake")

    def __init__(self, address: str) -> None:
        self.address = address
        self.first = 0                        # encoder number of the first part sent
        self.number = 0                       # encoder number of the part sent last
        self.busy_since: float | None = None  # since when it has been too busy to take a new frame
        self.sent = 0
        self.skipped = 0
        self.reason = ""
        self.wake = asyncio.Event()           # set by a new frame, the client hanging up, or the stream stopping


def _unsent(transport: Any) -> int:
    """Bytes the viewer has not taken yet: the transport's buffer plus the kernel's send queue."""
    queued = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if _TIOCOUTQ is None or sock is None:
        return queued
    try:
        return queued + struct.unpack("i", fcntl.ioctl(sock.fileno(), _TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return queued


class StreamEncoder:
    """Encodes one camera's frames at up to cfg.fps into a single shared slot; wakes its viewers per frame."""

    def __init__(self, services: WebServices, camera: str, cfg: StreamConfig, metrics: Metrics | None = None,
                 stall_timeout: float = STALL_TIMEOUT, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.services = services
        self.camera = camera
        self.cfg = cfg
        self.stall_timeout = stall_timeout
        self.encoded_frames = 0           # JPEGs produced by this encoder (one per frame, not per viewer)
        self.errors = 0
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._part = b""                  # the JPEG framed as a multipart part, built once for all viewers
        self._number = 0                  # 1, 2, 3 ... per encoded JPEG
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mjpeg-{camera}", daemon=True)
        self._skipped = metrics.stream_frames_skipped.labels(camera=camera) if metrics is not None else None
        self._loop = loop
        self.viewers: set[Viewer] = set()   # touched on the event loop only

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to end and wake the viewers; join only when a timeout is given (a leaving viewer must
        not wait)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._notify()
        if timeout is not None and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

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

    def stats(self) -> list[dict[str, Any]]:
        """Per viewer: address, frames sent and skipped, the first and newest frame number it was sent."""
        return [{"address": v.address, "sent": v.sent, "skipped": v.skipped, "first": v.first, "number": v.number,
                 "busy": v.busy_since is not None} for v in list(self.viewers)]

    def _notify(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._wake_viewers)
        except RuntimeError:
            pass                              # the loop is closed: the server is gone

    def _wake_viewers(self) -> None:
        for viewer in self.viewers:
            viewer.wake.set()

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
            camera = self.services.cameras.get(self.camera)
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
                jpeg = encode_jpeg(render(self.services, self.camera, frame.image, self.cfg.width), self.cfg.quality)
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
            self._notify()
            # Paced from the encode start so the rate is cfg.fps, not cfg.fps minus the encode time.
            next_at = started + period

    # -- one viewer, on the event loop -----------------------------------------------------------------------

    async def serve(self, address: str, transport: Any, send: Callable[[dict], Awaitable[None]],
                    receive: Callable[[], Awaitable[dict]], stopping: Callable[[], bool]) -> Viewer:
        """Send parts to one viewer (the response head is already sent) until it leaves, stalls, or the stream
        or server stops. Returns the viewer with its figures and the reason it ended."""
        viewer = Viewer(address)
        self.viewers.add(viewer)
        gone = asyncio.Event()

        async def watch_client() -> None:
            # A viewer sends nothing after its request: the next message is the hang-up.
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            viewer.wake.set()

        watcher = asyncio.ensure_future(watch_client())
        try:
            while True:
                if gone.is_set():
                    viewer.reason = "hung up"
                    break
                if self._stop.is_set() or stopping():
                    viewer.reason = "stream stopped"
                    break
                viewer.wake.clear()
                number, part, size = self.latest_part()
                if number > viewer.number:
                    if _unsent(transport) > size // 2:
                        # Busy with an earlier frame (its bytes still queued): offered the newest one once free.
                        now = time.monotonic()
                        if viewer.busy_since is None:
                            viewer.busy_since = now
                        elif now - viewer.busy_since > self.stall_timeout:
                            viewer.reason = "stalled"
                            log.debug("mjpeg %s: viewer %s took nothing for %.0f s; dropped", self.camera,
                                      address, now - viewer.busy_since)
                            transport.abort()
                            try:                  # the server notices the abort: the response ends as gone
                                await asyncio.wait_for(gone.wait(), 2.0)
                            except asyncio.TimeoutError:
                                pass
                            break
                        await self._sleep(viewer, BUSY_TICK)
                        continue
                    viewer.busy_since = None
                    if viewer.number:
                        self._skip(viewer, number - viewer.number - 1)   # published while it was busy
                    else:
                        viewer.first = number
                    viewer.number = number
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                    viewer.sent += 1
                    continue
                await self._sleep(viewer, WAIT_TICK)
        finally:
            watcher.cancel()
            self.viewers.discard(viewer)
            newest = self.latest_part()[0]
            if viewer.number and newest > viewer.number:
                self._skip(viewer, newest - viewer.number)              # published, never delivered
        return viewer

    @staticmethod
    async def _sleep(viewer: Viewer, seconds: float) -> None:
        # asyncio.timeout, not wait_for: no extra task per viewer per frame
        try:
            async with asyncio.timeout(seconds):
                await viewer.wake.wait()
        except TimeoutError:
            pass

    def _skip(self, viewer: Viewer, count: int) -> None:
        if count <= 0:
            return
        viewer.skipped += count
        if self._skipped is not None:
            self._skipped.inc(count)


class ViewerLimit(Exception):
    """max_viewers reached."""


class StreamHub:
    """Owns the encoders: started by the first viewer of a camera, stopped when its last viewer leaves."""

    def __init__(self, services: WebServices, cfg: StreamConfig, metrics: Metrics, stall_timeout: float = STALL_TIMEOUT,
                 encoder_factory: Callable[..., StreamEncoder] = StreamEncoder) -> None:
        self.services = services
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

    def join(self, camera: str, loop: asyncio.AbstractEventLoop | None = None) -> StreamEncoder:
        """Register a viewer; raise ViewerLimit past max_viewers (over all cameras). `loop` is the event loop
        whose viewers the encoder wakes."""
        with self._lock:
            if self._closed or self._total >= self.cfg.max_viewers:
                raise ViewerLimit(f"{self._total} viewers already (server.stream.max_viewers: {self.cfg.max_viewers})")
            enc = self._encoders.get(camera)
            if enc is None or enc.stopped:
                enc = self._encoders[camera] = self._factory(self.services, camera, self.cfg, self.metrics,
                                                             self.stall_timeout, loop)
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
            if count == 0 and camera not in self.services.cameras:
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
